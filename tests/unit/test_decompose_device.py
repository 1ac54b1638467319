"""SPD on the device it is given (issue 23): everything a decomposition touches follows ``device``, and the cpu given
explicitly is the default bit for bit. Only the cpu is here; the ``meta`` device (shapes, no data) stands in for an
accelerator to catch a tensor made on the cpu by a hard-coded default."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.decompose import SPD, SPDConfig
from mechscope.decompose.toys import TargetConfig, tms_target
from mechscope.errors import UsageError

SMALL = dict(toy_steps=50, steps=6, warmup_steps=5, batch_size=64, n_eval=256, restarts=1, checkpoint_every=0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


def test_device_cpu_given_is_the_default_bit_for_bit(cache):
    default = ms.decompose("toy:tms", progress=False, **SMALL)
    cpu = ms.decompose("toy:tms", progress=False, device="cpu", **SMALL)
    a, b = default.pop("spd").state_dict(), cpu.pop("spd").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cpu == default and cpu["true_mechanisms"] > 0


@pytest.mark.parametrize("device", [torch.device("cpu"), torch.device("meta")])
def test_target_batches_and_subcomponents_are_on_the_device_given(cache, device):
    kt = tms_target(TargetConfig(toy_steps=50, n_eval=64, batch_size=32)).to(device)
    spd = SPD(kt.model, SPDConfig(C=4, warmup_steps=0))
    tensors = [
        *kt.model.parameters(),
        *kt.model.buffers(),
        *spd.parameters(),
        *spd.buffers(),
        kt.batch(0),
        kt.eval_inputs,
        kt.probes[0],
        *kt.truth.values(),
    ]
    assert {t.device for t in tensors} == {device} and spd.device == device
    assert all(p.dtype == torch.float32 for p in spd.parameters())
    parts = spd.losses(kt.batch(3), torch.Generator().manual_seed(0))  # masks drawn on the cpu, moved to the device
    assert {v.device for v in parts.values()} == {device}


def test_api_refuses_a_dtype_by_name_with_the_reason_and_an_absent_device():
    with pytest.raises(UsageError, match=r"^`dtype` bf16: decompose runs in float32 only \(SPD compares float32 "):
        ms.decompose("toy:tms", dtype="bf16")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="`device` cuda"):
            ms.decompose("toy:tms", device="cuda")

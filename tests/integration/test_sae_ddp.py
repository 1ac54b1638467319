"""Data parallelism: two CPU processes under torchrun (gloo) end with the weights of one process
trained on the same global batches, and a rank killed mid-run resumes to the weights of a run never killed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from mechscope.checkpoint import read
from mechscope.sae import (
    BatchTopKConfig,
    Member,
    OptimConfig,
    TopKConfig,
    TrainConfig,
    Trainer,
)

WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from test_sae_ddp import MEMBERS, CFG, batches
    from mechscope.sae import Trainer
    trainer = Trainer(MEMBERS, CFG, sys.argv[1])
    assert trainer.world.size == 2, trainer.world
    trainer.fit(batches())
    """
)

RESUMING_WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from test_sae_ddp import MEMBERS, CHECKPOINTED, batches
    from mechscope.sae import Trainer
    trainer = Trainer(MEMBERS, CHECKPOINTED, sys.argv[1])
    start = trainer.resume()
    data = batches()
    for _ in range(start):  # the global batches already trained on
        next(data)
    trainer.fit(data, start_step=start)
    """
)

D, N, B = 8, 48, 32
MEMBERS = [
    Member(TopKConfig(d_in=D, latents=N, k=3, auxk_coef=0.5), OptimConfig(lr=5e-3, warmup_steps=2)),
    Member(BatchTopKConfig(d_in=D, latents=N, k=3, threshold_lr=0.2), OptimConfig(lr=5e-3, warmup_steps=2)),
]
CFG = TrainConfig(
    steps=6, batch_size=B, checkpoint_every=0, dead_window=2 * B, log_every=3, progress=False, device="cpu"
)
CHECKPOINTED = dataclasses.replace(CFG, steps=8, checkpoint_every=2)


def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(B, D, generator=g) * 2 + 0.5


def torchrun(worker: str, tmp_path, out, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(worker)
    # Imported here: the worker imports this file in a process where the package `tests` is not on the path.
    from tests.harness import torchrun_script

    return torchrun_script(script, [str(out), os.path.dirname(__file__)], 2, timeout=180, **env)


def test_two_processes_equal_one(tmp_path):
    run = torchrun(WORKER, tmp_path, tmp_path / "ddp")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ddp = load_file(str(tmp_path / "ddp" / "checkpoint.safetensors"))

    single = Trainer(MEMBERS, CFG, tmp_path / "one")
    assert single.world.size == 1
    single.fit(batches())
    one = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))

    assert ddp.keys() == one.keys()
    for key in one:
        if key.startswith(("0.sae.", "1.sae.", "0.dead", "1.dead")):
            assert torch.allclose(ddp[key].float(), one[key].float(), atol=1e-5, rtol=1e-4), key
    # The weights moved, and BatchTopK learned its threshold from the global batch.
    assert float(one["1.sae.threshold"]) > 0
    init = Trainer(MEMBERS, CFG).saes[0].W_enc.detach()
    assert not torch.allclose(one["0.sae.W_enc"], init, atol=1e-3)


@pytest.mark.slow  # three torchrun jobs
def test_a_killed_rank_resumes_to_the_weights_of_a_run_never_killed(tmp_path):
    whole = torchrun(RESUMING_WORKER, tmp_path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # Rank 1 dies (SIGKILL) after step 5; torchrun ends rank 0, which cannot pass step 6 without it.
    killed = torchrun(RESUMING_WORKER, tmp_path, tmp_path / "cut", MECHSCOPE_FAULT="train.step@5 rank=1")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert read(tmp_path / "cut" / "checkpoint.safetensors")[1]["step"] == 4
    again = torchrun(RESUMING_WORKER, tmp_path, tmp_path / "cut")
    assert again.returncode == 0, again.stderr[-3000:]
    want, got = (load_file(str(tmp_path / d / "checkpoint.safetensors")) for d in ("whole", "cut"))
    assert read(tmp_path / "cut" / "checkpoint.safetensors")[1]["step"] == 8
    assert want.keys() == got.keys()
    for key in want:
        if key != "rng.torch":  # the interpreter's global RNG state, which no step draws from (docs/kill-resume.md)
            assert torch.equal(want[key], got[key]), key

"""The one cache of trained models (mechscope.cache) and its users (toy, anomaly, decompose): a damaged file
(a flipped bit, an edited weight, a NaN, a truncated or foreign file) is refused naming the file and the fix,
a cache location we cannot use is refused naming MECHSCOPE_CACHE, and a killed writer's temporaries go."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mechscope.cache import (
    WAITS_LOG,
    CacheError,
    cache_dir,
    locked,
    read_tensors,
    save_tensors,
    train_once,
)
from mechscope.cli import main

FIX = "run the fix"


def data_start(path: Path) -> int:
    """Byte offset of the tensors in a safetensors file (after the 8-byte length and the JSON header)."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def poke(path: Path, offset: int, edit) -> None:
    """Rewrite the byte at ``offset`` (from the start of the tensors) with ``edit(byte)``."""
    data = bytearray(path.read_bytes())
    data[data_start(path) + offset] = edit(data[data_start(path) + offset])
    path.write_bytes(bytes(data))


def write_float(path: Path, index: int, value: float) -> None:
    """Overwrite float32 number ``index`` of the tensors' bytes (all tensors float32) with ``value``."""
    data = bytearray(path.read_bytes())
    at = data_start(path) + 4 * index
    data[at : at + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def _cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


DAMAGE = {
    "low mantissa bit": lambda p: poke(p, 0, lambda b: b ^ 0x01),
    "exponent bit": lambda p: poke(p, 3, lambda b: b ^ 0x40),
    "weight edited to -4.9e37": lambda p: write_float(p, 5, -4.9e37),
    "NaN weight": lambda p: write_float(p, 2, float("nan")),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-7]),
    "header length": lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + p.read_bytes()[8:]),
    "no digest (foreign)": lambda p: save_file(load_file(str(p)), str(p)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_read_tensors_refuses_a_damaged_file_naming_it_and_the_fix(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    tensors = {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(4)}
    save_tensors(path, tensors, {"recipe": "r1"})
    got, meta = read_tensors(path, FIX, {"recipe": "r1"})
    assert all(torch.equal(got[k], tensors[k]) for k in tensors) and meta["recipe"] == "r1"
    DAMAGE[damage](path)
    with pytest.raises(CacheError) as e:
        read_tensors(path, FIX, {"recipe": "r1"})
    msg = str(e.value)
    assert str(path) in msg and msg.endswith(FIX) and "\n" not in msg


def test_read_tensors_refuses_another_recipe_and_a_missing_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"w": torch.ones(2)}, {"recipe": "r1"})
    with pytest.raises(CacheError, match=r"written for another recipe \('r1', expected 'r2'\); run the fix"):
        read_tensors(path, FIX, {"recipe": "r2"})
    with pytest.raises(CacheError, match="missing; run the fix"):
        read_tensors(tmp_path / "none.safetensors", FIX)


def test_a_cache_location_that_is_a_file_or_not_writable_is_refused_naming_mechscope_cache(
    tmp_path, monkeypatch, capsys
):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setenv("MECHSCOPE_CACHE", str(a_file))
    with pytest.raises(CacheError, match=rf"MECHSCOPE_CACHE={a_file} is a file, not a folder; set MECHSCOPE_CACHE"):
        cache_dir()
    # the zoo used to say "not trained" with exit 0 here
    for argv in (["zoo", "list"], ["zoo", "list", "--json"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "error: MECHSCOPE_CACHE=" in err and "is a file" in err
    monkeypatch.setenv("MECHSCOPE_CACHE", str(a_file / "below"))
    with pytest.raises(CacheError, match="MECHSCOPE_CACHE=.* is not writable .*set MECHSCOPE_CACHE to a folder"):
        cache_dir(write=True)
    with pytest.raises(CacheError, match="MECHSCOPE_CACHE=.* is not writable"):
        train_once(cache_dir() / "toy" / "x.safetensors", lambda: {"w": torch.ones(1)})


def test_the_lock_removes_the_temporaries_a_killed_writer_of_its_key_left(tmp_path, monkeypatch):
    root = _cache(tmp_path, monkeypatch)
    area = root / "zoo"
    (area / ".parens.k2j4x" / "checkpoints").mkdir(parents=True)  # tempfile.mkdtemp of a killed training
    (area / ".parens.old").mkdir()
    (area / "parens.safetensors.abc.tmp").write_bytes(b"half")
    others = [area / ".modadd.x1y2z3", area / "modadd.safetensors.q.tmp"]
    others[0].mkdir()
    others[1].write_bytes(b"")
    with locked(area / "parens"):
        assert not (area / ".parens.k2j4x").exists() and not (area / ".parens.old").exists()
    with locked(area / "parens.safetensors"):
        assert not (area / "parens.safetensors.abc.tmp").exists()
    assert all(p.exists() for p in others)  # another key's temporaries are not ours to remove


def test_a_wait_for_a_held_lock_is_logged_with_its_entry_and_an_uncontended_lock_is_not(tmp_path, monkeypatch):
    import threading
    import time

    root = _cache(tmp_path, monkeypatch)
    log = tmp_path / "waits"
    monkeypatch.setenv(WAITS_LOG, str(log))
    with locked(root / "free"):
        pass
    assert not log.exists()
    held, release = threading.Event(), threading.Event()

    def writer() -> None:  # another open file description: flock blocks between them as between processes
        with locked(root / "busy"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()
    start = time.monotonic()
    with locked(root / "busy"):
        waited = time.monotonic() - start
    thread.join()
    seconds, entry, pid = log.read_text().splitlines()[0].split("\t")
    assert len(log.read_text().splitlines()) == 1 and entry == str(root / "busy") and int(pid) == os.getpid()
    assert 0.4 <= float(seconds) <= waited + 0.05, (seconds, waited)


def test_train_once_trains_once_then_reads_and_refuses_a_damaged_file(tmp_path, monkeypatch):
    root = _cache(tmp_path, monkeypatch)
    path = root / "toy" / "t.safetensors"
    calls = []

    def train():
        calls.append(1)
        return {"w": torch.arange(6.0)}

    a, b = train_once(path, train, {"k": "1"}), train_once(path, train, {"k": "1"})
    assert len(calls) == 1 and torch.equal(a["w"], b["w"])
    write_float(path, 1, -4.9e37)
    with pytest.raises(CacheError, match=r"t\.safetensors: tensor digest mismatch .*delete it to retrain"):
        train_once(path, train, {"k": "1"})
    assert len(calls) == 1


def test_toy_cache_keeps_the_trained_numbers_and_refuses_a_flipped_weight(tmp_path, monkeypatch):
    from mechscope.toy.features import FeatureConfig
    from mechscope.toy.models import ToyModelConfig, train_toy

    root = _cache(tmp_path, monkeypatch)
    feats, cfg = FeatureConfig(n_features=5, p=0.1), ToyModelConfig(dims=2, instances=2, steps=30, batch_size=64)
    plain = train_toy(feats, cfg, cache=False)
    first, again = train_toy(feats, cfg), train_toy(feats, cfg)
    for t in (first, again):  # storage changes nothing: the cached model is the one training makes
        assert torch.equal(t.W(0), plain.W(0)) and torch.equal(t.losses, plain.losses)
    (path,) = (root / "toy").glob("tms-*.safetensors")
    poke(path, 3, lambda b: b ^ 0x40)  # an exponent bit of one number
    with pytest.raises(CacheError, match=rf"{path.name}: tensor digest mismatch.*delete it to retrain"):
        train_toy(feats, cfg)


def test_anomaly_task_cache_refuses_a_nan_weight_before_any_detector_sees_it(tmp_path, monkeypatch):
    from mechscope.anomaly.benchmarks import (
        BenchmarkCacheError,
        cache_path,
        cached_model,
    )

    _cache(tmp_path, monkeypatch)

    def train():
        torch.manual_seed(3)
        return nn.Linear(3, 2)

    first = cached_model("tiny", lambda: nn.Linear(3, 2), train)
    assert torch.equal(first.weight, train().weight)
    write_float(cache_path("tiny"), 1, float("nan"))
    with pytest.raises(
        BenchmarkCacheError, match=r"tiny-v\d+\.safetensors: tensor digest mismatch.*delete it to retrain"
    ):
        cached_model("tiny", lambda: nn.Linear(3, 2), train)


def test_resid_mlp_cache_refuses_a_flipped_weight(tmp_path, monkeypatch):
    from mechscope.decompose.resid_mlp import train_resid_mlp
    from mechscope.decompose.toys import TargetConfig

    root = _cache(tmp_path, monkeypatch)
    cfg = TargetConfig(features=6, dims=3, d_embed=30, p=0.2, toy_steps=3)
    model = train_resid_mlp(cfg)
    assert torch.equal(train_resid_mlp(cfg).mlp_in.weight, model.mlp_in.weight)
    (path,) = (root / "decompose").glob("resid-mlp-*.safetensors")
    poke(path, 40, lambda b: b ^ 0x01)  # a low mantissa bit
    with pytest.raises(CacheError, match="tensor digest mismatch.*delete it to retrain"):
        train_resid_mlp(cfg)


@pytest.mark.slow  # saves and hashes a model folder
def test_a_damaged_weights_file_of_a_model_folder_is_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechscope.models import load_model
    from mechscope.models.loading import ModelNotFoundError

    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # used to end in safetensors' own error, naming no file
    with pytest.raises(ModelNotFoundError, match=rf"{tmp_path} does not hold .*incomplete metadata"):
        load_model(str(tmp_path))


@pytest.mark.slow  # about 10 s: a real (tiny) decomposition first
def test_decompose_on_a_flipped_toy_cache_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """Used to return "alive": 0 and null losses with exit 0 when the kept instance was flipped."""
    root = _cache(tmp_path, monkeypatch)
    argv = [
        "decompose",
        "--model",
        "toy:tms",
        "--toy-steps",
        "20",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--batch-size",
        "32",
        "--n-eval",
        "64",
        "--out",
        str(tmp_path / "run"),
        "--json",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    (path,) = (root / "toy").glob("tms-*.safetensors")
    poke(path, 3, lambda b: b ^ 0x40)
    assert main([*argv[:-2], str(tmp_path / "run2"), "--json"]) == 1
    out, err = capsys.readouterr()
    assert (
        out == ""
        and err.count("\n") == 1
        and f"{path}: tensor digest mismatch" in err
        and "delete it to retrain" in err
    )

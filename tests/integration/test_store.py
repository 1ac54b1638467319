"""Activation store: harvest equals direct capture, resume after kill -9 is byte-identical,
corruption is detected, and the loader is deterministic and covers every row."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from mechscope.data.text import TextCorpusConfig, build_contexts
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sites import capture
from mechscope.store import ActivationStore, StoreCorruptError
from tests.harness import SMALL_TEXT

CORPUS = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
CFG = HarvestConfig(
    sites=("resid_post.1", "model.layers.0.mlp"), tokens=3000, val_tokens=300, batch_contexts=4, shard_contexts=8
)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_harvest_matches_direct_capture(tiny_lm, tmp_path):
    store = harvest(CFG, CORPUS, tmp_path / "s", loaded=tiny_lm, progress=False)
    assert store.sites == ["model.layers.1", "model.layers.0.mlp"]
    assert store.n_rows() == len(store.tokens()) * 31 and store.n_rows() >= 3000 and store.n_rows("val") >= 300
    ctx = build_contexts(tiny_lm.tokenizer, CORPUS)
    ids = ctx.train[:3]
    assert torch.equal(store.tokens()[:3], ids)
    with torch.no_grad(), capture(tiny_lm.model, "resid_post.1") as acts:
        tiny_lm.model(ids)
    want = acts["model.layers.1"][:, 1:].reshape(-1, 64)
    assert torch.allclose(store.rows("resid_post.1", 0, 93), want, atol=1e-5)
    c, p = store.row_to_position(40)
    assert (c, p) == (1, 10)
    val_ids = store.tokens("val")
    train_set = {tuple(r) for r in store.tokens().tolist()}
    assert not any(tuple(r) in train_set for r in val_ids.tolist())


def test_resume_after_exception_is_identical(tiny_lm, tmp_path):
    ref = harvest(CFG, CORPUS, tmp_path / "ref", loaded=tiny_lm, progress=False)

    def crash(i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest(CFG, CORPUS, tmp_path / "cut", loaded=tiny_lm, progress=False, after_shard=crash)
    with pytest.raises(StoreCorruptError, match="incomplete"):
        ActivationStore(tmp_path / "cut")
    harvest(CFG, CORPUS, tmp_path / "cut", loaded=tiny_lm, progress=False)
    assert _digests(tmp_path / "cut") == _digests(ref.path)


def test_resume_after_kill9_is_byte_identical(tiny_lm_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mechscope.cli",
        "harvest",
        "--model",
        str(tiny_lm_dir),
        "--site",
        "resid_post.1",
        "--tokens",
        "6000",
        "--val-tokens",
        "300",
        "--batch-contexts",
        "4",
        "--shard-contexts",
        "8",
        "--source",
        SMALL_TEXT,
        "--context-length",
        "32",
        "--val-fraction",
        "0.1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        cmd + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    manifest = tmp_path / "cut" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "harvest finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads(manifest.read_text())["complete"]
    subprocess.run(cmd + ["--out", str(tmp_path / "cut")], check=True, env=env, capture_output=True)
    assert _digests(tmp_path / "cut") == _digests(tmp_path / "ref")


@dataclass(frozen=True)
class Relay(World):
    """A rank of a two-rank job run in this process, one rank after the other: barriers pass at once, rank 0's
    broadcast is kept in ``sent``, and another rank receives ``received`` (rank 0's, from an earlier run)."""

    sent: list = field(default_factory=list)
    received: object = None

    def barrier(self, what: str = "barrier") -> None:
        pass

    def broadcast(self, obj, what: str = "broadcast"):
        self.sent.append(obj)
        return obj if self.is_main else self.received


def test_two_ranks_one_after_the_other_then_one_process_make_the_same_store(tiny_lm, tmp_path):
    # The torchrun protocol without processes: rank 0 harvests its share (every other shard of the plan); its
    # partner's record is not there yet, so it refuses to commit a complete manifest and names what is missing.
    ref = harvest(CFG, CORPUS, tmp_path / "ref", loaded=tiny_lm, progress=False)
    plan = [s["file"] for s in ref.manifest["shards"]]  # 13 training shards, then 2 held-out ones
    out = tmp_path / "ranks"
    rank0 = Relay(rank=0, size=2)
    with pytest.raises(
        StoreCorruptError, match=r"rank 0 of 2 finds no record of train-00001.safetensors, train-00003.safetensors"
    ):
        harvest(CFG, CORPUS, out, loaded=tiny_lm, progress=False, world=rank0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(plan) == 15 and not manifest["complete"] and [s["file"] for s in manifest["shards"]] == plan[0::2]
    # Rank 1 harvests the other shards into its own record; the manifest is rank 0's to commit.
    with pytest.raises(StoreCorruptError, match="incomplete"):
        harvest(CFG, CORPUS, out, loaded=tiny_lm, progress=False, world=Relay(rank=1, size=2, received=rank0.sent[0]))
    record = json.loads((out / "progress-rank1.json").read_text())
    assert [s["file"] for s in record["shards"]] == plan[1::2]
    # One process folds the record in, redoes nothing, and commits: the store of one process, file for file.
    harvest(CFG, CORPUS, out, loaded=tiny_lm, progress=False, after_shard=lambda i: pytest.fail(f"shard {i} redone"))
    assert _digests(out) == _digests(ref.path)


def test_a_rank_or_a_progress_record_of_other_settings_is_refused(tiny_lm, tmp_path):
    out = tmp_path / "ranks"
    rank0 = Relay(rank=0, size=2)
    with pytest.raises(StoreCorruptError, match="finds no record"):
        harvest(CFG, CORPUS, out, loaded=tiny_lm, progress=False, world=rank0)
    seed5 = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1, seed=5)
    with pytest.raises(
        UsageError, match=r"rank 1 was started with other settings than rank 0 \(corpus.seed: 0 on rank 0, 5 here\)"
    ):
        harvest(CFG, seed5, out, loaded=tiny_lm, progress=False, world=Relay(rank=1, size=2, received=rank0.sent[0]))
    assert not (out / "progress-rank1.json").exists()  # refused before it harvested anything
    with pytest.raises(StoreCorruptError, match="incomplete"):
        harvest(CFG, CORPUS, out, loaded=tiny_lm, progress=False, world=Relay(rank=1, size=2, received=rank0.sent[0]))
    (out / "manifest.json").unlink()  # left alone, rank 1's record must still not be taken into another harvest
    with pytest.raises(
        UsageError,
        match=r"progress-rank1.json records shards of a harvest with other settings \(corpus.seed: 0 there, 5 asked\)",
    ):
        harvest(CFG, seed5, out, loaded=tiny_lm, progress=False)


def test_other_settings_refuse_to_resume(tiny_lm, tmp_path):
    harvest(CFG, CORPUS, tmp_path / "s", loaded=tiny_lm, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        harvest(
            CFG,
            TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1, seed=5),
            tmp_path / "s",
            loaded=tiny_lm,
            progress=False,
        )


def test_resume_redoes_a_same_size_corrupted_shard(tiny_lm, tmp_path, capsys):
    ref = harvest(CFG, CORPUS, tmp_path / "ref", loaded=tiny_lm, progress=False)
    cut = tmp_path / "cut"

    def crash(i):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest(CFG, CORPUS, cut, loaded=tiny_lm, progress=False, after_shard=crash)
    shard = cut / "train-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # same size: a size check alone keeps it
    shard.write_bytes(bytes(data))
    harvest(CFG, CORPUS, cut, loaded=tiny_lm, progress=False)
    assert "train-00001.safetensors is missing or fails its sha256; redoing it" in capsys.readouterr().err
    assert _digests(cut) == _digests(ref.path)
    ActivationStore(cut).rows("resid_post.1")  # every shard passes its checksum


def test_an_edited_manifest_is_refused(tiny_lm, tmp_path):
    store = harvest(CFG, CORPUS, tmp_path / "s", loaded=tiny_lm, progress=False)
    path = store.path / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace('"rows_per_context": 31', '"rows_per_context": 21'))
    with pytest.raises(StoreCorruptError, match="edited or damaged"):
        ActivationStore(store.path)
    with pytest.raises(StoreCorruptError, match="edited or damaged"):
        harvest(CFG, CORPUS, store.path, loaded=tiny_lm, progress=False)
    path.write_text(text)
    assert ActivationStore(store.path).rows_per_context == 31


def test_non_finite_rows_are_named_with_file_and_row(tiny_lm, tmp_path):
    from safetensors.torch import load_file, save_file

    from mechscope.store import sha256_file, write_manifest

    store = harvest(CFG, CORPUS, tmp_path / "s", loaded=tiny_lm, progress=False)
    shard = store.path / "train-00001.safetensors"
    tensors = load_file(str(shard))
    tensors["acts/model.layers.1"][5, 3] = float("inf")
    save_file(tensors, str(shard))
    manifest = json.loads((store.path / "manifest.json").read_text())
    entry = next(s for s in manifest["shards"] if s["file"] == shard.name)
    entry["sha256"], entry["bytes"] = sha256_file(shard), shard.stat().st_size
    write_manifest(store.path, manifest)  # as if the model itself had produced the Inf
    fresh = ActivationStore(store.path)
    first = manifest["shards"][0]["rows"]
    fresh.rows("resid_post.1", 0, first)  # shard 0 is clean
    with pytest.raises(
        StoreCorruptError,
        match=r"non-finite .*train-00001\.safetensors, 'acts/model\.layers\.1' row 5 \(train row 253\)",
    ):
        fresh.gather("resid_post.1", np.array([3, first + 5, first + 9]))


def test_corrupt_and_truncated_shards_are_detected(tiny_lm, tmp_path):
    store = harvest(CFG, CORPUS, tmp_path / "s", loaded=tiny_lm, progress=False)
    shard = store.path / "train-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    fresh = ActivationStore(store.path)
    fresh.rows("resid_post.1", 0, 10)  # shard 0 is fine
    with pytest.raises(StoreCorruptError, match="checksum"):
        fresh.rows("resid_post.1", 0, fresh.n_rows())
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(StoreCorruptError, match="truncated"):
        ActivationStore(store.path)


def test_loader_is_deterministic_resumable_and_complete(tiny_lm, tmp_path):
    store = harvest(CFG, CORPUS, tmp_path / "s", loaded=tiny_lm, progress=False)
    a = list(store.batches("resid_post.1", 128, seed=3, epochs=2))
    b = list(store.batches("resid_post.1", 128, seed=3, epochs=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 2 * (store.n_rows() // 128)
    resumed = list(store.batches("resid_post.1", 128, seed=3, start_batch=5, epochs=2))
    assert all(torch.equal(x, y) for x, y in zip(a[5:], resumed)) and len(resumed) == len(a) - 5
    other = next(store.batches("resid_post.1", 128, seed=4))
    assert not torch.equal(other, a[0])
    # One epoch without drop_last visits every row exactly once.
    every = torch.cat(list(store.batches("resid_post.1", 128, seed=3, drop_last=False)))
    allrows = store.rows("resid_post.1")
    assert every.shape == allrows.shape
    key = lambda t: np.lexsort(t.numpy().T[:4])
    assert torch.equal(every[key(every)], allrows[key(allrows)])

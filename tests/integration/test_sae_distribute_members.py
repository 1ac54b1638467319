"""``distribute_members``: the SAEs of a sweep dealt out over two CPU processes under torchrun (gloo), each rank
training its own on whole batches, end with the weights, byte for byte, of one process training the whole sweep;
a rank killed mid-run resumes to those same weights."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from mechscope.checkpoint import read
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.sae import BatchTopKConfig, Member, OptimConfig, TopKConfig, TrainConfig, Trainer

WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from test_sae_distribute_members import MEMBERS, CFG, batches
    from mechscope.distributed import World
    from mechscope.sae import Trainer
    trainer = Trainer(MEMBERS, CFG, sys.argv[1], world=World.from_env("cpu", timeout_s=30))
    start = trainer.resume()
    data = batches()
    for _ in range(start):  # the global batches already trained on
        next(data)
    trainer.fit(data, start_step=start)
    trainer.save()
    print(f"rank {trainer.world.rank} of {trainer.world.size} trained {trainer.owned} from step {start}", flush=True)
    """
)

D, N, B = 8, 32, 32
MEMBERS = [
    Member(TopKConfig(d_in=D, latents=N, k=3, auxk_coef=0.5), OptimConfig(lr=5e-3, warmup_steps=2)),
    # alone on rank 1: its cut over the batch must not all-gather with rank 0, which trains other SAEs
    Member(BatchTopKConfig(d_in=D, latents=N, k=3, threshold_lr=0.2), OptimConfig(lr=5e-3, warmup_steps=2)),
    Member(TopKConfig(d_in=D, latents=2 * N, k=2), OptimConfig(lr=3e-3, warmup_steps=1)),
]
CFG = TrainConfig(
    steps=8,
    batch_size=B,
    checkpoint_every=2,
    dead_window=2 * B,
    log_every=2,
    progress=False,
    device="cpu",
    distribute_members=True,
)


def batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(B, D, generator=g) * 2 + 0.5


def launch(tmp_path, out, ranks: int, **env: str) -> subprocess.CompletedProcess:
    """The worker under torchrun with ``ranks`` processes, or as one plain process (ranks=0)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # Imported here: the worker imports this file in a process where the package `tests` is not on the path.
    from tests.harness import torchrun_script

    return torchrun_script(script, [str(out), os.path.dirname(__file__)], ranks, timeout=180, **env)


def rank_tensors(out) -> dict[str, torch.Tensor]:
    """The tensors of both ranks' checkpoints (keyed by the member's index in the sweep), less the RNG state."""
    parts = [load_file(str(out / f"checkpoint.rank{r}-of-2.safetensors")) for r in range(2)]
    assert not set(parts[0]) - {"rng.torch"} & set(parts[1]), "a member was trained on both ranks"
    return {k: v for part in parts for k, v in part.items() if k != "rng.torch"}


def test_members_dealt_out_over_two_ranks_equal_one_process_byte_for_byte(tmp_path):
    one = launch(tmp_path, tmp_path / "one", ranks=0)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(tmp_path, tmp_path / "two", ranks=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert (
        "rank 0 of 2 trained [0, 2] from step 0" in two.stdout and "rank 1 of 2 trained [1] from step 0" in two.stdout
    )

    want = {k: v for k, v in load_file(str(tmp_path / "one" / "checkpoint.safetensors")).items() if k != "rng.torch"}
    got = rank_tensors(tmp_path / "two")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert float(want["1.sae.threshold"]) > 0  # BatchTopK learned its threshold
    assert not torch.equal(want["0.sae.W_enc"], Trainer(MEMBERS, CFG).saes[0].W_enc.detach())
    # each rank saved and logged its own members; every member was saved once
    names = ["topk-0", "batchtopk", "topk-2"]
    assert all((tmp_path / "two" / n / "sae.safetensors").exists() for n in names)
    assert sorted(p.name for p in (tmp_path / "two").glob("train_log*")) == [
        "train_log.rank0-of-2.jsonl",
        "train_log.rank1-of-2.jsonl",
    ]
    for n in names:
        assert (
            load_file(str(tmp_path / "two" / n / "sae.safetensors")).keys()
            == load_file(str(tmp_path / "one" / n / "sae.safetensors")).keys()
        )
        for k, v in load_file(str(tmp_path / "one" / n / "sae.safetensors")).items():
            assert torch.equal(load_file(str(tmp_path / "two" / n / "sae.safetensors"))[k], v), (n, k)


def test_a_killed_rank_resumes_to_the_weights_of_a_run_never_killed(tmp_path):
    whole = launch(tmp_path, tmp_path / "whole", ranks=2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # Rank 1 dies (SIGKILL) after step 5, its last checkpoint at step 4; torchrun then ends rank 0.
    killed = launch(tmp_path, tmp_path / "cut", ranks=2, MECHSCOPE_FAULT="train.step@5 rank=1")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert read(tmp_path / "cut" / "checkpoint.rank1-of-2.safetensors")[1]["step"] == 4
    again = launch(tmp_path, tmp_path / "cut", ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rank 1 of 2 trained [1] from step 4" in again.stdout
    want, got = rank_tensors(tmp_path / "whole"), rank_tensors(tmp_path / "cut")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_a_resume_with_another_layout_is_refused_naming_the_files(tmp_path):
    # A one-process run's checkpoint cannot be resumed by rank 0 of 2 (nor the reverse): the members live elsewhere.
    single = Trainer(MEMBERS, dataclasses.replace(CFG, steps=2), tmp_path)
    single.fit(batches())
    rank0 = Trainer(MEMBERS, CFG, tmp_path, world=World(rank=0, size=2))
    with pytest.raises(UsageError, match=r"holds checkpoint\.safetensors, written by a run laid out otherwise"):
        rank0.resume()
    with pytest.raises(UsageError, match=r"`distribute_members` deals 3 SAE\(s\) out over 4 ranks"):
        Trainer(MEMBERS, CFG, world=World(rank=0, size=4))

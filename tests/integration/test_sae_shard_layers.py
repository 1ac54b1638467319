"""``shard_layers``: a TopK and a JumpReLU cross-layer transcoder split by layers over two CPU processes under
torchrun (gloo) end with the weights of one process trained on the same batches with the same seed (to float
rounding), each rank holding about half of the parameters; the saved CLT is the one file a single process writes;
a rank killed mid-run resumes to the weights of a sharded run never killed, tensor for tensor."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from mechscope.checkpoint import read
from mechscope.distributed import World
from mechscope.sae import Member, OptimConfig, TrainConfig, Trainer
from mechscope.sae.clt import CLTConfig, join_shards
from mechscope.sae.clt_jumprelu import JumpReLUCLTConfig
from mechscope.sae.io import load_sae
from tests.harness import torchrun_script

WORKER = """
import json, os, sys, torch
from safetensors.torch import save_file
torch.set_num_threads(1)
sys.path[:0] = [sys.argv[2], sys.argv[3]]  # this folder, and the repository root (tests.harness)
from test_sae_shard_layers import MEMBERS, CFG, batches
from mechscope.distributed import World
from mechscope.sae import Trainer
world = World.from_env("cpu", timeout_s=60)
trainer = Trainer(MEMBERS, CFG, sys.argv[1], world=world)
start = trainer.resume()
data = batches()
for _ in range(start):  # the global batches already trained on
    next(data)
trainer.fit(data, start_step=start)
trainer.save()
# the gradient of one more batch's loss: what the pass-through backward of the all-reduce must give each shard
x = next(batches())
for i, sae in enumerate(trainer.saes):
    sae.zero_grad()
    sae(x).loss.backward()
    grads = {k: p.grad for k, p in sae.named_parameters()}
    save_file(grads, f"{sys.argv[1]}/grads.{i}.rank{world.rank}.safetensors")
held = sum(p.numel() * p.element_size() for sae in trainer.saes for p in sae.parameters())
report = {"rank": world.rank, "size": world.size, "start": start, "param_bytes": held}
os.write(1, (json.dumps(report) + "\\n").encode())  # one write: the ranks share the pipe (a print may interleave)
world.close()
"""

L, DI, DO, M, B = 4, 4, 4, 8, 32  # layers, input / output width per layer, latents per layer, rows per batch
MEMBERS = [
    Member(CLTConfig(d_in=L * DI, d_out=L * DO, latents=L * M, layers=L, k=2), OptimConfig(lr=5e-3, warmup_steps=2)),
    Member(
        JumpReLUCLTConfig(
            d_in=L * DI, d_out=L * DO, latents=L * M, layers=L, penalty="tanh", sparsity_coef=1e-2, threshold_init=0.05
        ),
        OptimConfig(lr=5e-3, warmup_steps=2),
    ),
]
CFG = TrainConfig(
    steps=8, batch_size=B, checkpoint_every=2, dead_window=2 * B, log_every=2, progress=False, device="cpu",
    shard_layers=True,
)  # fmt: skip
NAMES = ["clt", "jumprelu_clt"]
ROOT = Path(__file__).resolve().parents[2]


def batches():
    """Rows [x | y]: y a fixed linear map of x (its layer l' reading the layers ≤ l') plus noise."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(L * DI, L * DO, generator=g) * torch.kron(torch.ones(L, L).triu(), torch.ones(DI, DO))
    while True:
        x = torch.randn(B, L * DI, generator=g) * 2 + 0.5
        yield torch.cat([x, x @ A / 4 + 0.1 * torch.randn(B, L * DO, generator=g)], 1)


def launch(tmp_path, out, ranks: int, **env: str):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return torchrun_script(script, [str(out), os.path.dirname(__file__), str(ROOT)], ranks, **env)


def reports(run) -> list[dict]:
    """The JSON line each rank printed, in rank order."""
    lines = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    return sorted(lines, key=lambda r: r["rank"])


def saved(out) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(str(out / n / "sae.safetensors")) for n in NAMES}


def test_two_ranks_hold_half_each_and_train_the_weights_of_one_process(tmp_path):
    one = launch(tmp_path, tmp_path / "one", ranks=0)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(tmp_path, tmp_path / "two", ranks=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]

    # memory: each rank holds about half of the parameters (all but b_dec is split by latents)
    whole, ranks = reports(one)[0]["param_bytes"], [r["param_bytes"] for r in reports(two)]
    assert len(ranks) == 2 and sum(ranks) - whole == 2 * 4 * L * DO  # only b_dec [L·d_o] (×2 SAEs) is on both
    for held in ranks:
        assert 0.5 <= held / whole <= 0.52, (held, whole)

    # each shard's gradient is its slice of one process's, not 2× it (Adam would hide a factor: it is checked here)
    for i in range(2):
        whole_grad = load_file(str(tmp_path / "one" / f"grads.{i}.rank0.safetensors"))
        joined = join_shards([load_file(str(tmp_path / "two" / f"grads.{i}.rank{r}.safetensors")) for r in range(2)])
        for k, v in whole_grad.items():
            assert torch.allclose(joined[k], v, atol=1e-5, rtol=1e-4), (NAMES[i], k)
        assert float(whole_grad["W_dec"].abs().max()) > 1e-3

    # every rank wrote its shard; rank 0 saved each CLT whole, in the layout of one process
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint*")) == [
        "checkpoint.rank0-of-2.safetensors",
        "checkpoint.rank1-of-2.safetensors",
    ]
    shard = read(tmp_path / "two" / "checkpoint.rank1-of-2.safetensors")[0]
    assert shard["0.sae.W_dec"].shape == (2 * M, L * DO) and shard["0.sae.W_enc"].shape == (L * DI, 2 * M)
    want, got = saved(tmp_path / "one"), saved(tmp_path / "two")
    for n in NAMES:
        assert got[n].keys() == want[n].keys()
        for k, v in want[n].items():
            assert got[n][k].shape == v.shape, (n, k)
            assert torch.allclose(got[n][k], v, atol=1e-5, rtol=0), (n, k, float((got[n][k] - v).abs().max()))
        sae = load_sae(tmp_path / "two" / n)  # every reader loads it as it loads a one-process CLT
        assert sae.arch == n and sae.latents == L * M
    # the weights moved from their initial values (in the trainer's scaled units, as the checkpoint keeps them)
    trained = read(tmp_path / "one" / "checkpoint.safetensors")[0]
    init = Trainer(MEMBERS, CFG, world=World()).saes
    for i in range(2):
        assert (trained[f"{i}.sae.W_dec"] - init[i].W_dec.detach()).abs().max() > 1e-2, NAMES[i]


def test_a_killed_rank_resumes_to_the_weights_of_a_sharded_run_never_killed(tmp_path):
    whole = launch(tmp_path, tmp_path / "whole", ranks=2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # Rank 1 dies (SIGKILL) after step 5, its last checkpoint at step 4; rank 0 cannot pass step 6 without it.
    killed = launch(tmp_path, tmp_path / "cut", ranks=2, MECHSCOPE_FAULT="train.step@5 rank=1")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert [read(tmp_path / "cut" / f"checkpoint.rank{r}-of-2.safetensors")[1]["step"] for r in range(2)] == [4, 4]
    # shards of different steps (as a rank killed while writing its checkpoint leaves them) are refused by name
    shutil.copytree(tmp_path / "cut", tmp_path / "mixed")
    shutil.copy(tmp_path / "whole" / "checkpoint.rank0-of-2.safetensors", tmp_path / "mixed")
    mixed = launch(tmp_path, tmp_path / "mixed", ranks=2)
    assert mixed.returncode != 0 and "checkpointed at different steps ([8, 4], by rank)" in mixed.stderr, mixed.stderr
    again = launch(tmp_path, tmp_path / "cut", ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["start"] for r in reports(again)] == [4, 4]
    for r in range(2):
        a, b = (load_file(str(tmp_path / d / f"checkpoint.rank{r}-of-2.safetensors")) for d in ("whole", "cut"))
        assert a.keys() == b.keys()
        for k in a:
            if k != "rng.torch":  # the interpreter's global RNG state, which no step draws from (docs/kill-resume.md)
                assert torch.equal(a[k], b[k]), (r, k)
    want, got = saved(tmp_path / "whole"), saved(tmp_path / "cut")
    for n in NAMES:
        for k, v in want[n].items():
            assert torch.equal(got[n][k], v), (n, k)

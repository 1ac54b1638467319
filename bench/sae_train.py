"""TopK SAE training throughput: mechscope's step vs a minimal dense PyTorch step vs peers. One JSON line.

Protocol (shared with /work/shared/peerbench, so the numbers read as ratios): d=576, 8192 latents, k=32,
batch 4096, Adam lr 2e-4; rows come in file order from the peer benchmark's activations (8192 planted
unit directions, p=0.004, U[0,1] magnitudes, N(0, 0.01²) noise; written by its gen_acts.py when
absent); 5 untimed warm-up steps, 100 timed steps (perf_counter around each step, rows/s = timed rows /
summed step time), 128 steps in all, then FVU (centred) on the 65,536 held-out rows.

- mechscope: one :meth:`Trainer.train_step` (input scale, forward with the sparse TopK kernels, backward,
  decoder-gradient projection, Adam, renormalisation, dead-latent counts).
- reference: encoder matmul, top-k, scatter to dense codes, dense decoder matmul, Adam.
  The two run in this process, interleaved step by step, so that load from elsewhere hits both alike.
- peers: each peer's own script from the peer benchmark, run from its own venv in a subprocess.
FLOP rule: 6·d·latents FLOPs a row, as a fraction of the measured fp32 matmul rate of
[4096, 576] @ [576, 8192]. Floor: an exact TopK step needs at least the encoder's dense matmul,
2·d·latents FLOPs a row, so floor rows/s = matmul rate / (2·d·latents); ``frac_of_floor`` is a step's
rows/s over that floor, from the matmul rate measured in the same run (1.0 = the step costs no more
than its one matmul). ``--quick`` shrinks everything (and skips the peers) to check the script;
``--skip-reference`` leaves out the slow dense reference step.

Run alone, with nice, on an otherwise quiet machine: ``nice python bench/sae_train.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mechscope.sae import REGISTRY, Member, OptimConfig, TrainConfig, Trainer

PEERBENCH = Path(os.environ.get("MECHSCOPE_PEERBENCH", "/work/shared/peerbench"))
PEER_VENVS = Path(os.environ.get("MECHSCOPE_PEER_VENVS", "/tmp/peervenvs"))
PEERS = {"sparsify": "sae_sparsify.py", "saelens": "sae_saelens.py", "dictlearn": "sae_dictlearn.py"}


def args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes and steps, no peers: checks that the script runs")
    p.add_argument("--acts", default="/tmp/peerbench_acts.pt", help="the peer benchmark's activations file")
    p.add_argument("--peers", nargs="*", default=None, help=f"peers to run (default: those installed of {list(PEERS)})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--skip-reference", action="store_true", help="do not time the dense reference step (about 4x slower)"
    )
    p.add_argument(
        "--timed",
        type=int,
        default=100,
        help="timed steps (protocol: 100; the run has 5 warm-up steps "
        "before them and 23 after, 128 in all); fewer on a loaded machine, said in the output",
    )
    p.add_argument(
        "--archs",
        nargs="*",
        default=[],
        help="other mechscope architectures with a k (e.g. batchtopk matryoshka "
        "transcoder skip_transcoder), timed interleaved beside TopK at the same k",
    )
    return p.parse_args()


def matmul_gflops(M: int, K: int, N: int, reps: int) -> float:
    """Sustained fp32 rate of [M, K] @ [K, N], 2·M·K·N FLOPs each."""
    a, b = torch.randn(M, K), torch.randn(K, N)
    c = torch.empty(M, N)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b, out=c)
    return 2 * M * K * N * reps / (time.perf_counter() - t0) / 1e9


def load_rows(path: str, quick: bool, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    if quick:
        g = torch.Generator().manual_seed(0)
        dirs = torch.nn.functional.normalize(torch.randn(4 * d, d, generator=g), dim=1)
        codes = (torch.rand(40_000, 4 * d, generator=g) < 0.02) * torch.rand(40_000, 4 * d, generator=g)
        x = codes @ dirs + 0.01 * torch.randn(40_000, d, generator=g)
        return x[:32_768], x[32_768:]
    if not Path(path).exists():
        subprocess.run([sys.executable, str(PEERBENCH / "gen_acts.py"), path], check=True, cwd=PEERBENCH)
    data = torch.load(path, weights_only=True)  # tensors only: no code runs on load
    return data["train"], data["heldout"]


def time_interleaved(
    steps: dict, train: torch.Tensor, B: int, warmup: int, timed: int, total: int
) -> dict[str, tuple[list[float], float]]:
    """Run every step function on batch i before any takes batch i + 1, so that a busy machine slows
    them alike; returns name → (the timed steps' seconds, total seconds)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    wall = dict.fromkeys(steps, 0.0)
    for i in range(total):
        x = train[(i * B) % (train.shape[0] - B + 1) :][:B]
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(x)
            dt = time.perf_counter() - t0
            wall[name] += dt
            if warmup <= i < warmup + timed:
                times[name].append(dt)
    return {name: (times[name], wall[name]) for name in steps}


@torch.no_grad()
def heldout_fvu(recon, held: torch.Tensor, B: int) -> float:
    num = den = 0.0
    mu = held.double().mean(0)
    for j in range(0, held.shape[0], B):
        xb = held[j : j + B]
        num += float((xb.double() - recon(xb).double()).pow(2).sum())
        den += float((xb.double() - mu).pow(2).sum())
    return num / den


def summary(
    times: list[float], wall: float, fvu: float, B: int, flops_row: float, peak: float, floor_rows_s: float
) -> dict:
    rows_s = len(times) * B / sum(times)
    return {
        "rows_per_s": round(rows_s, 1),
        "step_s_median": round(statistics.median(times), 4),
        "gflops_6rule": round(rows_s * flops_row / 1e9, 2),
        "frac_of_matmul": round(rows_s * flops_row / 1e9 / peak, 3),
        "frac_of_floor": round(rows_s / floor_rows_s, 3),
        "heldout_fvu": round(fvu, 4),
        "train_s": round(wall, 1),
    }


MULTI = {"crosscoder": 2, "clt": 2}
"""Architectures that read several sites: the number of copies of the protocol's row each reads (its d_in is that × d)."""


def mechscope_step(d, n, k, B, lr, total, arch="topk"):
    """(step function, reconstruct function) of a mechscope trainer of one SAE of ``arch`` (TopK by default).

    A transcoder (``paired``) trains on paired rows [x | x]: the target is the input itself, so the rows
    and shapes are the protocol's, and the step includes the pairing copy and the per-half scaling a real
    mlp_in → mlp_out run pays. Its held-out FVU is of that identity map (which a skip-transcoder's linear
    term learns exactly, so its FVU says nothing about its latents). A crosscoder reads two copies of the
    row as two sites ([x | x], d_in = 2d, n latents, k kept), a cross-layer transcoder two layers of n/2
    latents with k/2 kept each ([x | x] in, [x | x] out): each does about twice TopK's arithmetic per row,
    so its rows/s ratio is per row of the protocol, not per FLOP."""
    cls = REGISTRY[arch]
    copies = MULTI.get(arch, 1)
    if arch == "clt":  # two layers of n/2 latents, k/2 kept per layer (k in all): rows [x | x | x | x]
        cfg = cls.config_cls(d_in=2 * d, latents=n, k=k // 2, layers=2, d_out=2 * d)
    elif arch == "crosscoder":  # two sites side by side: rows [x | x]
        cfg = cls.config_cls(d_in=2 * d, latents=n, k=k, sites=2)
    else:  # k where the architecture has one (a JumpReLU dictionary's L0 comes from its threshold instead)
        kw = {"k": k} if "k" in cls.config_cls.__dataclass_fields__ else {}
        cfg = cls.config_cls(d_in=d, latents=n, **kw, **({"d_out": d} if cls.paired else {}))
    trainer = Trainer(
        [Member(cfg, OptimConfig(lr=lr, warmup_steps=0, decay="none"))],
        TrainConfig(steps=total, batch_size=B, progress=False, device="cpu"),
    )

    def recon(x):
        sae = trainer.export(0).eval()
        xs = torch.cat([x] * copies, 1)
        out = sae.predict(xs) if cls.paired else sae.decode_sparse(sae.encode_sparse(xs))
        return out[:, :d]  # the first copy's reconstruction (a multi-site dictionary's first site)

    rows = 2 * copies if cls.paired else copies
    return (lambda x: trainer.train_step(torch.cat([x] * rows, 1)) if rows > 1 else trainer.train_step(x)), recon


def reference_step(d, n, k, B, lr):
    """The minimal dense TopK step, what a plain PyTorch user writes: (step function, reconstruct function)."""
    W_dec = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    p = {
        "W_enc": W_dec.t().clone().requires_grad_(),
        "b_enc": torch.zeros(n, requires_grad=True),
        "W_dec": W_dec.requires_grad_(),
        "b_dec": torch.zeros(d, requires_grad=True),
    }
    opt = torch.optim.Adam(p.values(), lr=lr)

    def recon(x):
        v, i = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).topk(k, dim=-1, sorted=False)
        return torch.zeros(x.shape[0], n).scatter(-1, i, v.relu()) @ p["W_dec"] + p["b_dec"]

    def step(x):
        (recon(x) - x).pow(2).sum(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, recon


def run_peer(name: str, acts: str, peak: float, steps: tuple[int, int, int]) -> dict:
    python = PEER_VENVS / name / "bin" / "python"
    cmd = [
        str(python),
        PEERS[name],
        "--acts",
        acts,
        "--warmup",
        str(steps[0]),
        "--timed",
        str(steps[1]),
        "--total",
        str(steps[2]),
        "--peak-gflops",
        str(peak),
    ]
    run = subprocess.run(cmd, cwd=PEERBENCH, capture_output=True, text=True)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("{")), None)
    if run.returncode or line is None:
        return {"error": (run.stderr or run.stdout)[-500:]}
    r = json.loads(line)
    return {
        "version": r["version"],
        "rows_per_s": r["rows_per_s"],
        "step_s_median": r["step_s_median"],
        "frac_of_matmul": r["frac_of_matmul_peak"],
        "heldout_fvu": r["heldout_fvu"],
        "train_wall_s": r["train_wall_s"],
    }


def main() -> None:
    a = args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, n, k, B, lr = (64, 1024, 8, 512, 1e-3) if a.quick else (576, 8192, 32, 4096, 2e-4)
    steps = (2, 8, 12) if a.quick else (5, a.timed, a.timed + 28)
    peak = matmul_gflops(B, d, n, reps=5 if a.quick else 30)
    flops_row = 6 * d * n
    floor_rows_s = peak * 1e9 / (2 * d * n)
    train, held = load_rows(a.acts, a.quick, d)
    runs = {"mechscope": mechscope_step(d, n, k, B, lr, steps[2])}
    runs.update({f"mechscope_{arch}": mechscope_step(d, n, k, B, lr, steps[2], arch) for arch in a.archs})
    if not a.skip_reference:
        runs["reference"] = reference_step(d, n, k, B, lr)
    timed = time_interleaved({name: step for name, (step, _) in runs.items()}, train, B, *steps)
    res = {
        name: summary(*timed[name], heldout_fvu(runs[name][1], held, B), B, flops_row, peak, floor_rows_s)
        for name in runs
    }
    ours, ref = res["mechscope"], res.get("reference")
    del train, held  # peers load their own copy
    names = (
        a.peers
        if a.peers is not None
        else ([] if a.quick else [p for p in PEERS if (PEER_VENVS / p / "bin" / "python").exists()])
    )
    peers = {name: run_peer(name, a.acts, peak, steps) for name in names}
    for r in peers.values():
        if "rows_per_s" in r:
            r["frac_of_floor"] = round(r["rows_per_s"] / floor_rows_s, 3)
    ratios = {"mechscope_vs_reference": round(ours["rows_per_s"] / ref["rows_per_s"], 2)} if ref else {}
    ratios.update(
        {
            f"mechscope_vs_{p}": round(ours["rows_per_s"] / r["rows_per_s"], 2)
            for p, r in peers.items()
            if "rows_per_s" in r
        }
    )
    ratios.update(
        {f"{arch}_vs_topk": round(res[f"mechscope_{arch}"]["rows_per_s"] / ours["rows_per_s"], 2) for arch in a.archs}
    )
    print(
        json.dumps(
            {
                "bench": "sae_train",
                "quick": a.quick,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "d": d,
                "latents": n,
                "k": k,
                "batch": B,
                "lr": lr,
                "warmup_steps": steps[0],
                "timed_steps": steps[1],
                "total_steps": steps[2],
                "matmul_gflops": round(peak, 1),
                "flops_per_row": flops_row,
                "floor_rows_per_s": round(floor_rows_s, 1),
                "mechscope": ours,
                "reference": ref,
                **{f"mechscope_{arch}": res[f"mechscope_{arch}"] for arch in a.archs},
                "peers": peers,
                "ratios": ratios,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

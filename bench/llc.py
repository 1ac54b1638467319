"""SGLD steps/s of mechscope's LLC estimator beside devinterp 1.3.2 on the same model, in one run.

The model and data are those of ../shared/peerbench/llc_devinterp.py part A: an MLP 784-256-256-10
(269,322 parameters) trained 10 epochs (Adam 1e-3, batch 256) on 10,000 N(0, 1) inputs labelled by a
random teacher MLP; SGLD with ε = 1e-4, γ = 100, nβ = 256/ln 256 (devinterp's default_nbeta of the
loader), 2 chains × 200 draws, batch 256, no burn-in, 2 threads. mechscope is timed with the
MALA/distance diagnostics off (the same work per step as devinterp) and with its default diagnostics
(one extra forward/backward every 10th draw), both with its default schedule (the two chains side by side,
one thread each: ``LLCConfig.workers`` automatic); devinterp's part A runs in its own venv (default
/tmp/peervenvs/devinterp13, override with DEVINTERP_PYTHON), never at the same time as mechscope, with its
default ``cores=1`` (the peer protocol) and, with ``--devinterp-cores 2``, also with its two-process pool.
The runs alternate ``--repeats`` times (mechscope, devinterp, mechscope, …) so that a change in the machine's
load hits both, and the medians are compared. Prints one JSON line.

``--fused-ab`` times only mechscope, alternating its fused SGLD step (the default when no MALA proposal is
kept) with the unfused one (∇U kept for MALA at every step, the step before the fused path existed), to
measure what the fusion buys on this model.

``--workers-ab`` times only mechscope, alternating chains side by side (``workers=2``) with chains one after
another on two threads (``workers=1``, the schedule before side-by-side chains existed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mechscope.slt import LLCConfig, LocalSGLD, estimate_llc
from mechscope.slt.sgld import SAMPLERS

PEER = next(
    (
        d / "shared" / "peerbench" / "llc_devinterp.py"
        for d in Path(__file__).resolve().parents
        if (d / "shared" / "peerbench" / "llc_devinterp.py").exists()
    ),
    Path("/work/shared/peerbench/llc_devinterp.py"),
)
DEVINTERP = os.environ.get("DEVINTERP_PYTHON", "/tmp/peervenvs/devinterp13/bin/python")


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def trained_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    X = torch.randn(10_000, 784)
    with torch.no_grad():
        y = mlp()(X).argmax(-1)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(10):
        for rows in torch.randperm(len(X)).split(256):
            opt.zero_grad()
            F.cross_entropy(model(X[rows]), y[rows]).backward()
            opt.step()
    return model, X, y


def ce(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class _Unfused(LocalSGLD):
    """The SGLD step with ∇U kept at every step (no fused path), for ``--fused-ab``."""

    keep_proposal = property(lambda self: True, lambda self, v: None)


def time_mechscope(model, X, y, mala_every: int, chains=2, draws=200, unfused: bool = False, workers: int = 0) -> dict:
    if unfused:
        SAMPLERS["sgld"] = _Unfused
    try:
        return _time_mechscope(model, X, y, mala_every, chains, draws, workers)
    finally:
        SAMPLERS["sgld"] = LocalSGLD


def _time_mechscope(model, X, y, mala_every: int, chains=2, draws=200, workers: int = 0) -> dict:
    cfg = LLCConfig(
        epsilon=1e-4,
        gamma=100.0,
        nbeta=256 / math.log(256),
        chains=chains,
        draws=draws,
        burn_in=0,
        batch_size=256,
        mala_every=mala_every,
        seed=0,
        workers=workers,
    )
    t = time.perf_counter()
    res = estimate_llc(model, ce, (X, y), cfg, progress=False)
    wall = time.perf_counter() - t
    # the full-data L(w*) (40 forward batches of 256) is part of the timed call, as devinterp's init loss is
    return {
        "sgld_steps_per_s": round(chains * draws / wall, 1),
        "wall_s": round(wall, 2),
        "llc": round(res.llc_hat, 2),
        "llc_se": round(res.llc_se, 2),
        "mala_every": mala_every,
        "workers_used": res.config["workers_used"],
    }


def devinterp_part_a(cores: int = 1, draws: int = 200) -> dict:
    """devinterp's part A (train the same MLP, time estimate_learning_coeff_with_summary) in its own venv,
    with its ``cores`` argument (1: the peer protocol's call; more: devinterp's spawn-process pool)."""
    code = (
        "import functools, json, llc_devinterp as m\n"
        f"m.estimate_learning_coeff_with_summary = functools.partial(m.estimate_learning_coeff_with_summary, cores={cores})\n"
        f"print(json.dumps(m.part_a(draws={draws})))"
    )
    proc = subprocess.run([DEVINTERP, "-c", code], capture_output=True, text=True, cwd=PEER.parent)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": proc.stderr[-400:]}


def _ab(bench: str, a: tuple[str, dict], b: tuple[str, dict], problem: tuple, repeats: int, params: int) -> None:
    """Time two mechscope variants alternately (no diagnostics), ``repeats`` times each; print medians and ratio."""
    runs: dict[str, list[dict]] = {a[0]: [], b[0]: []}
    for _ in range(repeats):
        for name, kw in (a, b):
            runs[name].append(time_mechscope(*problem, 0, **kw))
    ma, mb = (statistics.median(r["sgld_steps_per_s"] for r in runs[name]) for name in (a[0], b[0]))
    print(
        json.dumps(
            {
                "bench": bench,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "params": params,
                "repeats": repeats,
                "load_avg_1min": round(os.getloadavg()[0], 1),
                f"{a[0]}_steps_per_s": ma,
                f"{b[0]}_steps_per_s": mb,
                f"{a[0]}_over_{b[0]}": round(ma / mb, 3),
                f"{a[0]}_runs": runs[a[0]],
                f"{b[0]}_runs": runs[b[0]],
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fused-ab", action="store_true", help="time mechscope's fused against its unfused SGLD step only")
    ap.add_argument(
        "--workers-ab", action="store_true", help="time mechscope's chains side by side against one after another"
    )
    ap.add_argument("--devinterp-cores", type=int, default=1, help="also time devinterp with this many cores (>1)")
    ap.add_argument("--draws", type=int, default=200, help="draws per chain for both tools (the peer protocol: 200)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, X, y = trained_model()
    params = sum(p.numel() for p in model.parameters())
    time_mechscope(model, X, y, 0, chains=2, draws=20)  # warm-up (allocator, first-call imports)
    if args.workers_ab:
        return _ab(
            "llc_workers_ab",
            ("side_by_side", dict(workers=2)),
            ("one_after_another", dict(workers=1)),
            (model, X, y),
            args.repeats,
            params,
        )
    if args.fused_ab:
        return _ab(
            "llc_fused_ab",
            ("fused", dict(workers=1)),
            ("unfused", dict(workers=1, unfused=True)),
            (model, X, y),
            args.repeats,
            params,
        )
    plain, diag, peer, peer_cores = [], [], [], []
    for _ in range(args.repeats):
        plain.append(time_mechscope(model, X, y, 0, draws=args.draws))
        diag.append(time_mechscope(model, X, y, 10, draws=args.draws))
        if Path(DEVINTERP).exists():
            peer.append(devinterp_part_a(draws=args.draws))
            if args.devinterp_cores > 1:
                peer_cores.append(devinterp_part_a(args.devinterp_cores, args.draws))
    med = lambda runs: statistics.median(r["sgld_steps_per_s"] for r in runs)  # noqa: E731
    out = {
        "bench": "llc",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": params,
        "repeats": args.repeats,
        "draws": args.draws,
        "load_avg_1min": round(os.getloadavg()[0], 1),
        "mechscope_steps_per_s": med(plain),
        "mechscope_with_diagnostics_steps_per_s": med(diag),
        "mechscope_runs": plain,
        "mechscope_with_diagnostics_runs": diag,
        "devinterp_runs": peer,
    }
    ok = [r for r in peer if "sgld_steps_per_s" in r]
    if ok:
        out["devinterp_steps_per_s"] = med(ok)
        out["devinterp_version"] = "1.3.2"
        out["speedup_vs_devinterp"] = round(med(plain) / med(ok), 2)
        out["speedup_with_diagnostics"] = round(med(diag) / med(ok), 2)
        # each mechscope run beside the devinterp run right after it: a burst of load hits both halves of a pair
        out["speedup_paired_median"] = round(
            statistics.median(
                a["sgld_steps_per_s"] / b["sgld_steps_per_s"] for a, b in zip(plain, peer) if "sgld_steps_per_s" in b
            ),
            2,
        )
    ok_cores = [r for r in peer_cores if "sgld_steps_per_s" in r]
    if ok_cores:
        out[f"devinterp_cores{args.devinterp_cores}_steps_per_s"] = med(ok_cores)
        out[f"devinterp_cores{args.devinterp_cores}_runs"] = peer_cores
        out[f"speedup_vs_devinterp_cores{args.devinterp_cores}"] = round(med(plain) / med(ok_cores), 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""SGLD steps/s of mechscope's LLC estimator beside devinterp 1.3.2 on the same model, in one run.

The model and data are those of ../shared/peerbench/llc_devinterp.py part A: an MLP 784-256-256-10
(269,322 parameters) trained 10 epochs (Adam 1e-3, batch 256) on 10,000 N(0, 1) inputs labelled by a
random teacher MLP; SGLD with ε = 1e-4, γ = 100, nβ = 256/ln 256 (devinterp's default_nbeta of the
loader), 2 chains × 200 draws, batch 256, no burn-in, 2 threads. mechscope is timed twice: with the
MALA/distance diagnostics off (the same work per step as devinterp) and with its default diagnostics
(one extra forward/backward every 10th draw). Then devinterp runs in its own venv (default
/tmp/peervenvs/devinterp13, override with DEVINTERP_PYTHON), after mechscope, never at the same time.
Prints one JSON line.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mechscope.slt import LLCConfig, estimate_llc

PEER = next((d / "shared" / "peerbench" / "llc_devinterp.py" for d in Path(__file__).resolve().parents
             if (d / "shared" / "peerbench" / "llc_devinterp.py").exists()), Path("/work/shared/peerbench/llc_devinterp.py"))
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


def time_mechscope(model, X, y, mala_every: int, chains=2, draws=200) -> dict:
    cfg = LLCConfig(epsilon=1e-4, gamma=100.0, nbeta=256 / math.log(256), chains=chains, draws=draws, burn_in=0,
                    batch_size=256, mala_every=mala_every, seed=0)
    t = time.perf_counter()
    res = estimate_llc(model, ce, (X, y), cfg, progress=False)
    wall = time.perf_counter() - t
    # the full-data L(w*) (40 forward batches of 256) is part of the timed call, as devinterp's init loss is
    return {"sgld_steps_per_s": round(chains * draws / wall, 1), "wall_s": round(wall, 2), "llc": round(res.llc_hat, 2),
            "llc_se": round(res.llc_se, 2), "mala_every": mala_every}


def main() -> None:
    torch.set_num_threads(2)
    model, X, y = trained_model()
    params = sum(p.numel() for p in model.parameters())
    time_mechscope(model, X, y, 0, chains=1, draws=20)  # warm-up (allocator, first-call imports)
    plain = time_mechscope(model, X, y, 0)
    diag = time_mechscope(model, X, y, 10)
    peer = None
    if Path(DEVINTERP).exists():
        proc = subprocess.run([DEVINTERP, str(PEER)], capture_output=True, text=True, cwd=PEER.parent)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        peer = json.loads(lines[-1]) if lines else {"error": proc.stderr[-400:]}
    out = {"bench": "llc", "torch": torch.__version__, "threads": torch.get_num_threads(), "params": params,
           "mechscope": plain, "mechscope_with_diagnostics": diag, "devinterp": peer}
    if peer and "mlp" in peer:
        out["speedup_vs_devinterp"] = round(plain["sgld_steps_per_s"] / peer["mlp"]["sgld_steps_per_s"], 2)
        out["speedup_with_diagnostics"] = round(diag["sgld_steps_per_s"] / peer["mlp"]["sgld_steps_per_s"], 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""The toy ground-truth benchmark (``mechscope toy bench`` with its defaults): every SAE architecture
and every coder against 4,096 true features in 256 dims. Prints ONE JSON line: per method F1, MMCS, FVU
and L0, the target L0, the convergence curve (MMCS of every SAE against rows seen) and the wall time.
Results: docs/benchmarks.md and docs/toy.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/toy.py [--steps N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mechscope.toy.bench import BenchConfig, run_bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=BenchConfig.steps)
    p.add_argument("--device", default=BenchConfig.device, help="training device of the SAEs (cpu, cuda, auto)")
    p.add_argument("--curve-points", type=int, default=BenchConfig.curve_points)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    res = run_bench(BenchConfig(steps=args.steps, device=args.device, curve_points=args.curve_points), progress=False)
    rows = {r["method"]: {k: round(r[k], 4) for k in ("f1", "mmcs", "matched_0.9", "fvu", "l0")} for r in res["rows"]}
    print(
        json.dumps(
            {
                "bench": "toy",
                "k": res["k"],
                "steps": args.steps,
                "train_s": round(res["train_seconds"], 1),
                "total_s": round(time.time() - t0, 1),
                "machine": platform.machine(),
                "device": args.device,
                "rows": rows,
                "curve": [{"rows": c["rows"], **{k: round(v, 4) for k, v in c["mmcs"].items()}} for c in res["curve"]],
            }
        )
    )


if __name__ == "__main__":
    main()

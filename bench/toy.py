"""The toy ground-truth benchmark (``mechscope toy bench`` with its defaults): every SAE architecture
and every coder against 4,096 true features in 256 dims. Prints ONE JSON line: per method F1, MMCS, FVU
and L0, the target L0 and the wall time. Results: docs/benchmarks.md and docs/toy.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/toy.py [--steps N]
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
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    res = run_bench(BenchConfig(steps=args.steps), progress=False)
    rows = {r["method"]: {k: round(r[k], 4) for k in ("f1", "mmcs", "matched_0.9", "fvu", "l0")} for r in res["rows"]}
    print(json.dumps({"bench": "toy", "k": res["k"], "steps": args.steps, "train_s": round(res["train_seconds"], 1),
                      "total_s": round(time.time() - t0, 1), "machine": platform.machine(), "rows": rows}))


if __name__ == "__main__":
    main()

"""Feature absorption per SAE architecture on the toy hierarchy at one matched k (issue 14): Matryoshka
should absorb less than BatchTopK. Prints ONE JSON line; results in docs/absorption.md.

    OMP_NUM_THREADS=1 .venv/bin/python bench/absorption.py [--steps N] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mechscope.toy.absorption import AbsorptionConfig, absorption_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=AbsorptionConfig.steps)
    p.add_argument("--k", type=int, default=AbsorptionConfig.k)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    runs = [absorption_table(AbsorptionConfig(steps=args.steps, k=args.k, seed=s)) for s in args.seeds]
    keys = ("absorbed", "silent_on_child", "silent_parent_only", "parent_cos", "fvu", "l0")
    table = {}
    for i, row in enumerate(runs[0]["rows"]):
        vals = {k: torch.tensor([r["rows"][i][k] for r in runs], dtype=torch.float64) for k in keys}
        table[row["arch"]] = {
            k: {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}
            for k, v in vals.items()
        }
    print(
        json.dumps(
            {
                "bench": "absorption",
                "k": args.k,
                "steps": args.steps,
                "seeds": args.seeds,
                "features": runs[0]["features"],
                "mean_l0": round(runs[0]["mean_l0"], 3),
                "seconds": round(time.time() - t0, 1),
                "machine": platform.machine(),
                "archs": table,
            }
        )
    )


if __name__ == "__main__":
    main()

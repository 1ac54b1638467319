"""Fit and score time of every anomaly detector on the same activations.

    python bench/detect.py              # activations of the backdoor-corner task (Fashion-MNIST MLP)
    python bench/detect.py --synthetic  # Gaussian rows, d=128 (no data set needed)

Prints ONE JSON line. The activations (site → rows) and the model outputs are read once; each detector
then runs ``fit_activations`` on the trusted rows and ``score_activations`` + aggregation on the
scored rows (clean and anomalous together), timed with ``time.perf_counter``, best of ``--repeats``.
The AUROC of each run is reported beside its time, so a fast detector that separates nothing shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch

from mechscope.anomaly import REGISTRY, collect, make_detector
from mechscope.anomaly.metrics import auroc


def activations(synthetic: bool):
    if synthetic:
        g = torch.Generator().manual_seed(0)
        d = 128
        trusted = {"s": torch.randn(2000, d, generator=g, dtype=torch.float64)}
        scored = {
            "s": torch.cat(
                [
                    torch.randn(1000, d, generator=g, dtype=torch.float64),
                    torch.randn(1000, d, generator=g, dtype=torch.float64) + 0.3,
                ]
            )
        }
        out_t, out_s = trusted["s"][:, :10], scored["s"][:, :10]
        probe = {"s": torch.randn(500, d, generator=g, dtype=torch.float64) + 0.3}
        return "synthetic d=128", trusted, out_t, scored, out_s, probe, 1000
    from mechscope.anomaly.benchmarks import load_benchmark

    task = load_benchmark("backdoor-corner")
    trusted, out_t = collect(task.model, task.trusted, task.sites, logits=True)
    scored, out_s = collect(task.model, torch.cat([task.clean, task.anomalous]), task.sites, logits=True)
    probe, _ = collect(task.model, task.probe_anomalous, task.sites)
    return "backdoor-corner act1,act2,out (256,128,10)", trusted, out_t, scored, out_s, probe, len(task.clean)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    what, trusted, out_t, scored, out_s, probe, n_clean = activations(args.synthetic)
    load = os.getloadavg()[0]
    rows = {}
    for name in REGISTRY:
        best_fit = best_score = float("inf")
        for _ in range(args.repeats):
            det = make_detector(name)
            t0 = time.perf_counter()
            det.fit_activations(trusted, anomalous=probe if det.supervised else None, outputs=out_t)
            t1 = time.perf_counter()
            s = det.aggregate(det.score_activations(scored, outputs=out_s)).numpy()
            t2 = time.perf_counter()
            best_fit, best_score = min(best_fit, t1 - t0), min(best_score, t2 - t1)
        rows[name] = {
            "fit_s": round(best_fit, 3),
            "score_s": round(best_score, 3),
            "auroc": round(auroc(s[:n_clean], s[n_clean:]), 4),
        }
    n_trusted = len(next(iter(trusted.values())))
    print(
        json.dumps(
            {
                "bench": "detect",
                "activations": what,
                "trusted_rows": n_trusted,
                "scored_rows": len(next(iter(scored.values()))),
                "detectors": rows,
                "threads": torch.get_num_threads(),
                "load_avg_1min": round(load, 2),
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "date": datetime.date.today().isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Run one detector on one benchmark: fit on the trusted inputs, score clean and anomalous test inputs in one
batch, and report AUROC and AP (aggregated and per site) with bootstrap intervals.

The clean and anomalous test inputs are scored together, as one batch (detectors that see the untrusted
batch — QUE, spectral — see this mixture). The supervised probe is fitted on ``benchmark.probe_anomalous``,
which is disjoint from the scored anomalies, and its result is flagged as a ceiling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechscope.anomaly.base import collect, make_detector
from mechscope.anomaly.benchmarks import Benchmark
from mechscope.anomaly.metrics import separation


@dataclass
class DetectResult:
    """Scores and their separation for one detector on one benchmark."""

    benchmark: str
    detector: str
    summary: dict[str, Any]
    """JSON-ready: auroc, auroc_ci, ap, ap_ci, per_site (site → AUROC), per_site_ci, best_site, notes."""
    clean_scores: np.ndarray
    """[N_clean] aggregated scores of the clean test inputs."""
    anomalous_scores: np.ndarray
    """[N_anomalous] aggregated scores of the anomalous test inputs."""


def evaluate(
    benchmark: Benchmark,
    detector: str,
    sites: list[str] | None = None,
    n_boot: int = 500,
    seed: int = 0,
    n_trusted: int | None = None,
    **config: Any,
) -> DetectResult:
    """Fit ``detector`` (a registry name, with ``config``) on ``benchmark`` (its first ``n_trusted`` trusted
    inputs, all when None) and measure how it separates."""
    det = make_detector(detector, **config)
    sites = sites or benchmark.sites
    trusted = benchmark.trusted if n_trusted is None else benchmark.trusted[:n_trusted]
    t0 = time.perf_counter()
    det.fit(benchmark.model, trusted, sites, anomalous=benchmark.probe_anomalous if det.supervised else None)
    t1 = time.perf_counter()
    inputs = torch.cat([benchmark.clean, benchmark.anomalous])
    assert det.model is not None  # set by fit
    acts, outs = collect(det.model, inputs, det.sites, det.cfg.batch_size, logits=det.needs_model)
    raw = det.score_activations(acts, outputs=outs)
    scores = det.aggregate(raw).numpy()
    t2 = time.perf_counter()
    n0 = len(benchmark.clean)
    total = separation(scores[:n0], scores[n0:], n_boot, seed)
    per_site = {s: separation(v.numpy()[:n0], v.numpy()[n0:], n_boot, seed) for s, v in raw.items()}
    best = max(per_site, key=lambda s: per_site[s].auroc)
    notes = []
    if det.sees_untrusted:
        notes.append("sees the untrusted batch: scores depend on the other scored inputs")
    if det.supervised:
        notes.append("supervised ceiling: fitted on labelled anomalies (held out from scoring)")
    summary = {
        "benchmark": benchmark.name,
        "detector": detector,
        "auroc": total.auroc,
        "auroc_ci": list(total.auroc_ci),
        "ap": total.ap,
        "ap_ci": list(total.ap_ci),
        "per_site": {s: r.auroc for s, r in per_site.items()},
        "per_site_ci": {s: list(r.auroc_ci) for s, r in per_site.items()},
        "per_site_ap": {s: r.ap for s, r in per_site.items()},
        "best_site": best,
        "best_site_auroc": per_site[best].auroc,
        "sees_untrusted_batch": det.sees_untrusted,
        "supervised_ceiling": det.supervised,
        "notes": notes,
        "n_trusted": len(trusted),
        "n_clean": n0,
        "n_anomalous": len(benchmark.anomalous),
        "fit_s": round(t1 - t0, 3),
        "score_s": round(t2 - t1, 3),
        "benchmark_info": benchmark.info,
    }
    return DetectResult(benchmark.name, detector, summary, scores[:n0], scores[n0:])

"""AUROC and average precision of anomaly scores, with bootstrap intervals.

Labels: 0 = trusted-distribution (clean) input, 1 = anomaly. Scores: higher = more anomalous.

- AUROC = P(s_anomaly > s_clean) + ½ P(s_anomaly = s_clean), computed from average ranks:
  (Σ ranks of anomalies − n₁(n₁ + 1)/2) / (n₀ n₁). Equal to scikit-learn's ``roc_auc_score``.
- AP (average precision) = Σ_k (R_k − R_{k−1}) P_k over thresholds, scikit-learn's ``average_precision_score``.
- Interval: stratified percentile bootstrap: resample the clean and the anomalous scores separately
  with replacement (``n_boot`` times, seeded), recompute, take the 2.5 and 97.5 percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auroc(clean: np.ndarray, anomalous: np.ndarray) -> float:
    """AUROC of anomalous vs clean scores (ties count ½)."""
    n0, n1 = len(clean), len(anomalous)
    ranks = rankdata(np.r_[clean, anomalous])
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def average_precision(clean: np.ndarray, anomalous: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.r_[np.zeros(len(clean)), np.ones(len(anomalous))], np.r_[clean, anomalous]))


@dataclass(frozen=True)
class Separation:
    """AUROC and AP of one set of scores, each with a 95% bootstrap interval."""

    auroc: float
    auroc_ci: tuple[float, float]
    ap: float
    ap_ci: tuple[float, float]


def separation(clean, anomalous, n_boot: int = 500, seed: int = 0) -> Separation:
    """AUROC and AP of anomalous vs clean scores (array-likes of floats) with stratified bootstrap intervals."""
    clean, anomalous = np.asarray(clean, dtype=np.float64), np.asarray(anomalous, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = np.empty((max(n_boot, 0), 2))
    for b in range(len(boots)):
        c = clean[rng.integers(0, len(clean), len(clean))]
        a = anomalous[rng.integers(0, len(anomalous), len(anomalous))]
        boots[b] = auroc(c, a), average_precision(c, a)
    ci = (
        (lambda j: (float(np.percentile(boots[:, j], 2.5)), float(np.percentile(boots[:, j], 97.5))))
        if n_boot
        else (lambda j: (float("nan"),) * 2)
    )
    return Separation(auroc(clean, anomalous), ci(0), average_precision(clean, anomalous), ci(1))

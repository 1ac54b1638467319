"""Figures of a detection result (matplotlib ``Figure`` without pyplot): score histograms of clean vs
anomalous inputs, and ROC curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mechscope.anomaly.evaluate import DetectResult


def histogram(r: DetectResult, ax=None) -> Figure:
    """Overlaid histograms of the aggregated scores of clean and anomalous test inputs (on ``ax`` if given)."""
    fig = Figure(figsize=(4.2, 2.8)) if ax is None else ax.figure
    ax = ax if ax is not None else fig.add_subplot()
    both = np.r_[r.clean_scores, r.anomalous_scores]
    lo, hi = np.percentile(both, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    ax.hist(np.clip(r.clean_scores, lo, hi), bins=bins, alpha=0.6, label="clean", color="tab:blue")
    ax.hist(np.clip(r.anomalous_scores, lo, hi), bins=bins, alpha=0.6, label="anomalous", color="tab:red")
    ax.set_xlabel("score (z on trusted rows, clipped 0.5–99.5%)", fontsize=8)
    ax.set_ylabel("inputs")
    ax.set_title(f"{r.detector} on {r.benchmark}: AUROC {r.summary['auroc']:.3f}", fontsize=8)
    ax.legend(fontsize=8)
    return fig


def roc_points(clean: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) over every threshold."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(clean)), np.ones(len(anomalous))], np.r_[clean, anomalous])
    return fpr, tpr


def roc(results: Sequence[DetectResult]) -> Figure:
    """ROC curves of several results (e.g. every detector on one benchmark)."""
    fig = Figure(figsize=(3.6, 3.4))
    ax = fig.add_subplot()
    for r in results:
        fpr, tpr = roc_points(r.clean_scores, r.anomalous_scores)
        ax.plot(fpr, tpr, label=f"{r.detector} {r.summary['auroc']:.3f}", lw=1.2)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(results[0].benchmark if results else "", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def histogram_grid(results: Sequence[DetectResult], cols: int = 4) -> Figure:
    """One small histogram panel per result (e.g. every detector on one benchmark)."""
    rows = (len(results) + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, r in zip(axes, results):
        histogram(r, ax)
    for ax in axes[len(results) :]:
        ax.set_visible(False)
    return fig

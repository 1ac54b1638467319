"""Figures of the toy experiments (matplotlib ``Figure`` without pyplot, like :mod:`mechscope.report.figures`)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from mechscope.report.figures import save_png


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG, atomically (:func:`mechscope.report.figures.save_png`); returns the path."""
    return save_png(fig, path, dpi)


def columns(W: Tensor, title: str) -> Figure:
    """The rows of W [n, 2] (feature embeddings) as arrows from the origin: the pentagon plot."""
    w = W.detach().numpy()
    fig = Figure(figsize=(3.6, 3.6))
    ax = fig.subplots()
    lim = 1.15 * max(float(np.abs(w).max()), 1e-6)
    for i, (a, b) in enumerate(w[:, :2]):
        ax.annotate("", xy=(a, b), xytext=(0, 0), arrowprops=dict(arrowstyle="->", lw=1.6, color=f"C{i % 10}"))
        ax.text(a * 1.08, b * 1.08, str(i), ha="center", va="center", fontsize=8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="#ccc", lw=0.5)
    ax.axvline(0, color="#ccc", lw=0.5)
    ax.set_title(title, fontsize=9)
    return fig


def sparsity_sweep(points: Sequence[dict[str, Any]], plateaus: Sequence[float]) -> Figure:
    """Two panels against 1/p (log x), dotted lines at the plateau fractions: top, dimensions per feature
    m/‖W‖²_F (line: best instance; crosses: every instance); bottom, each represented feature's Dᵢ (dots;
    represented = row norm above 10% of the largest)."""
    fig = Figure(figsize=(6.4, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    inv = [1 / p["p"] for p in points]
    top.plot(
        inv,
        [p["dims_per_feature"] for p in points],
        color="#c44e52",
        marker="o",
        ms=4,
        label="m / ‖W‖²_F (best instance)",
    )
    if "instance_dims_per_feature" in points[0]:
        xs = [x for x, p in zip(inv, points) for _ in p["instance_dims_per_feature"]]
        top.scatter(
            xs,
            [v for p in points for v in p["instance_dims_per_feature"]],
            marker="x",
            s=14,
            lw=0.8,
            color="#c44e52",
            alpha=0.6,
            label="m / ‖W‖²_F (each instance)",
        )
    for x, p in zip(inv, points):
        D, norms = np.array(p["feature_dimensionality"]), np.array(p["norms"])
        kept = D[norms > 0.1 * max(norms.max(), 1e-12)]
        bottom.scatter(np.full(kept.shape, x), kept, s=8, alpha=0.35, color="#4c72b0", lw=0)
    for ax in (top, bottom):
        for v in plateaus:
            ax.axhline(v, color="#999", ls=":", lw=0.8)
            ax.text(inv[-1] * 1.08, v, str(Fraction(v).limit_denominator(12)), va="center", fontsize=7, color="#666")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.1)
    top.set_ylabel("dimensions per feature")
    bottom.set_ylabel("Dᵢ of each represented feature")
    bottom.set_xlabel("1 / p  (1 / (1 − S), sparser →)")
    top.legend(fontsize=8, loc="upper right")
    top.set_title("sparsity sweep: features pack into regular geometries", fontsize=10)
    fig.tight_layout()
    return fig


def data_dim_curves(panels: dict[str, Sequence[dict[str, Any]]]) -> Figure:
    """One column per model: mean D_t of train and held-out examples against T (top), and Σ_t D_t (bottom),
    which is at most m and reaches m when the examples sit in a regular geometry (memorised); for the
    toy model Σ_i D_i of the features is drawn beside it (features stored: generalising)."""
    fig = Figure(figsize=(4.2 * len(panels), 6.4))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (name, pts) in enumerate(panels.items()):
        T = [p["T"] for p in pts]
        ax = axes[0][col]
        ax.plot(T, [p["train_mean"] for p in pts], marker="o", ms=4, label="train examples")
        ax.plot(T, [p["val_mean"] for p in pts], marker="s", ms=4, label="held-out examples")
        if "feature_dim_mean" in pts[0]:
            ax.plot(T, [p["feature_dim_mean"] for p in pts], ls="--", color="#888", label="mean feature D_i")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("mean D_t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax = axes[1][col]
        ax.plot(T, [p["train_sum"] for p in pts], marker="o", ms=4, label="Σ D_t, train")
        ax.plot(T, [p["val_sum"] for p in pts], marker="s", ms=4, label="Σ D_t, held-out")
        if "feature_dim_sum" in pts[0]:
            ax.plot(T, [p["feature_dim_sum"] for p in pts], ls="--", color="#888", label="Σ D_i, features")
        ax.set_xscale("log")
        ax.set_ylim(0, None)
        ax.set_xlabel("training-set size T")
        ax.set_ylabel("Σ D_t (≤ m)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def bench_bars(rows: Sequence[dict[str, Any]], k: int) -> Figure:
    """Support F1, MMCS and FVU per method (horizontal bars, one panel each)."""
    names = [r["method"] + ("" if r["kind"] == "sae" else " (coder)") for r in rows]
    fig = Figure(figsize=(10.0, 0.28 * len(rows) + 1.4))
    axes = fig.subplots(1, 3, sharey=True)
    y = np.arange(len(rows))[::-1]
    colours = [
        "#4c72b0" if r["kind"] == "sae" else ("#55a868" if "truth" not in r["dictionary"] else "#8c8c8c") for r in rows
    ]
    for ax, key, label in zip(axes, ("f1", "mmcs", "fvu"), ("support F1 (↑)", "MMCS (↑)", "FVU (↓)")):
        vals = [r[key] for r in rows]
        ax.barh(y, vals, color=colours)
        for yi, v in zip(y, vals):
            ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(0, max(1.0, 1.2 * max(vals)))
    axes[0].set_yticks(y, names, fontsize=8)
    fig.suptitle(
        f"ground-truth benchmark at L0 ≤ {k} (blue: SAEs; green: coders on the TopK dictionary; grey: on the true directions)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def dict_size(points: Sequence[dict[str, Any]]) -> Figure:
    """MMCS and the fraction matched above 0.9 against the dictionary size."""
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.subplots()
    n = [p["latents"] for p in points]
    ax.plot(n, [p["mmcs"] for p in points], marker="o", label="MMCS")
    ax.plot(n, [p["matched_0.9"] for p in points], marker="s", label="matched one-to-one > 0.9")
    ax.plot(n, [p["f1"] for p in points], marker="^", label="support F1")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latents")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("recovery against dictionary size", fontsize=10)
    fig.tight_layout()
    return fig


def convergence(curve: Sequence[dict[str, Any]]) -> Figure:
    """MMCS of every SAE against training rows seen (the benchmark's convergence curve)."""
    fig = Figure(figsize=(5.6, 3.6))
    ax = fig.subplots()
    rows = [p["rows"] for p in curve]
    for i, name in enumerate(curve[0]["mmcs"]):
        ax.plot(rows, [p["mmcs"][name] for p in curve], marker="o", ms=3, color=f"C{i % 10}", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training rows seen")
    ax.set_ylabel("MMCS against the true features")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("convergence: is the benchmark trained long enough?", fontsize=10)
    fig.tight_layout()
    return fig

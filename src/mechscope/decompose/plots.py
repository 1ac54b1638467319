"""Figures of a decomposition: the co-activation matrix of alive subcomponents and the losses over training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor


def coactivation(matrix: Tensor, labels: Sequence[str]) -> Figure:
    """Heatmap of P(column active | row active) for alive subcomponents (labels ``target/c``)."""
    K = len(labels)
    size = min(12.0, 2.5 + 0.22 * K)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(matrix.cpu().numpy() if K else np.zeros((1, 1)), vmin=0, vmax=1, cmap="viridis")
    if K <= 80:
        ax.set_xticks(range(K), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(K), labels, fontsize=6)
    ax.set_xlabel("subcomponent j")
    ax.set_ylabel("subcomponent i")
    ax.set_title("co-activation P(g_j > t | g_i > t)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def losses(log: Sequence[dict[str, float]]) -> Figure:
    """Each loss term against the step (log scale)."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.subplots()
    steps = [r["step"] for r in log]
    for key in ("faithfulness", "stochastic_recon", "stochastic_recon_layerwise", "importance_minimality", "loss"):
        vals = [max(r[key], 1e-12) for r in log]
        ax.plot(steps, vals, label=key, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title("SPD losses", fontsize=9)
    fig.tight_layout()
    return fig


def importance_matrix(g: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str) -> Figure:
    """Causal importances [R, K] of chosen inputs (rows) for alive subcomponents (columns)."""
    R, K = g.shape
    fig = Figure(figsize=(min(14.0, 2.5 + 0.22 * K), min(8.0, 1.5 + 0.25 * R)))
    ax = fig.subplots()
    im = ax.imshow(g.cpu().numpy(), vmin=0, vmax=1, cmap="Blues", aspect="auto")
    if K <= 80:
        ax.set_xticks(range(K), col_labels, rotation=90, fontsize=6)
    if R <= 40:
        ax.set_yticks(range(R), row_labels, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig

"""The report's plots, each a matplotlib ``Figure`` made without pyplot (Agg canvas, no global state),
and the one helper that turns a figure, PNG bytes or a PNG file into an embeddable data URI."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from mechscope.evals.metrics import percent
from mechscope.evals.splice import SpliceResult

FigureLike = Figure | bytes | str | Path
"""A matplotlib Figure, PNG bytes, or the path of a PNG file (e.g. another module's saved plot)."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG file starts with."""


def is_png(path: str | Path) -> bool:
    """Whether the file at ``path`` starts with the PNG signature (a figure the report can embed as it is)."""
    with open(path, "rb") as f:
        return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def png_bytes(fig: FigureLike, dpi: int = 110) -> bytes:
    """PNG bytes of a figure-like."""
    if isinstance(fig, Figure):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return buf.getvalue()
    if isinstance(fig, (bytes, bytearray)):
        return bytes(fig)
    return Path(fig).read_bytes()


def save_png(fig: FigureLike, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure-like as a PNG file, atomically (:mod:`mechscope.atomic`: a failed write is one line
    naming ``path``); returns the path. Every plot mechscope saves goes through here, never ``savefig(path)``."""
    from mechscope.atomic import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(fig, dpi))
    return Path(path)


def data_uri(fig: FigureLike, dpi: int = 110) -> str:
    """``data:image/png;base64,…`` of a figure-like, for an ``<img src>`` that needs no network."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def fvu_vs_l0(points: Sequence[dict[str, Any]]) -> Figure:
    """FVU against L0 (log x when the L0s span a decade). Each point: ``{"label", "l0", "fvu"}``; points sharing a label are one curve.
    The SAE of this report is one point; a frontier from another module adds its curves."""
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    labels = list(dict.fromkeys(p["label"] for p in points))
    for lab in labels:
        pts = sorted(
            (p["l0"], p["fvu"]) for p in points if p["label"] == lab and p.get("l0") and p.get("fvu") is not None
        )
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", ms=5, lw=1.2 if len(pts) > 1 else 0, label=lab)
    l0s = [p["l0"] for p in points if p.get("l0")]
    if l0s and max(l0s) > 10 * min(l0s):  # log only when the L0s span a decade
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # "16", "64" read better than 1.6×10¹
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L0 (active latents per row)")
    ax.set_ylabel("FVU (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("reconstruction against sparsity", fontsize=10)
    fig.tight_layout()
    return fig


def losses(result: SpliceResult) -> Figure:
    """Horizontal bars of the clean, spliced, mean- and zero-ablated losses, with the rock as a line."""
    names = ["clean", "spliced", "mean-ablated", "zero-ablated"]
    vals = [result.clean_loss, result.spliced_loss, result.mean_loss, result.zero_loss]
    colours = ["#4c72b0", "#dd8452" if not result.worse_than_rock else "#c44e52", "#8c8c8c", "#b0b0b0"]
    fig = Figure(figsize=(5.6, 2.8))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, vals, color=colours)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=8)
    if math.isfinite(result.rock_loss):
        ax.axvline(result.rock_loss, color="#222222", ls="--", lw=1.2, label=f"rock {result.rock_loss:.3f}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_yticks(y, names)
    ax.set_xlabel(f"loss (nats per {'token' if result.task == 'lm' else 'example'})")
    finite = [v for v in vals + [result.rock_loss] if math.isfinite(v)]
    ax.set_xlim(0, 1.15 * max(finite))
    ax.set_title(
        f"loss recovered: {percent(result.recovered_vs_zero)} vs zero, {percent(result.recovered_vs_mean)} vs mean",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def firing_density(density: np.ndarray) -> Figure:
    """Histogram of log10 firing density over latents; dead latents (never fired) counted in the title."""
    d = np.asarray(density, dtype=np.float64)
    alive = d[d > 0]
    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    if alive.size:
        ax.hist(np.log10(alive), bins=40, color="#4c72b0")
    ax.axvline(-1, color="#c44e52", ls=":", lw=1)  # the dense threshold, 10% of rows
    ax.set_xlabel("log10 firing density (fraction of rows)")
    ax.set_ylabel("latents")
    ax.set_title(f"{d.size} latents: {int((d == 0).sum())} dead, {int((d > 0.1).sum())} dense (> 10%)", fontsize=10)
    fig.tight_layout()
    return fig

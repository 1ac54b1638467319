"""λ̂ along training: one estimate per checkpoint, all with the same sampler setting.

Works on a generic series: ``checkpoints`` is a list of (training step, a function that returns the
model at that step), with one loss function and one data set (the training data the λ̂ is taken on),
and optionally held-out data whose loss is recorded beside λ̂.

The sampler setting (ε, γ) is chosen once, by :func:`mechscope.slt.calibrate.calibrate` at the **last**
checkpoint (or given), and reused at every checkpoint: λ̂ values taken with different ε or γ are not
comparable, and the trained end point is where a stable setting matters most. nβ is the same too
(n / ln n of the one data set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.slt.calibrate import CalibrationConfig, CalibrationResult, calibrate
from mechscope.slt.estimator import LLCConfig, LLCResult, LossFn, estimate_llc, full_loss


@dataclass(frozen=True)
class CheckpointPoint:
    step: int
    result: LLCResult
    train_loss: float
    val_loss: float | None
    n_params: int
    train_acc: float | None = None
    val_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "llc_hat": self.result.llc_hat,
            "llc_se": self.result.llc_se,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "train_acc": self.train_acc,
            "val_acc": self.val_acc,
            "n_params": self.n_params,
            "warnings": list(self.result.warnings),
        }


def every_kth(
    checkpoints: Sequence[tuple[int, Callable[[], nn.Module]]], k: int
) -> list[tuple[int, Callable[[], nn.Module]]]:
    """Every ``k``-th checkpoint in step order, the first and the last always (``--checkpoint-stride K``)."""
    if k < 1:
        raise UsageError(f"every k-th checkpoint needs `k` ≥ 1, got {k}")
    ordered = sorted(checkpoints, key=lambda c: c[0])
    return ordered[::k] + ([ordered[-1]] if (len(ordered) - 1) % k else [])


def llc_along(
    checkpoints: Sequence[tuple[int, Callable[[], nn.Module]]],
    loss_fn: LossFn,
    data: Sequence[Tensor],
    cfg: LLCConfig = LLCConfig(),
    *,
    calibration: CalibrationConfig | None = CalibrationConfig(),
    val_data: Sequence[Tensor] | None = None,
    progress: bool = True,
    accuracy: Callable[[nn.Module, Any], Tensor] | None = None,
    on_point: Callable[[CheckpointPoint], None] | None = None,
    world: World | None = None,
) -> tuple[list[CheckpointPoint], CalibrationResult | None]:
    """λ̂ at every checkpoint (in step order). ``calibration=None`` uses ``cfg``'s ε and γ as given.
    ``accuracy(model, batch)`` (optional) is recorded on the training and held-out data beside the losses.
    ``world``: the torchrun ranks that share each estimate's chains (:func:`estimate_llc`)."""
    if not checkpoints:
        raise UsageError("there are no checkpoints to estimate λ̂ on: train with checkpointing first")
    ordered = sorted(checkpoints, key=lambda c: c[0])
    cal = None
    if calibration is not None:
        cal = calibrate(ordered[-1][1](), loss_fn, data, cfg, calibration, progress=progress)
        cfg = cal.final_config(cfg)
    points = []
    for step, load in ordered:
        model = load()
        res = estimate_llc(model, loss_fn, data, cfg, progress=progress, world=world)
        val = full_loss(model, loss_fn, val_data) if val_data is not None else None
        acc = (
            (None, None)
            if accuracy is None
            else (full_loss(model, accuracy, data), None if val_data is None else full_loss(model, accuracy, val_data))
        )
        pt = CheckpointPoint(
            step, res, res.init_loss, val, sum(p.numel() for p in model.parameters() if p.requires_grad), *acc
        )
        points.append(pt)
        if on_point is not None:
            on_point(pt)
    return points, cal


def checkpoints_figure(points: Sequence[CheckpointPoint], title: str = "λ̂ along training") -> Figure:
    """Top: λ̂ ± 2 SE against the training step. Bottom: training and held-out loss (log, left axis) and,
    when recorded, training and held-out accuracy (right axis)."""
    fig = Figure(figsize=(6.4, 5.0))
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    steps = np.array([p.step for p in points], dtype=float)
    llc = np.array([p.result.llc_hat for p in points])
    se = np.nan_to_num(np.array([p.result.llc_se for p in points]))
    ax.errorbar(steps, llc, yerr=2 * se, fmt="o-", color="C0", ms=4, capsize=2, label="λ̂ (± 2 SE)")
    ax.set_ylabel("λ̂")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    ax2.plot(steps, [p.train_loss for p in points], "s--", color="C1", ms=3, lw=1, label="train loss")
    if all(p.val_loss is not None for p in points):
        ax2.plot(steps, [p.val_loss for p in points], "^--", color="C2", ms=3, lw=1, label="held-out loss")
    ax2.set_yscale("log")
    ax2.set_ylabel("loss")
    ax2.set_xlabel("training step")
    handles, labels = ax2.get_legend_handles_labels()
    if all(p.train_acc is not None for p in points):
        ax3 = ax2.twinx()
        ax3.plot(steps, [p.train_acc for p in points], "-", color="C1", lw=1.5, alpha=0.6, label="train accuracy")
        if all(p.val_acc is not None for p in points):
            ax3.plot(steps, [p.val_acc for p in points], "-", color="C2", lw=1.5, alpha=0.6, label="held-out accuracy")
        ax3.set_ylim(-0.05, 1.05)
        ax3.set_ylabel("accuracy")
        h3, l3 = ax3.get_legend_handles_labels()
        handles, labels = handles + h3, labels + l3
    ax2.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout()
    return fig


def trace_figure(result: LLCResult, title: str = "SGLD chains") -> Figure:
    """Per-chain loss traces (L_b(w_t) − L_n(w*), scaled by nβ) and the running λ̂ of each chain."""
    fig = Figure(figsize=(6.4, 4.6))
    ax, ax2 = fig.subplots(2, 1, sharex=True)
    draws = np.arange(result.loss_traces.shape[1])
    for c, t in enumerate(result.loss_traces):
        ax.plot(draws, result.nbeta * (t - result.init_loss), lw=0.6, alpha=0.8, label=f"chain {c}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("nβ (L_b(w_t) − L_n(w*))")
    for t in result.llc_trace:
        ax2.plot(draws, t, lw=1)
    ax2.axhline(result.llc_hat, color="k", ls="--", lw=0.8, label=f"λ̂ = {result.llc_hat:.3g} ± {result.llc_se:.2g}")
    ax2.set_ylabel("running λ̂ per chain")
    ax2.set_xlabel("draw")
    ax2.legend(fontsize=8)
    if len(result.loss_traces) <= 8:
        ax.legend(fontsize=7, ncol=4)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

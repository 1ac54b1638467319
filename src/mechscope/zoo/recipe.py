"""The training half of every zoo recipe, and the loop that follows it.

A recipe is a frozen dataclass: these training fields plus the model's own data and architecture fields
(see :mod:`mechscope.zoo.parens`, :mod:`~mechscope.zoo.modadd`, :mod:`~mechscope.zoo.induction`). Training
is deterministic for a recipe on one thread: the initial weights come from ``torch.manual_seed(seed)``
and the batches from a generator seeded with ``seed + 1``.

Optimiser: AdamW(lr, betas = (0.9, beta2), weight_decay), learning rate warmed up linearly over ``warmup``
steps, then constant, or (``decay``) multiplied by (steps − s) / (steps − warmup) at step s
(:mod:`mechscope.training`'s ``warmup`` and ``warmup_linear`` schedules). Loss: the task's mean per-example
loss over a batch (the full training set when ``batch_size`` is 0).

Checkpoints: ``checkpoints`` steps spaced evenly in log(step) between 1 and ``steps`` (rounded, made
distinct), always including the last; the learning-coefficient issue reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.task import Task
from mechscope.training import OptimConfig, fit


@dataclass(frozen=True)
class TrainRecipe:
    """Training fields shared by every zoo recipe."""

    seed: int = 0
    """Seeds the data, the initial weights (seed) and the batch order (seed + 1)."""
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 128
    """Examples per step, drawn with replacement from the training set; 0 means full batch."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""
    beta2: float = 0.98
    """AdamW's second-moment decay (beta1 is 0.9)."""
    warmup: int = 50
    """Steps of linear learning-rate warm-up."""
    decay: bool = False
    """After warm-up, decay the learning rate linearly to 0 at the last step (else keep it constant)."""
    checkpoints: int = 0
    """Checkpoints kept along training (log-spaced, plus the end); 0 keeps only the final weights."""

    def __post_init__(self) -> None:
        for name in ("steps",):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("batch_size", "warmup", "checkpoints", "seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.beta2 < 1:
            raise UsageError(
                f"need lr > 0, weight_decay ≥ 0 and 0 ≤ beta2 < 1; got {self.lr}, {self.weight_decay}, {self.beta2}"
            )

    def extra_metrics(self, model: nn.Module, task: Task) -> dict[str, float]:
        """Metrics a recipe reports beside loss and accuracy (none by default)."""
        return {}


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` distinct steps in [1, steps], evenly spaced in log(step), always ending at ``steps``."""
    if n <= 0:
        return []
    out: set[int] = {steps}
    k = n
    while len(out) < min(n, steps):
        out = {steps} | {int(round(math.exp(math.log(steps) * i / max(k - 1, 1)))) for i in range(k)}
        k += 1
    return sorted(out)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, batch_size: int = 4096) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on the task's ``train`` or ``val`` split."""
    x, y = (task.train_inputs, task.train_targets) if split == "train" else (task.val_inputs, task.val_targets)
    loss = acc = 0.0
    for lo in range(0, x.shape[0], batch_size):
        logits = model(x[lo : lo + batch_size])
        loss += float(task.loss(logits, y[lo : lo + batch_size]).double().sum())
        acc += float(task.accuracy(logits, y[lo : lo + batch_size]).double().sum())
    return {f"{split}_loss": loss / x.shape[0], f"{split}_accuracy": acc / x.shape[0]}


def train(
    model: nn.Module,
    task: Task,
    r: TrainRecipe,
    on_checkpoint: Callable[[int, nn.Module], None],
    progress: bool = True,
    desc: str = "zoo",
) -> list[dict[str, float]]:
    """Train ``model`` in place; call ``on_checkpoint(step, model)`` at each checkpoint step and
    return the history (step, train and val loss/accuracy) measured there."""
    gen = torch.Generator().manual_seed(r.seed + 1)
    keep = set(checkpoint_steps(r.steps, r.checkpoints)) | {r.steps}
    n = task.train_inputs.shape[0]

    def batch(step: int) -> tuple[Tensor, Tensor]:
        if r.batch_size == 0:
            return task.train_inputs, task.train_targets
        idx = torch.randint(0, n, (r.batch_size,), generator=gen)
        return task.train_inputs[idx], task.train_targets[idx]

    def loss(xy: tuple[Tensor, Tensor]) -> Tensor:
        model.train()
        return task.loss(model(xy[0]), xy[1]).mean()

    def on_step(s: int, _: Tensor) -> dict[str, float] | None:
        if s + 1 not in keep:
            return None
        model.eval()
        row = {"step": s + 1, **evaluate(model, task, "train"), **evaluate(model, task, "val")}
        on_checkpoint(s + 1, model)
        return row

    optim = OptimConfig(
        "adamw",
        lr=r.lr,
        betas=(0.9, r.beta2),
        weight_decay=r.weight_decay,
        schedule="warmup_linear" if r.decay else "warmup",
        warmup=r.warmup,
    )
    history = fit(model, loss, batch, optim, steps=r.steps, on_step=on_step, progress=desc if progress else None).log
    model.eval()
    return history

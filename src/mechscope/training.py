"""One training loop: parameters, a loss, batches, one optimiser config with its schedule, clipping,
exact resume from an atomic checkpoint, a progress bar. Recipes (zoo, toy, anomaly, decompose, slt) are
short calls to :func:`fit`; the SAE trainer uses the same pieces (:func:`build_optimizer`, :func:`lr_at`,
:func:`clip_gradients`, :mod:`mechscope.checkpoint`) around what only it needs.

One step s (0-based) of :func:`fit`, in this order, which every ported recipe had before:

    lr_s = SCHEDULES[optim.schedule](optim, s, steps, lr_{s−1})    (lr_{−1} = optim.lr), set on every group
    out = loss_fn(batches(s));  objective = (out["loss"] if a mapping else out).sum()
    zero_grad(set_to_none) → objective.backward() → clip (global norm, when given) → optimiser step
    on_step(s, out)

Schedules (s = step, T = total steps, w = ``warmup``, lr = ``OptimConfig.lr``); the three cosine curves are the
same curve rounded differently, kept apart so that weights trained before stay bit-identical:

    constant            lr
    cosine              lr · 0.5 · (1 + cos(π·s / T))                   (evaluated left to right, as written)
    cosine_fraction     lr · (0.5 · (1 + cos(π·t))),  t = s / max(1, T)
    annealing           lr_s = lr_{s−1} · (1 + cos(π·s/T)) / (1 + cos(π·(s−1)/T)), lr_0 = lr
                        (torch's CosineAnnealingLR to 0 over T, stepped once per step: its recursive form)
    warmup              lr · (min(1, (s+1)/max(w, 1)) · 1)
    warmup_linear       lr · (min(1, (s+1)/max(w, 1)) · d),  d = max(0, (T − s) / max(T − w, 1)) once s ≥ w, else 1
    warmup_late_linear  lr · u · (1 − f),  u = min(1, (s+1)/w) (1 when w = 0), f = min(1, (s − a)/(T − a)), a = decay_start·T
    warmup_late_cosine  lr · u · 0.5 · (1 + cos(π f));  both are lr · u before a (and when T ≤ a)

Exact resume: with ``checkpoint``, :func:`fit` writes (atomically, safetensors, digest-checked: :mod:`mechscope.checkpoint`)
the parameters (and a module's buffers), the optimiser state, the torch RNG state, the states of ``generators``,
the step, the last lr and the log every ``every`` steps and once more at the end, and resumes from that file when it exists.
``batches(s)`` must give the batch of step s: from s alone, or drawn from ``generators`` (whose states are saved).
State a caller keeps in closures (``on_step`` accumulators) is not saved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope import checkpoint as ckpt, faults
from mechscope.config import to_dict
from mechscope.errors import UsageError

OPTIMIZERS: dict[str, type[torch.optim.Adam]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
"""OptimConfig.optimizer → optimiser class (Adam's weight decay is L2 in the gradient, AdamW's is decoupled)."""


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its learning-rate schedule."""

    optimizer: str = "adam"
    """Name in :data:`OPTIMIZERS`."""
    lr: float = 1e-3
    """Peak learning rate, > 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """First- and second-moment decays, each in [0, 1)."""
    weight_decay: float = 0.0
    """Weight decay, ≥ 0 (decoupled for adamw)."""
    schedule: str = "constant"
    """Name in :data:`SCHEDULES` (formulas in the module docstring)."""
    warmup: int = 0
    """Steps of linear warm-up (warmup* schedules), ≥ 0."""
    decay_start: float = 0.0
    """Fraction of the steps after which warmup_late_* schedules decay, in [0, 1]."""
    fused: bool | None = None
    """torch's fused implementation (one pass per tensor); None lets torch choose."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer {self.optimizer!r}: choose one of {sorted(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule {self.schedule!r}: choose one of {sorted(SCHEDULES)}")
        if not (0 < self.lr < math.inf) or self.weight_decay < 0 or self.warmup < 0 or not 0 <= self.decay_start <= 1:
            raise UsageError(
                f"need lr > 0, weight_decay ≥ 0, warmup ≥ 0 and decay_start in [0, 1]; got {self.lr}, "
                f"{self.weight_decay}, {self.warmup}, {self.decay_start}"
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise UsageError(f"betas {self.betas}: each must be in [0, 1)")


def _up(o: OptimConfig, s: int) -> float:
    return min(1.0, (s + 1) / max(o.warmup, 1))


def _late(o: OptimConfig, s: int, total: int, shape: Callable[[float], float]) -> float:
    warm = min(1.0, (s + 1) / o.warmup) if o.warmup else 1.0
    start = o.decay_start * total
    if s < start or total <= start:
        return o.lr * warm
    return o.lr * warm * shape(min(1.0, (s - start) / (total - start)))


def _annealing(o: OptimConfig, s: int, total: int, prev: float) -> float:
    if s == 0:
        return o.lr
    return (1 + math.cos(math.pi * s / total)) / (1 + math.cos(math.pi * (s - 1) / total)) * (prev - 0.0) + 0.0


Schedule = Callable[[OptimConfig, int, int, float], float]
SCHEDULES: dict[str, Schedule] = {
    "constant": lambda o, s, T, prev: o.lr,
    "cosine": lambda o, s, T, prev: o.lr * 0.5 * (1 + math.cos(math.pi * s / T)),
    "cosine_fraction": lambda o, s, T, prev: o.lr * (0.5 * (1 + math.cos(math.pi * (s / max(1, T))))),
    "annealing": _annealing,
    "warmup": lambda o, s, T, prev: o.lr * (_up(o, s) * 1.0),
    "warmup_linear": lambda o, s, T, prev: (
        o.lr * (_up(o, s) * (max(0.0, (T - s) / max(T - o.warmup, 1)) if s >= o.warmup else 1.0))
    ),
    "warmup_late_linear": lambda o, s, T, prev: _late(o, s, T, lambda f: 1 - f),
    "warmup_late_cosine": lambda o, s, T, prev: _late(o, s, T, lambda f: 0.5 * (1 + math.cos(math.pi * f))),
}
"""OptimConfig.schedule → lr of step s of T given the previous step's lr (formulas in the module docstring)."""


def lr_at(o: OptimConfig, step: int, total: int) -> float:
    """The learning rate of ``step`` of ``total`` (a recursive schedule is run from step 0)."""
    lr = o.lr
    for s in range(step + 1) if o.schedule == "annealing" else (step,):
        lr = SCHEDULES[o.schedule](o, s, total, lr)
    return lr


def build_optimizer(params: Iterable[Tensor], o: OptimConfig) -> torch.optim.Optimizer:
    """``OPTIMIZERS[o.optimizer](params, lr, betas, weight_decay[, fused])``."""
    extra = {} if o.fused is None else {"fused": o.fused}
    return OPTIMIZERS[o.optimizer](params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **extra)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[Tensor], max_norm: float | None) -> None:
    """Scale the gradients so that their global L2 norm is at most ``max_norm`` (None or 0: leave them)."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


@dataclass(frozen=True)
class Checkpoint:
    """Where and how often :func:`fit` checkpoints, and what a resumed file must agree on."""

    path: Path
    """The checkpoint file (safetensors); resumed from when it exists."""
    every: int = 0
    """Steps between checkpoints (one is always written at the end); 0 writes only the last."""
    identity: Mapping[str, Any] = field(default_factory=dict)
    """JSON the file records and a resume must match (the recipe's config), besides the OptimConfig and steps."""
    what: str = "run"
    """What is trained, as the error refusing another run's checkpoint names it ("written for another decomposition")."""


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    steps: int
    """Steps taken in all (a resumed run counts those before the checkpoint)."""
    loss: float
    """The objective of the last step taken by this call (nan when it took none)."""
    log: list[dict[str, Any]]
    """The rows ``on_step`` returned, of the whole run (a resumed run's earlier rows come from the checkpoint)."""


def _named(params: nn.Module | Sequence[Tensor]) -> dict[str, Tensor]:
    return dict(params.state_dict()) if isinstance(params, nn.Module) else {str(i): p for i, p in enumerate(params)}


def _save(c: Checkpoint, params, opt, generators, step: int, lr: float, log: list, identity: dict) -> None:
    tensors = {f"p.{k}": v for k, v in _named(params).items()}
    tensors.update(ckpt.flatten_optimizer("o.", opt))
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"rng.{i}": g.get_state() for i, g in enumerate(generators)})
    ckpt.write_atomic(c.path, tensors, {"kind": "fit", "step": step, "lr": lr, "log": log, "identity": identity})


def _resume(c: Checkpoint, params, opt, generators, identity: dict) -> tuple[int, float, list]:
    tensors, meta = ckpt.read(c.path)
    if meta.get("kind") != "fit" or meta.get("identity") != identity:
        raise ckpt.CheckpointError(
            f"{c.path}: written for another {c.what} (its config, optimiser or steps differ); "
            "delete it to start afresh, or use another path"
        )
    with torch.no_grad():
        for k, v in _named(params).items():
            v.copy_(tensors[f"p.{k}"])
    ckpt.restore_optimizer("o.", opt, tensors)
    torch.set_rng_state(tensors["rng.torch"])
    for i, g in enumerate(generators):
        g.set_state(tensors[f"rng.{i}"])
    return int(meta["step"]), float(meta["lr"]), list(meta["log"])


def fit(
    params: nn.Module | Sequence[Tensor],
    loss_fn: Callable[[Any], Tensor | Mapping[str, Tensor]],
    batches: Callable[[int], Any],
    optim: OptimConfig,
    *,
    steps: int,
    clip: float | None = None,
    checkpoint: Checkpoint | None = None,
    progress: str | None = None,
    on_step: Callable[[int, Any], dict[str, Any] | None] | None = None,
    generators: Sequence[torch.Generator] = (),
) -> FitResult:
    """Train ``params`` (a module's parameters, or a list of tensors) for ``steps`` steps, one step as in the
    module docstring. ``progress``: the bar's description (None: no bar). ``on_step(s, out)`` may return a row
    for the log (its float entries are shown beside the bar)."""
    if steps < 0:
        raise UsageError(f"steps must be ≥ 0, got {steps}")
    tensors = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    opt = build_optimizer(tensors, optim)
    # as JSON reads it back (tuples become lists), so that a resumed file compares equal
    identity = json.loads(
        json.dumps({"optim": to_dict(optim), "steps": steps, **(dict(checkpoint.identity) if checkpoint else {})})
    )
    start, lr = 0, optim.lr
    log: list[dict[str, Any]] = []
    if checkpoint is not None and checkpoint.path.is_file():
        start, lr, log = _resume(checkpoint, params, opt, generators, identity)
    objective = None
    bar = tqdm(range(start, steps), disable=progress is None, desc=progress, unit="step", initial=start, total=steps)
    for step in bar:
        lr = SCHEDULES[optim.schedule](optim, step, steps, lr)
        set_lr(opt, lr)
        out = loss_fn(batches(step))
        objective = (out["loss"] if isinstance(out, Mapping) else out).sum()
        opt.zero_grad(set_to_none=True)
        objective.backward()
        clip_gradients(tensors, clip)
        opt.step()
        row = on_step(step, out) if on_step is not None else None
        if row is not None:
            log.append(row)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float)}, refresh=False)
        faults.point("training.step")  # tests kill the process here (mechscope.faults)
        if checkpoint is not None and checkpoint.every and (step + 1) % checkpoint.every == 0:
            _save(checkpoint, params, opt, generators, step + 1, lr, log, identity)
    if checkpoint is not None:
        _save(checkpoint, params, opt, generators, steps, lr, log, identity)
    return FitResult(steps, math.nan if objective is None else float(objective.detach()), log)

"""Training an :class:`~mechscope.decompose.spd.SPD`: a faithfulness warm-up, then the full loss with Adam and a
cosine schedule; resumable from one atomic safetensors checkpoint (verified digests, no pickle).

``batch(step) -> Tensor`` must be deterministic in ``step`` so that a resumed run sees exactly the rows it
would have seen; masks come from a generator seeded by (seed, step) for the same reason. The loss log
(``spd-log.jsonl``) is appended row by row as training goes and cut back to the checkpoint's step on resume
(:mod:`mechscope.jsonout`), so a killed and resumed run ends with the log of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mechscope import faults
from mechscope.checkpoint import read  # noqa: F401  (tests read the checkpoint through this module)
from mechscope.config import to_dict
from mechscope.decompose.spd import SPD
from mechscope.errors import UsageError
from mechscope.jsonout import append_row, cut_rows
from mechscope.training import Checkpoint, OptimConfig, fit

CHECKPOINT = "spd-checkpoint.safetensors"
LOG = "spd-log.jsonl"

CLOSE = 0.01
"""Relative tolerance of :func:`close_restarts`: another restart's held-out loss within 1% of the kept one's.
Measured on TMS 5-2 (docs/decompose.md): restarts that found the same (true) pieces differ by 0.02–0.54%
(0.05274 vs 0.05275 on 40 batches; 0.05293 vs 0.05322 on 16), a start that merged mechanisms is 6–8% above."""

# SPDConfig.lr_schedule → the :mod:`mechscope.training` schedule: lr · f(t) at training fraction t = step / steps.
LR_SCHEDULES: dict[str, str] = {"cosine": "cosine_fraction", "constant": "constant"}


def _warmup(spd: SPD) -> None:
    """Fit Σ_c U_c V_cᵀ to W alone (no data), as the paper's faithfulness warm-up."""
    params = [p for n, p in spd.named_parameters() if n.rsplit(".", 1)[-1] in ("U", "V")]
    fit(
        params,
        lambda _: spd.faithfulness(),
        lambda step: None,
        OptimConfig("adamw", lr=spd.cfg.warmup_lr),
        steps=spd.cfg.warmup_steps,
    )


def train_spd(
    spd: SPD,
    batch: Callable[[int], torch.Tensor],
    out: Path | None = None,
    progress: bool = False,
    log_every: int = 100,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``spd`` in place; with ``out``, checkpoint to ``out/spd-checkpoint.safetensors`` (resuming from it
    when present) and append each logged row to ``out/spd-log.jsonl`` as it is logged. Returns the logged rows of
    the whole run (a resumed run's earlier rows come from the checkpoint); ``on_log(row)`` is called with each new
    row (e.g. to evaluate the decomposition along the way)."""
    cfg = spd.cfg
    ckpt = (
        None
        if out is None
        else Checkpoint(
            out / CHECKPOINT,
            cfg.checkpoint_every,
            what="decomposition",
            identity={"config": to_dict(cfg), "targets": spd.names},
        )
    )
    if ckpt is None or not ckpt.path.is_file():
        _warmup(spd)
    first = True

    def on_step(step: int, parts: dict[str, torch.Tensor]) -> dict[str, float] | None:
        nonlocal first
        if first and out is not None:
            # Rows of the steps before the checkpoint (row "step" s is logged after step s, which the checkpoint at
            # start = s + 1 includes) stay; the steps from start on are replayed and logged again.
            cut_rows(out / LOG, step - 1)
        first, row = False, None
        if step % log_every == 0 or step == cfg.steps - 1:
            row = {"step": step, **{k: float(v.detach()) for k, v in parts.items()}}
            if out is not None:
                append_row(out / LOG, row)
            if on_log is not None:
                on_log(row)
        faults.point("decompose.step")  # tests kill the process here (mechscope.faults)
        return row

    # masks come from a generator seeded by (seed, step), so a resumed run draws the same ones
    return fit(
        spd,
        lambda x_step: spd.losses(x_step[0], torch.Generator().manual_seed(cfg.seed * 1_000_003 + x_step[1])),
        lambda step: (batch(step), step),
        OptimConfig("adam", lr=cfg.lr, schedule=LR_SCHEDULES[cfg.lr_schedule]),
        steps=cfg.steps,
        checkpoint=ckpt,
        on_step=on_step,
        progress="spd" if progress else None,
    ).log


@torch.no_grad()
def held_out_loss(spd: SPD, batch: Callable[[int], torch.Tensor], n_batches: int = 16) -> float:
    """Mean total SPD loss on ``n_batches`` rows the training never sees (batch numbers 10⁷ + k, masks seeded k)."""
    return (
        sum(
            float(spd.losses(batch(10_000_000 + k), torch.Generator().manual_seed(k))["loss"]) for k in range(n_batches)
        )
        / n_batches
    )


def train_best_of(
    make_spd: Callable[[int], SPD],
    batch: Callable[[int], torch.Tensor],
    restarts: int,
    seed: int = 0,
    n_batches: int = 16,
    out: Path | None = None,
    progress: bool = False,
) -> tuple[SPD, list[float], list[dict[str, float]]]:
    """Train ``restarts`` decompositions, ``make_spd(seed + k)`` for k = 0 … restarts − 1, and keep the one whose
    total SPD loss on held-out rows is lowest; returns it, every restart's held-out loss and its loss log.
    With ``out``, restart k checkpoints (and resumes) in ``out/restart-k`` (in ``out`` itself when restarts = 1).

    Departure from the paper (one run of 40,000 × 4,096 at lr 1e-3): at our budget (2,000 × 256, lr 3e-2) some
    random starts end in a worse local minimum. Measured on TMS 5-2 (docs/decompose.md): seeds 0 and 1 merge
    linear2's mechanisms (held-out loss 0.0570, MMCS 0.854), seed 2 finds the true pieces (0.0527, MMCS 0.994),
    and the true pieces used as the start stay put at the same 0.0527. The selection uses only SPD's own loss,
    never the known answer."""
    if restarts < 1:
        raise UsageError(f"restarts {restarts}: need at least one run to keep")
    best, best_log, losses = None, [], []
    for k in range(restarts):
        spd = make_spd(seed + k)
        where = None if out is None else (out if restarts == 1 else out / f"restart-{k}")
        log = train_spd(spd, batch, out=where, progress=progress)
        losses.append(held_out_loss(spd, batch, n_batches))
        if best is None or losses[-1] < min(losses[:-1]):
            best, best_log = spd, log
    assert best is not None  # restarts ≥ 1
    return best, losses, best_log


def close_restarts(losses: Sequence[float], rel: float = CLOSE) -> list[int]:
    """The restarts k, other than the kept one (the lowest held-out loss L*), with L_k − L* ≤ rel · |L*|: those
    the selection by held-out loss does not clearly rank below the kept one (they may hold a different
    decomposition of about the same quality). Empty when the kept restart is ahead of every other by more."""
    if not losses:
        return []
    best = min(range(len(losses)), key=losses.__getitem__)
    return [k for k, v in enumerate(losses) if k != best and v - losses[best] <= rel * abs(losses[best])]

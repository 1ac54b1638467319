"""One decomposition end to end: train SPD (best of its restarts, resuming from a folder), find the alive
subcomponents and, where the true mechanisms are known, score their recovery (``mechscope decompose`` and
``mechscope.decompose``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mechscope.decompose.analysis import alive, recovery
from mechscope.decompose.config import SPDConfig
from mechscope.decompose.spd import SPD
from mechscope.decompose.toys import KnownModel
from mechscope.decompose.train import CLOSE, close_restarts, train_best_of

DTYPE_REFUSAL = (
    "SPD compares float32 subcomponents with the target model's own outputs, which a bfloat16/float16 "
    "model computes in its dtype; that arithmetic is not made float32 here yet"
)
"""Why ``decompose`` refuses a ``dtype`` other than float32 (the reason in its one-line refusal)."""


def decompose(
    kt: KnownModel, cfg: SPDConfig, out: Path | None, progress: bool
) -> tuple[dict[str, Any], SPD, list, Any]:
    """Train (resuming from ``out``) and analyse ``kt`` on its device (:meth:`KnownModel.to`): (result dict, the SPD, the loss log, the alive subcomponents).
    The result names the kept restart (``kept_restart`` k, seed ``kept_seed`` = seed + k) and, in
    ``close_restarts``, the other restarts whose held-out loss is within ``close_tolerance`` (relative) of its
    own (:func:`~mechscope.decompose.train.close_restarts`): where that list is not empty, the selection did
    not clearly prefer the kept one."""
    spd, held_out, log = train_best_of(
        lambda seed: SPD(kt.model, replace(cfg, seed=seed), output=kt.output, output_loss=kt.output_loss),
        kt.batch,
        cfg.restarts,
        seed=cfg.seed,
        out=out,
        progress=progress,
    )
    live = alive(spd, kt.eval_inputs)
    per_target = live.per_target(spd.names)
    res: dict[str, Any] = {
        "targets": spd.names,
        "alive": len(live.labels),
        "alive_per_target": per_target,
        "final_losses": {k: v for k, v in log[-1].items() if k != "step"} if log else None,
        "restart_held_out_losses": held_out,
        "kept_seed": spd.cfg.seed,
        "kept_restart": spd.cfg.seed - cfg.seed,
        "close_restarts": close_restarts(held_out),
        "close_tolerance": CLOSE,
    }
    truth = {n: T for n, T in (kt.truth or {}).items() if n in spd.names}  # only the targets decomposed
    if truth:
        rec = recovery(spd, truth, live, kt.truth_basis)
        res.update(
            mmcs=sum(r["mmcs"] for r in rec.values()) / len(rec),
            mmcs_min=min(r["mmcs"] for r in rec.values()),
            true_mechanisms=sum(r["true_mechanisms"] for r in rec.values()),
            recovery=rec,
            alive_matches_truth=all(r["alive"] == r["true_mechanisms"] for r in rec.values()),
        )
    else:
        res.update(mmcs=None, true_mechanisms=None)
    if kt.extra is not None:
        res.update(kt.extra(spd, live))
    return res, spd, log, live

"""An SAE (or transcoder) evaluated on an activation store: reconstruction metrics on the held-out rows and
loss recovered when its output is spliced into the model, beside the zero-ablation, mean-ablation and rock
baselines (``mechscope evaluate`` and ``mechscope.evaluate``).

Both halves use the store's held-out split only: its rows for FVU, L0 and the rest, its token contexts for
splicing; the mean for mean-ablation comes from the store's training rows, and the rock (a smoothed unigram)
is fit on the store's training tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.evals.metrics import ReconstructionStats
from mechscope.evals.splice import SpliceConfig, SpliceResult, evaluate_splice
from mechscope.models.loading import device_of, n_logits
from mechscope.task import Task


@dataclass(frozen=True)
class EvaluateConfig:
    """How much held-out data the evaluation reads."""

    rows: int = 65_536
    """Held-out rows for the reconstruction metrics (capped by the store)."""
    contexts: int = 64
    """Held-out contexts spliced into the model (each costs four forward passes)."""
    mean_rows: int = 65_536
    """Training rows averaged for the mean-ablation baseline."""
    batch_size: int = 4096
    """Rows per encoder batch."""

    def __post_init__(self) -> None:
        for name in ("rows", "contexts", "mean_rows", "batch_size"):
            if getattr(self, name) <= 0:
                raise UsageError(f"`{name}` must be positive, got {getattr(self, name)}")


def no_held_out(store: Any) -> UsageError:
    """The error for a store without held-out rows (nothing to evaluate on)."""
    return UsageError(f"store {store.path} has no held-out (val) rows to evaluate on; harvest with `val_tokens` > 0")


@torch.no_grad()
def reconstruction_metrics(
    sae: Any, store: Any, site: str, rows: int, batch_size: int, target_site: str | None = None
) -> dict[str, float]:
    """FVU, L0 and the other metrics of :mod:`mechscope.evals.metrics` on the first ``rows`` held-out rows.

    With ``target_site`` (a transcoder) the prediction from ``site`` is scored against ``target_site``'s rows. The rows
    go to the SAE's device (:func:`as_sae_input`); the metrics are accumulated there in float64."""
    stats = ReconstructionStats()
    n = min(rows, store.n_rows("val"))
    if n == 0:
        raise no_held_out(store)
    for lo in range(0, n, batch_size):
        x = as_sae_input(sae, store.rows(site, lo, min(lo + batch_size, n), "val"))
        y = x if target_site is None else as_sae_input(sae, store.rows(target_site, lo, min(lo + batch_size, n), "val"))
        codes = sae.encode(x)
        stats.update(y, sae.predict(x, codes), codes)
    return stats.results()


def as_sae_input(sae: Any, x: Tensor) -> Tensor:
    """``x`` on the SAE's device in its dtype (a model running bf16 or on another device hands it over so)."""
    p = next(sae.parameters())
    return x.to(p.device, p.dtype)


def store_task(store: Any, model: Any, contexts: int | None = None) -> Task:
    """The next-token :class:`~mechscope.task.Task` of a store's token contexts: its training contexts (the rock is fit
    on their next tokens) and the first ``contexts`` of its held-out ones (all when None), scored with ``model``'s
    number of logits."""
    return Task.next_token(
        store.tokens("train"), store.tokens("val")[:contexts], n_classes=n_logits(model), name="store"
    )


def evaluate_sae(
    sae: Any, store: Any, site: str, lm: Any, cfg: EvaluateConfig = EvaluateConfig(), target_site: str | None = None
) -> tuple[dict[str, float], SpliceResult]:
    """(reconstruction metrics, splice result) of ``sae`` at ``site`` of ``store`` (an
    :class:`~mechscope.store.ActivationStore`); ``lm`` is a :class:`~mechscope.models.LoadedModel`.

    With ``target_site`` (a transcoder reading ``site``): the metrics score the prediction against
    ``target_site``, and the splice replaces ``target_site`` (e.g. the MLP's output) by the prediction
    from ``site`` (its input) in the same forward; zero- and mean-ablation are of ``target_site``.
    ``sae`` is moved (in place) to the model's device, where both halves run."""
    sae.to(device_of(lm.model))
    site = store.site_name(site)
    target = store.site_name(target_site) if target_site is not None else None
    rec = reconstruction_metrics(sae, store, site, cfg.rows, cfg.batch_size, target)
    task = store_task(store, lm.model, cfg.contexts)
    splice = evaluate_splice(
        lm.model,
        target or site,
        lambda x: sae.predict(as_sae_input(sae, x)),
        task,
        mean_act=store.mean(target or site, cfg.mean_rows, batch_size=cfg.batch_size),
        cfg=SpliceConfig(batch_size=8, skip_first_positions=store.first_position),
        source_site=site if target is not None else None,
    )
    return rec, splice

"""The frontier of an SAE on an activation store: held-out rows to code, training rows to fit the post-hoc scale
on (the two never overlap), and with a model, every reconstruction spliced into it on held-out contexts
(``mechscope frontier`` and ``mechscope.frontier``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechscope.coding.base import CodingConfig
from mechscope.coding.frontier import FrontierConfig, FrontierResult, frontier, sweep_encoder
from mechscope.coding.splice import splice_loss_fn
from mechscope.errors import UsageError
from mechscope.evals.evaluate import store_task


def _first_batch(batches: Any, what: str) -> Tensor:
    batch = next(iter(batches), None)
    if batch is None:
        raise UsageError(f"the store has no {what} rows for this site; harvest with more tokens")
    return batch


def frontier_from_store(
    sae: Any,
    store: Any,
    site: str,
    cfg: FrontierConfig = FrontierConfig(),
    coding: CodingConfig = CodingConfig(),
    lm: Any | None = None,
    loss_contexts: int = 16,
    device: str | torch.device = "cpu",
) -> FrontierResult:
    """Sweep the coders and ``sae``'s encoder along ``cfg.l0s`` on ``store``'s rows at ``site``.

    ``lm`` (a :class:`~mechscope.models.LoadedModel`, optional): splice each reconstruction into ``lm.model`` on
    ``loss_contexts`` held-out contexts, for loss and loss recovered beside the baselines (printed to stderr)."""
    if loss_contexts <= 0:
        raise UsageError(f"`loss_contexts` must be positive, got {loss_contexts}")
    device = torch.device(device)
    sae = sae.to(device).eval()
    site = store.site_name(site)
    x_eval = _first_batch(store.batches(site, cfg.eval_rows, seed=cfg.seed, drop_last=False, split="val"), "validation")
    x_fit = _first_batch(store.batches(site, cfg.fit_rows, seed=cfg.seed, drop_last=False, split="train"), "training")
    loss_fn = baselines = None
    if lm is not None:  # mean-ablation uses training rows, never the held-out ones the losses are measured on
        model = lm.model.to(device)
        loss_fn, baselines = splice_loss_fn(
            model, site, store_task(store, model, loss_contexts), x_fit.mean(0), store.first_position
        )
    return frontier(
        x_eval.to(device),
        sae,
        sweep_encoder(sae, cfg.encoder_sweep),
        cfg,
        coding,
        x_fit.to(device),
        loss_fn,
        baselines,
        native=sae.encode,
    )

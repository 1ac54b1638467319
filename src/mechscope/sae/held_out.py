"""Reconstruction metrics of an SAE over held-out batches (what the trainer logs and reports at the end)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from mechscope.evals.metrics import ReconstructionStats
from mechscope.sae.base import SparseAutoencoder


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, batches: Iterable[Tensor], scale: float = 1.0) -> dict[str, float]:
    """Reconstruction metrics (:class:`ReconstructionStats`: FVU, L0, dead fraction, …) over ``batches``.

    ``scale`` multiplies each batch first (the trainer's input scale, for an SAE that is not folded).
    Uses the SAE's inference encoding (e.g. BatchTopK's learned threshold). A transcoder's batches are
    paired rows; its prediction is scored against the target half (:meth:`SparseAutoencoder.split_rows`).
    """
    was_training = sae.training
    sae.eval()
    stats = ReconstructionStats()
    device = next(sae.parameters()).device
    for x in batches:
        x, target = sae.split_rows(x.to(device, torch.float32) * scale)
        codes = sae.encode(x)
        stats.update(target, sae.predict(x, codes), codes)
    sae.train(was_training)
    return stats.results()

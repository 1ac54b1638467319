"""Batches read online from a model, for training an SAE without an activation store.

The stream is a fixed function of (contexts, seed): epoch e visits the contexts in the order of a
permutation drawn from ``seed + e``, ``contexts_per_forward`` at a time; each forward's rows (positions
``skip_first ..`` T−1 of every context, at one site) are shuffled with a generator seeded from
(seed, e, chunk) and appended to the stream, which is cut into batches of ``batch_size`` rows.
``start_batch`` skips whole forwards arithmetically, so a resumed trainer continues the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mechscope.sites import resolve_sites, run_to_sites


def model_batches(
    model: nn.Module,
    site: str,
    contexts: Tensor,
    batch_size: int,
    seed: int = 0,
    start_batch: int = 0,
    contexts_per_forward: int = 8,
    skip_first: int = 1,
    epochs: int | None = None,
) -> Iterator[Tensor]:
    """Yield [batch_size, d] float32 rows of ``site`` over ``contexts`` ([N, T] token ids), forever by default."""
    (resolved,) = resolve_sites(model, site)
    per_ctx = contexts.shape[1] - skip_first
    if per_ctx <= 0:
        raise ValueError(f"contexts of {contexts.shape[1]} tokens leave no rows after skipping {skip_first}")
    skip, buffer, e = start_batch * batch_size, [], 0
    device = next(model.parameters()).device
    while epochs is None or e < epochs:
        order = torch.randperm(len(contexts), generator=torch.Generator().manual_seed(seed + e))
        for c, start in enumerate(range(0, len(contexts), contexts_per_forward)):
            ids = contexts[order[start : start + contexts_per_forward]]
            rows = len(ids) * per_ctx
            if skip >= rows:  # this forward lies wholly before the resumed position
                skip -= rows
                continue
            acts = run_to_sites(model, [resolved], ids.to(device))[str(resolved)][:, skip_first:]
            acts = acts.reshape(rows, -1).float().cpu()
            mix = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + e * 65_537 + c))
            buffer.append(acts[mix][skip:])
            skip = 0
            while sum(len(b) for b in buffer) >= batch_size:
                flat = torch.cat(buffer)
                yield flat[:batch_size]
                buffer = [flat[batch_size:]]
        e += 1

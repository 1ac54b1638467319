"""Equivalence classes of a feature and seeded draws from them.

The universe U holds every input the engine may run (the references, then the pool when it differs);
indices below are rows of U. Only pool rows are ever drawn.

- per-example keys [U] or [U, k]: the class of row u is its key row; ``draw(refs [B]) -> [B]`` returns,
  for each reference, a uniformly random pool row with the same key.
- per-position keys [U, T] or [U, T, k]: the class of (u, t) is (t, key[u, t]); ``draw(refs [B]) -> [B, T]``
  returns, for each reference and position t, a random pool row whose key at t equals the reference's.
- ``identity``: x' = x (returns ``refs``); ``none``: a uniformly random pool row.

Draws are vectorised: members of each class are stored contiguously (sorted by class), so a draw is
``members[start[c] + ⌊u·count[c]⌋]`` with u ~ U[0, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.scrub.errors import HypothesisError
from mechscope.scrub.features import IDENTITY, NONE, Feature


class ClassSampler:
    """Seeded draws of equivalent pool rows for one feature (see the module docstring)."""

    def __init__(self, feature: Feature, keys: Tensor | None, in_pool: Tensor, node: str) -> None:
        self.kind = (
            feature.name if feature.name in (IDENTITY, NONE) else ("position" if feature.per_position else "example")
        )
        self.node, self.feature = node, feature.name
        self.pool = in_pool.nonzero().squeeze(1)  # [P] rows of U that may be drawn
        if keys is None:
            return
        U = keys.shape[0]
        self.T = keys.shape[1] if feature.per_position else 1
        flat = keys.reshape(U * self.T, -1) if feature.per_position else keys.reshape(U, -1)
        if feature.per_position:  # the class of (u, t) includes t
            flat = torch.cat([torch.arange(self.T).repeat(U)[:, None].to(flat.dtype), flat], dim=1)
        _, cls = torch.unique(flat, dim=0, return_inverse=True)
        member = in_pool.repeat_interleave(self.T)  # which entries of U×T may be drawn
        self.cls = cls  # [U·T] class of every entry
        counts = torch.bincount(cls[member], minlength=int(cls.max()) + 1)
        self.counts, self.start = counts, counts.cumsum(0) - counts
        entries = member.nonzero().squeeze(1)
        self.members = entries[torch.sort(cls[entries], stable=True).indices]  # entries of U×T, grouped by class

    def draw(self, refs: Tensor, gen: torch.Generator) -> Tensor:
        """Pool rows equivalent to ``refs`` [B]: [B] per example, [B, T] per position."""
        if self.kind == IDENTITY:
            return refs
        if self.kind == NONE:
            return self.pool[torch.randint(0, self.pool.numel(), refs.shape, generator=gen)]
        entries = refs[:, None] * self.T + torch.arange(self.T) if self.kind == "position" else refs[:, None]
        c = self.cls[entries]  # [B, T] or [B, 1]
        n = self.counts[c]
        if bool((n == 0).any()):
            bad = int(refs[(n == 0).any(1).nonzero()[0, 0]])
            raise HypothesisError(
                f"node {self.node!r}: empty equivalence class — no pool example shares the value of "
                f"feature {self.feature!r} with example {bad}; enlarge the pool or coarsen the feature"
            )
        pick = self.members[self.start[c] + (torch.rand(c.shape, generator=gen) * n).long().clamp_max(n - 1)]
        rows = pick // self.T
        return rows if self.kind == "position" else rows[:, 0]

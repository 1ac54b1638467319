"""Evidence of what a latent responds to, streamed from an activation store's held-out split.

Two passes over the held-out rows, neither holding the codes of all rows [R, n]:

1. :func:`~mechscope.report.latents.scan_latents` (the report's pass): per latent the top activations with their
   row numbers and a histogram of |activation| on the shared log-spaced bins (20 per decade).
2. Quantile sampling, for the chosen latents only: each latent's firing rows are split into ``quantiles`` bins of
   about equal count, the bin edges read off the histogram of pass 1 (so an edge is exact to one log bin, ±6%);
   from each bin ``per_quantile`` rows are drawn uniformly without replacement by keeping, per (latent, bin), the
   rows with the smallest random keys (a reservoir of fixed size: [q, s, m] numbers whatever the rows).

Then, per batch of latents, the windows: for each chosen row, the tokens ``before`` it and ``after`` it in its
context (positions without a row, e.g. BOS, are left out), with the latent's activation at every token (the rows of
those contexts encoded again, a few hundred rows at most). Negatives are windows around random positions of random
held-out contexts in which the latent fires at no token; a latent that fires nearly everywhere may get fewer.

Everything is seeded: the same store, dictionary, latents and config give the same evidence (a resumed run writes
the explanations it would have written).

Shapes: B rows, n latents, m chosen latents, q quantile bins, s samples per bin, T tokens per context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechscope.config import COUNT, NON_NEGATIVE, check_ranges
from mechscope.errors import UsageError
from mechscope.explain.types import Evidence, Example
from mechscope.report.latents import LatentScan, bin_edges, scan_latents


@dataclass(frozen=True)
class EvidenceConfig:
    """Which windows of the held-out split make a latent's evidence."""

    top: int = field(default=20, metadata=NON_NEGATIVE)
    """Top-activating windows per latent (no two overlapping; 0: none, the quantile samples alone)."""
    quantiles: int = field(default=5, metadata=COUNT)
    """Bins of about equal count the latent's firing rows are split into, weakest to strongest."""
    per_quantile: int = field(default=4, metadata=NON_NEGATIVE)
    """Windows drawn at random from each bin (0: none, the top windows alone)."""
    negatives: int = field(default=20, metadata=NON_NEGATIVE)
    """Random windows in which the latent fires at no token (0: none; the scorers need them)."""
    before: int = field(default=12, metadata=NON_NEGATIVE)
    """Tokens of context before the window's token (0: the window starts at it)."""
    after: int = field(default=4, metadata=NON_NEGATIVE)
    """Tokens of context after it (0: the window ends at it)."""
    max_rows: int = field(default=200_000, metadata=COUNT)
    """Held-out rows read (from the start of the split)."""
    batch_size: int = field(default=2048, metadata=COUNT)
    """Rows per encoder batch."""
    seed: int = 0
    """Seed of the quantile samples and the negative windows."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.top == 0 and self.per_quantile == 0:
            raise UsageError(
                "top and per_quantile are both 0, so no latent would have a firing window; give one of them ≥ 1"
            )


def quantile_bounds(scan: LatentScan, latents: list[int], q: int) -> Tensor:
    """[m, q − 1] the inner bounds splitting each latent's firing rows into q bins of about equal count, read off
    the scan's |activation| histogram: bound k is the upper edge of the histogram bin where the cumulative count
    first reaches k/q of the total. An activation a falls in bin Σ_k [|a| ≥ bound_k] (0 = weakest)."""
    edges = bin_edges()  # [N_BINS + 1]
    cum = scan.hist[latents].double().cumsum(1)  # [m, N_BINS]
    targets = cum[:, -1:] * torch.arange(1, q, dtype=torch.float64) / q  # [m, q − 1]
    j = torch.searchsorted(cum, targets)
    return edges[(j + 1).clamp(max=len(edges) - 1)].float()


def row_keys(rows: Tensor, latents: Tensor, seed: int) -> Tensor:
    """[B, m] uniform keys in [0, 1), one per (row, latent), from a hash of (seed, latent, row): a latent's sample
    does not depend on which other latents, or which batches of rows, it was drawn with. rows: [B], latents: [m]."""
    # int64 products wrap around; the shifts and odd multipliers mix the bits (splitmix64's finaliser).
    h = rows[:, None] * 6364136223846793005 + latents[None, :] * 1442695040888963407 + (seed * 2654435761) % 2**62
    h = (h ^ (h >> 31)) * 0x2545F4914F6CDD1D
    h = (h ^ (h >> 29)) * 0x5851F42D4C957F2D
    h = h ^ (h >> 32)
    return (h & 0xFFFFFF).double() / 2**24


class EvidenceSource:
    """The held-out split of ``store`` at ``site`` (a site, or a tuple of sites side by side for a cross-layer
    transcoder) read through ``dictionary`` (``encode`` x [B, d] → dense codes [B, n]; it runs where its ``W_dec``
    is). Constructing it runs the scan (pass 1); :meth:`quantile_rows` runs pass 2; :meth:`evidence` builds the
    windows. ``token_text(id)`` is the token's text as it prints in context."""

    def __init__(
        self,
        dictionary: Any,
        store: Any,
        site: str | tuple[str, ...],
        token_text: Callable[[int], str],
        cfg: EvidenceConfig = EvidenceConfig(),
    ) -> None:
        self.dictionary, self.store, self.site, self.token_text, self.cfg = dictionary, store, site, token_text, cfg
        self.n_rows = min(store.n_rows("val"), cfg.max_rows)
        if self.n_rows == 0:
            raise UsageError(f"store {store.path} has no held-out (val) rows; harvest with `val_tokens` > 0")
        self.tokens = store.tokens("val")  # [N, T]
        self.rpc, self.first = store.rows_per_context, store.first_position
        self.scan = scan_latents(self._encode, None, (x for _, x in self._chunks()), top_k=max(1, 3 * cfg.top))

    @torch.no_grad()
    def _encode(self, x: Tensor) -> Tensor:
        return self.dictionary.encode(x.to(self.dictionary.W_dec.device))

    def _chunks(self) -> Iterator[tuple[int, Tensor]]:
        for lo in range(0, self.n_rows, self.cfg.batch_size):
            yield lo, self.store.rows(self.site, lo, min(lo + self.cfg.batch_size, self.n_rows), "val")

    def _position(self, row: int) -> tuple[int, int]:
        return self.store.row_to_position(row, "val")

    @torch.no_grad()
    def quantile_rows(self, latents: list[int]) -> dict[int, list[int]]:
        """Pass 2: latent → ``per_quantile`` rows drawn from each of its ``quantiles`` bins, weakest bin first
        (fewer where a bin holds fewer rows)."""
        q, s, m = self.cfg.quantiles, self.cfg.per_quantile, len(latents)
        if s == 0 or m == 0:
            return {i: [] for i in latents}
        bounds = quantile_bounds(self.scan, latents, q)  # [m, q − 1]
        ids = torch.tensor(latents)
        cols = ids.to(self.dictionary.W_dec.device)
        keys = torch.full((q, s, m), torch.inf, dtype=torch.float64)
        rows = torch.full((q, s, m), -1, dtype=torch.long)
        for lo, x in self._chunks():
            a = self._encode(x)[:, cols].abs().float().cpu()  # [B, m]
            r = torch.arange(lo, lo + a.shape[0])
            which = (a[:, :, None] >= bounds[None]).sum(-1)  # [B, m] bin of each activation
            u = row_keys(r, ids, self.cfg.seed)
            for k in range(q):
                cand = torch.where((a > 0) & (which == k), u, torch.inf)
                v, i = cand.topk(min(s, a.shape[0]), dim=0, largest=False)
                keys[k], idx = torch.cat([keys[k], v]).topk(s, dim=0, largest=False)
                rows[k] = torch.cat([rows[k], r[i]]).gather(0, idx)
        rows[~torch.isfinite(keys)] = -1
        return {
            i: [int(v) for k in range(q) for v in sorted(rows[k, :, j].tolist()) if v >= 0]
            for j, i in enumerate(latents)
        }

    def _top_rows(self, i: int) -> list[int]:
        """The rows of latent i's largest activations, largest first, skipping any whose window would overlap one
        already taken."""
        taken: list[tuple[int, int]] = []
        out: list[int] = []
        span = self.cfg.before + self.cfg.after
        for r in self.scan.top_rows[:, i].tolist():
            if r < 0 or len(out) == self.cfg.top:
                break
            c, p = self._position(r)
            if any(c == c2 and abs(p - p2) <= span for c2, p2 in taken):
                continue
            taken.append((c, p))
            out.append(r)
        return out

    def _negative_candidates(self, i: int) -> list[tuple[int, int]]:
        """(context, position) of 4 × ``negatives`` random rows, drawn with latent i's own seed."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + i)
        rows = torch.randperm(self.n_rows, generator=g)[: 4 * self.cfg.negatives]
        return [self._position(int(r)) for r in rows]

    @torch.no_grad()
    def _context_acts(self, contexts: set[int], latents: list[int]) -> dict[int, Tensor]:
        """context → [rows per context, m] the chosen latents' activations at every row of the context."""
        out: dict[int, Tensor] = {}
        cols = torch.tensor(latents, device=self.dictionary.W_dec.device)
        order = sorted(contexts)
        per = max(1, self.cfg.batch_size // self.rpc)
        for lo in range(0, len(order), per):
            chunk = order[lo : lo + per]
            idx = np.concatenate([np.arange(c * self.rpc, (c + 1) * self.rpc) for c in chunk])
            a = self._encode(self.store.gather(self.site, idx, "val"))[:, cols].float().cpu()
            out.update(zip(chunk, a.view(len(chunk), self.rpc, len(latents))))
        return out

    def _window(self, acts: Tensor, c: int, p: int) -> Example:
        """The window around position p of context c; acts: [rows per context] of one latent in that context."""
        lo, hi = max(self.first, p - self.cfg.before), min(self.tokens.shape[1], p + self.cfg.after + 1)
        ids = self.tokens[c, lo:hi].tolist()
        vals = acts[lo - self.first : hi - self.first].tolist()
        return Example(tuple(self.token_text(t) for t in ids), tuple(float(v) for v in vals))

    def evidence(self, latents: list[int], quantile_rows: dict[int, list[int]] | None = None) -> list[Evidence]:
        """The evidence of each of ``latents`` (in that order). ``quantile_rows``: :meth:`quantile_rows` of (at
        least) these latents, run once for many batches; None runs it here for these."""
        qrows = self.quantile_rows(latents) if quantile_rows is None else quantile_rows
        top = {i: self._top_rows(i) for i in latents}
        cands = {i: self._negative_candidates(i) for i in latents}
        contexts = {self._position(r)[0] for i in latents for r in top[i] + qrows[i]} | {
            c for i in latents for c, _ in cands[i]
        }
        acts = self._context_acts(contexts, latents)
        out = []
        for j, i in enumerate(latents):
            negatives: list[Example] = []
            taken: list[tuple[int, int]] = []
            for c, p in cands[i]:
                if len(negatives) == self.cfg.negatives:
                    break
                ex = self._window(acts[c][:, j], c, p)
                if (
                    ex.max_act == 0.0
                    and min(ex.acts, default=0.0) == 0.0
                    and not any(c == c2 and abs(p - p2) <= self.cfg.before + self.cfg.after for c2, p2 in taken)
                ):
                    taken.append((c, p))
                    negatives.append(ex)
            out.append(
                Evidence(
                    latent=i,
                    top=tuple(self._window(acts[c][:, j], c, p) for c, p in map(self._position, top[i])),
                    quantiles=tuple(self._window(acts[c][:, j], c, p) for c, p in map(self._position, qrows[i])),
                    negatives=tuple(negatives),
                )
            )
        return out

"""What every coder shares: the code it returns, the dictionary it codes against, its config.

Shapes: B rows, d activation width, n latents, k code slots (the target L0).

A *dictionary* is ``W_dec: [n, d]`` (one latent per row) plus an optional ``b_dec: [d]``; a row x
is reconstructed as x̂ = Σ_j a_j W_dec[i_j] + b_dec. Coders subtract b_dec first and code
x̃ = x − b_dec. A trained SAE, a loaded one, or a :class:`Dictionary` around a plain matrix all work:
anything with ``W_dec`` (and optionally ``b_dec``) attributes, or a bare ``[n, d]`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechscope.config import COEFFICIENT, COUNT, NON_NEGATIVE, check_ranges, in_range
from mechscope.dictionary import Dictionary, DictionaryLike, SparseCodes, as_dictionary  # noqa: F401  (re-exported)

#: An encoder callable: x [B, d] → dense codes [B, n] (zeros where a latent is inactive).
Encoder = Callable[[Tensor], Tensor]


def top_k_code(codes: Tensor, k: int) -> SparseCodes:
    """The k largest-|value| entries of each dense row as a :class:`SparseCodes`. codes: [B, n].

    Rows with fewer than k non-zeros keep their zeros as unused slots (value 0).
    """
    k = min(k, codes.shape[1])
    idx = codes.abs().topk(k, dim=1).indices
    vals = codes.gather(1, idx)
    return SparseCodes(vals, torch.where(vals != 0, idx, torch.zeros_like(idx)))


@dataclass(frozen=True)
class CodingConfig:
    """How a coder runs: its target L0, its stopping tolerance, and a few algorithm knobs."""

    k: int = field(default=32, metadata=COUNT)
    """Target L0: the most latents a row may use (the number of code slots and of pursuit steps); ≥ 1."""
    # Optional[...] rather than "float | None": config.add_arguments only recognises typing.Union here.
    tol: float | None = field(default=None, metadata=in_range(0, 1, hi_open=True))
    """Stop a row early once its relative residual ‖x̃ − x̂‖/‖x̃‖ ≤ tol (x̃ = x − b_dec); None: always take k steps."""
    nonnegative: bool = True
    """Choose only latents with positive correlation and keep every code ≥ 0 (SAE codes are non-negative):
    OMP and the encoder refit solve non-negative least squares, gradient pursuit clips at zero."""
    gram_max_latents: int = field(default=8192, metadata=NON_NEGATIVE)
    """Matching pursuit updates its scores through the n×n matrix of latent cosines (4n² bytes) when n ≤ this
    (0: never)."""
    nnls_max_iter: int = field(default=256, metadata=COUNT)
    """Encoder-support refit: most active-set iterations (one batched solve each; rows stop at their optimum); ≥ 1."""
    per_latent_scale: bool = False
    """Post-hoc scale: fit one scale per latent instead of one scalar."""
    scale_ridge: float = field(default=1e-3, metadata=COEFFICIENT)
    """Post-hoc per-latent scale: ridge pulling each scale towards 1, relative to the mean diagonal of the normal
    equations; in [0, 10^6]."""

    def __post_init__(self) -> None:
        check_ranges(self)


# ---- helpers shared by the pursuits ---------------------------------------------------------------


def choose(scores: Tensor, taken: Tensor | None, nonnegative: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Pick each row's latent from scores s = r D̂ᵀ [B, n] (normalised correlations with the residual).

    The largest s_i when codes are non-negative, the largest |s_i| otherwise; latents in ``taken``
    [B, t] are excluded (None: any may be chosen again). May overwrite ``scores``.
    Returns (signed s_i [B], i [B], ok [B]) where ok says the row had a latent with s_i > 0 (|s_i| > 0).
    """
    ranked = scores if nonnegative else scores.abs()
    if taken is not None and taken.shape[1] > 0:
        ranked.scatter_(1, taken, -torch.inf)
    best, i = ranked.max(dim=1)
    signed = best if nonnegative else scores.gather(1, i[:, None]).squeeze(1)
    return signed, i, best > 0


def still_active(active: Tensor, residual: Tensor, x_norm: Tensor, tol: float | None) -> Tensor:
    """Rows that keep going: ``active`` and, with a tolerance, ‖r‖ > tol·‖x̃‖. → [B] bool."""
    if tol is None:
        return active
    return active & (residual.norm(dim=1) > tol * x_norm)

"""What every coder shares: the code it returns, the dictionary it codes against, its config.

Shapes: B rows, d activation width, n latents, k code slots (the target L0).

A *dictionary* is ``W_dec: [n, d]`` (one latent per row) plus an optional ``b_dec: [d]``; a row x
is reconstructed as x̂ = Σ_j a_j W_dec[i_j] + b_dec. Coders subtract b_dec first and code
x̃ = x − b_dec. A trained SAE, a loaded one, or a :class:`Dictionary` around a plain matrix all work:
anything with ``W_dec`` (and optionally ``b_dec``) attributes, or a bare ``[n, d]`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, NamedTuple, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.config import COEFFICIENT, COUNT, NON_NEGATIVE, check_ranges, in_range

#: An encoder callable: x [B, d] → dense codes [B, n] (zeros where a latent is inactive).
Encoder = Callable[[Tensor], Tensor]


class DictionaryLike(Protocol):
    """The two attributes a coder reads from an SAE: ``W_dec [n, d]`` and ``b_dec [d]`` (may be None)."""

    W_dec: Tensor
    b_dec: Tensor | None


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare dictionaries by identity
class Dictionary:
    """A decoder matrix and bias, detached, with the per-latent quantities coders reuse."""

    W_dec: Tensor
    """[n, d] one latent per row; rows need not have unit norm."""
    b_dec: Tensor | None = None
    """[d] subtracted from x before coding and added back on decoding; None means zero."""

    def __post_init__(self) -> None:
        if self.W_dec.ndim != 2:
            raise ValueError(f"W_dec must be [n, d], got shape {tuple(self.W_dec.shape)}")
        if self.b_dec is not None and self.b_dec.shape != self.W_dec.shape[1:]:
            raise ValueError(f"b_dec must be [{self.W_dec.shape[1]}], got {tuple(self.b_dec.shape)}")

    @property
    def n(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d(self) -> int:
        return self.W_dec.shape[1]

    @cached_property
    def norms(self) -> Tensor:
        """[n] ‖W_dec[i]‖."""
        return self.W_dec.norm(dim=1)

    @cached_property
    def unit(self) -> Tensor:
        """[n, d] W_dec[i]/‖W_dec[i]‖, and a zero row for a zero row so that a dead latent is never chosen.

        Pursuits score latents by r D̂ᵀ = ⟨r, D_i⟩/‖D_i‖ in one matmul, so a long decoder row is not
        favoured for its length and no extra [B, n] pass is needed to normalise."""
        inv = torch.where(self.norms > 0, 1.0 / self.norms.clamp_min(1e-30), torch.zeros_like(self.norms))
        return self.W_dec * inv[:, None]

    @cached_property
    def unit_gram(self) -> Tensor:
        """[n, n] Ĝ = D̂ D̂ᵀ, cosines between latents. Costs 4n² bytes; only matching pursuit asks for it."""
        return self.unit @ self.unit.T

    def centre(self, x: Tensor) -> Tensor:
        """x̃ = x − b_dec. x: [B, d] → [B, d]."""
        return x if self.b_dec is None else x - self.b_dec

    def decode_dense(self, codes: Tensor) -> Tensor:
        """x̂ = codes W_dec + b_dec. codes: [B, n] → [B, d]."""
        out = codes @ self.W_dec
        return out if self.b_dec is None else out + self.b_dec


def as_dictionary(obj: DictionaryLike | Dictionary | Tensor) -> Dictionary:
    """Wrap an SAE (anything with ``W_dec`` / ``b_dec``), a :class:`Dictionary` or a bare [n, d] tensor."""
    if isinstance(obj, Dictionary):
        return obj
    if isinstance(obj, Tensor):
        return Dictionary(obj.detach())
    b_dec = getattr(obj, "b_dec", None)
    return Dictionary(obj.W_dec.detach(), None if b_dec is None else b_dec.detach())


class SparseCode(NamedTuple):
    """k slots per row; an unused slot has value 0 (its index is then meaningless, 0 by convention).

    The order of the slots is the order in which a pursuit chose the latents (for encoder-based
    coders: decreasing encoder activation). A latent holds at most one slot with a non-zero value.
    """

    values: Tensor
    """[B, k] code values."""
    indices: Tensor
    """[B, k] latent indices (int64)."""

    def dense(self, n: int) -> Tensor:
        """[B, n] the code as a dense vector (zeros off the support)."""
        out = self.values.new_zeros(self.values.shape[0], n)
        return out.scatter_add_(1, self.indices, self.values)

    def decode(self, dictionary: DictionaryLike | Dictionary | Tensor) -> Tensor:
        """x̂ = Σ_j values_j W_dec[indices_j] + b_dec → [B, d], without forming [B, n] or [B, k, d]."""
        dic = as_dictionary(dictionary)
        out = F.embedding_bag(self.indices, dic.W_dec, per_sample_weights=self.values.to(dic.W_dec.dtype), mode="sum")
        return out if dic.b_dec is None else out + dic.b_dec

    def support(self, n: int) -> Tensor:
        """[B, n] bool: which latents have a non-zero value (the definition of L0 in evals.metrics)."""
        return self.dense(n) != 0


def top_k_code(codes: Tensor, k: int) -> SparseCode:
    """The k largest-|value| entries of each dense row as a :class:`SparseCode`. codes: [B, n].

    Rows with fewer than k non-zeros keep their zeros as unused slots (value 0).
    """
    k = min(k, codes.shape[1])
    idx = codes.abs().topk(k, dim=1).indices
    vals = codes.gather(1, idx)
    return SparseCode(vals, torch.where(vals != 0, idx, torch.zeros_like(idx)))


@dataclass(frozen=True)
class CodingConfig:
    """How a coder runs: its target L0, its stopping tolerance, and a few algorithm knobs."""

    k: int = field(default=32, metadata=COUNT)
    """Target L0: the most latents a row may use (the number of code slots and of pursuit steps); ≥ 1."""
    # Optional[...] rather than "float | None": config.add_arguments only recognises typing.Union here.
    tol: Optional[float] = field(default=None, metadata=in_range(0, 1, hi_open=True))
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

"""A dictionary and the sparse codes written against it: the two types every SAE, coder and graph shares.

Shapes: B rows, d activation width, n latents, k code slots.

A *dictionary* is ``W_dec: [n, d]`` (one latent per row) plus an optional ``b_dec: [d]``; a row x is
reconstructed from codes as x̂ = Σ_j a_j W_dec[i_j] + b_dec. Anything with ``W_dec`` (and optionally ``b_dec``)
attributes — an SAE, a transcoder, a :class:`Dictionary` — or a bare ``[n, d]`` tensor serves as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class DictionaryLike(Protocol):
    """The two attributes a coder reads from an SAE: ``W_dec [n, d]`` and ``b_dec [d]`` (may be None). Read-only
    properties, so an SAE whose attributes are ``nn.Parameter`` (a Tensor subclass) matches."""

    @property
    def W_dec(self) -> Tensor: ...
    @property
    def b_dec(self) -> Tensor | None: ...


class EncodingDictionary(Protocol):
    """A dictionary with its own encoder, what a report or an evaluation reads of an SAE (any coder wrapped to
    this shape serves too): ``W_dec [n, d]``, ``encode`` x [B, d] → dense codes [B, n], ``decode`` codes → x̂ [B, d]."""

    W_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...
    def decode(self, codes: Tensor) -> Tensor: ...


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


class SparseCodes(NamedTuple):
    """k slots per row of B rows: slot j of row b holds latent ``indices[b, j]`` with value ``values[b, j]``.

    A slot with value 0 is unused: its index is arbitrary (0 by the coders' convention; an SAE's padding may
    repeat a kept latent of its row), so :meth:`dense` adds slots rather than writing them. A latent holds at
    most one slot with a non-zero value. Coders order the slots as they chose them (pursuits: the order of
    selection; encoder-based coders and SAEs: decreasing activation)."""

    values: Tensor
    """[B, k] code values."""
    indices: Tensor
    """[B, k] latent indices (int64)."""

    def dense(self, n: int) -> Tensor:
        """[B, n] the codes as dense vectors (zeros off the support)."""
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

    def fired(self, n: int) -> Tensor:
        """[n] bool: latents with a non-zero value on some row."""
        out = torch.zeros(n, dtype=torch.bool, device=self.values.device)
        out[self.indices[self.values != 0]] = True
        return out

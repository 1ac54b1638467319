"""Feature absorption on a known hierarchy (Chanin et al. 2024, "A is for Absorption").

Shapes: B rows, F true features, n latents, d width.

A child feature fires only with its parent. A dictionary *absorbs* the child when, on the rows where
the child is active, the parent's own latent stays silent and another active latent carries the
parent's direction instead (typically a latent for "parent and child together"): the parent latent
then looks monosemantic but misses exactly the rows where the child is on.

Given the truth (directions D [F, d], activity [B, F], parent [F]) and a dictionary's codes [B, n] and
decoder W_dec [n, d]:

- the parent's latent ℓ_P = argmax_j cos(D_P, W_dec_j) (the latent that reads as the parent);
- on each row r where some child of P is active (hence P too):
  *silent* if code_r[ℓ_P] = 0; *absorbed* if silent and some active latent j ≠ ℓ_P has
  cos(D_P, W_dec_j) ≥ τ (the parent's direction went into it; τ = ``min_cos``, default 0.2);
- absorption = #absorbed / #child rows, pooled over all parents;
- beside it, the parent latent's plain miss rate on rows where the parent fires *without* any child:
  a dictionary too sparse to fire every active feature misses there too, and absorption is only the
  excess on child rows.

Where this departs from Chanin et al.: they find the parent latent with a linear probe on a real model
(first-letter features) and count a row as absorbed when the absorbing latent's projection on the probe
is a large share of the total; with the true directions known, ℓ_P is the best-matching decoder row and
the share test becomes the cosine threshold τ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Absorption:
    """The absorption of one dictionary on one hierarchy."""

    absorbed: float
    """Fraction of child-active rows on which the parent's latent is silent and another active latent carries
    the parent's direction."""
    silent_on_child: float
    """Fraction of child-active rows on which the parent's latent is silent (absorbed or not)."""
    silent_parent_only: float
    """Fraction of rows with the parent active and no child on which the parent's latent is silent."""
    parent_cos: float
    """Mean over parents of cos(D_P, W_dec[ℓ_P]): how well the parent latents read as their parents."""
    child_rows: int
    """Rows with some child active, pooled over parents."""
    parent_only_rows: int
    """Rows with a parent active and none of its children, pooled over parents."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def absorption(
    codes: Tensor, W_dec: Tensor, directions: Tensor, active: Tensor, parent: Tensor, min_cos: float = 0.2
) -> Absorption:
    """Absorption of the dictionary ``W_dec`` [n, d] with ``codes`` [B, n] on rows whose true features
    ``active`` [B, F] (bool) have directions ``directions`` [F, d] and hierarchy ``parent`` [F] (−1: none)."""
    if (
        codes.shape[0] != active.shape[0]
        or codes.shape[1] != W_dec.shape[0]
        or directions.shape != (active.shape[1], W_dec.shape[1])
    ):
        raise ValueError(
            f"shapes disagree: codes {tuple(codes.shape)}, W_dec {tuple(W_dec.shape)}, "
            f"directions {tuple(directions.shape)}, active {tuple(active.shape)}"
        )
    parents = sorted({int(p) for p in parent.tolist() if p >= 0})
    if not parents:
        raise ValueError("the features have no hierarchy (every parent is −1): absorption needs parents with children")
    W = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    D = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = D[parents] @ W.T  # [P, n]
    lat = cos.argmax(1)
    fired = codes != 0
    absorbed = silent_child = silent_alone = child_rows = alone_rows = 0
    for i, p in enumerate(parents):
        kids = (parent == p).nonzero().flatten()
        on_child = active[:, kids].any(1)
        alone = active[:, p] & ~on_child
        silent = ~fired[:, lat[i]]
        carriers = fired & (cos[i] >= min_cos)[None, :]
        carriers[:, lat[i]] = False
        absorbed += int((silent & carriers.any(1) & on_child).sum())
        silent_child += int((silent & on_child).sum())
        silent_alone += int((silent & alone).sum())
        child_rows += int(on_child.sum())
        alone_rows += int(alone.sum())
    if child_rows == 0:
        raise ValueError("no row has an active child feature: use more rows or a larger child probability")
    return Absorption(
        absorbed / child_rows,
        silent_child / child_rows,
        silent_alone / max(alone_rows, 1),
        float(cos.max(1).values.mean()),
        child_rows,
        alone_rows,
    )


@dataclass(frozen=True)
class FullAbsorption:
    """Per row, SAEBench's full-absorption judgement (Chanin et al.) against one probe direction."""

    absorbed: Tensor
    """[B] bool: the main latents are silent and one other latent carries the direction."""
    silent: Tensor
    """[B] bool: every main latent is silent (absorbed or not)."""
    top_latent: Tensor
    """[B] int64: the latent with the largest projection onto the direction."""
    top_share: Tensor
    """[B] float: that latent's projection as a share of the row's projection x·u."""


@torch.no_grad()
def full_absorption(
    x: Tensor,
    codes: Tensor,
    W_dec: Tensor,
    direction: Tensor,
    main: list[int],
    min_cos: float = 0.025,
    min_share: float = 0.4,
) -> FullAbsorption:
    """Full absorption of rows ``x`` [B, d] with ``codes`` [B, n] of the dictionary ``W_dec`` [n, d] against the
    probe ``direction`` [d] (u = direction/‖direction‖) whose usual latents are ``main``.

    A row is absorbed when (SAEBench's thresholds as defaults):

    - every main latent is silent (code 0; the toy metric's *silent* above);
    - the latent j with the largest projection p_j = code_j · (W_dec_j · u) has cos(u, W_dec_j) ≥ ``min_cos``;
    - the row's own projection x·u is positive, and p_j ≥ ``min_share`` · x·u.

    SAEBench projects with code_j · cos(u, W_dec_j), which is p_j for unit-norm decoder rows; p_j here is the
    latent's contribution to the reconstruction along u whatever the norm of its decoder row."""
    if (
        codes.shape != (x.shape[0], W_dec.shape[0])
        or direction.shape != (W_dec.shape[1],)
        or x.shape[1] != W_dec.shape[1]
    ):
        raise ValueError(
            f"shapes disagree: x {tuple(x.shape)}, codes {tuple(codes.shape)}, W_dec {tuple(W_dec.shape)}, "
            f"direction {tuple(direction.shape)}"
        )
    u = direction / direction.norm().clamp_min(1e-12)
    along = W_dec @ u  # [n]
    cos = along / W_dec.norm(dim=1).clamp_min(1e-12)
    proj = codes * along[None, :]  # [B, n]
    top = proj.argmax(1)
    total = x @ u  # [B]
    share = proj.gather(1, top[:, None]).squeeze(1) / total.where(total != 0, torch.ones_like(total))
    silent = (codes[:, main] == 0).all(1) if main else torch.ones(len(x), dtype=torch.bool)
    absorbed = silent & (cos[top] >= min_cos) & (total > 0) & (share >= min_share)
    return FullAbsorption(absorbed, silent, top, share)

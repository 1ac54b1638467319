"""Matching pursuit and gradient pursuit, batched over rows (the only Python loop is over steps).

Shapes: B rows, d width, n latents, k slots. D = W_dec [n, d], D̂ its rows scaled to unit norm,
x̃ = x − b_dec, r the residual x̃ − Σ_j a_j D_{i_j}, c = r Dᵀ [B, n] the correlations and
s = r D̂ᵀ the normalised ones (s_i = c_i/‖D_i‖). A latent is chosen by s (the largest positive one
when codes are non-negative, the largest |·| otherwise); a row stops early when no latent
correlates positively (non-negative codes), or when its relative residual reaches ``tol``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.coding.base import (
    CodingConfig,
    Dictionary,
    DictionaryLike,
    SparseCodes,
    as_dictionary,
    choose,
    still_active,
)

# Matching pursuit may choose a latent again; it stops after k distinct latents or this many × k
# steps, whichever comes first, so that a coherent dictionary cannot keep it looping.
_MP_STEP_FACTOR = 4


@torch.no_grad()
def matching_pursuit(
    x: Tensor, dictionary: DictionaryLike | Dictionary | Tensor, cfg: CodingConfig = CodingConfig()
) -> SparseCodes:
    """Matching pursuit (Mallat & Zhang 1993). x: [B, d] → SparseCodes with k slots.

    Each step picks i = argmax_i s_i and moves only that coefficient:

        a_i ← a_i + s_i/‖D_i‖,    r ← r − (s_i/‖D_i‖) D_i,    s ← s − s_i Ĝ_i

    where Ĝ = D̂ D̂ᵀ. The last update replaces a [B, d]@[d, n] matmul by a gather of B rows of Ĝ when
    it is affordable (n ≤ ``cfg.gram_max_latents``); otherwise s = r D̂ᵀ is recomputed.
    A latent chosen again adds to its own slot, so the code holds up to k distinct latents.
    """
    dic = as_dictionary(dictionary)
    D = dic.W_dec
    xt = dic.centre(x.to(D))
    B, k = xt.shape[0], min(cfg.k, dic.n)
    rows = torch.arange(B, device=D.device)
    slots = torch.arange(k, device=D.device)
    gram = dic.unit_gram if dic.n <= cfg.gram_max_latents else None
    inv_norms = torch.where(dic.norms > 0, 1.0 / dic.norms.clamp_min(1e-30), torch.zeros_like(dic.norms))

    values = xt.new_zeros(B, k)
    indices = torch.zeros(B, k, dtype=torch.long, device=D.device)
    count = torch.zeros(B, dtype=torch.long, device=D.device)  # distinct latents so far
    active = torch.ones(B, dtype=torch.bool, device=D.device)
    x_norm = xt.norm(dim=1)
    r = xt.clone()
    scores = r @ dic.unit.T  # [B, n]
    for _ in range(_MP_STEP_FACTOR * k):
        active = still_active(active & (count < k), r, x_norm, cfg.tol)
        if not active.any():
            break
        s_i, i, ok = choose(scores, None, cfg.nonnegative)
        active = active & ok
        s_i = s_i * active  # zero for finished rows: nothing moves
        coef = s_i * inv_norms[i]
        chosen_before = (indices == i[:, None]) & (slots < count[:, None])  # [B, k]
        seen = chosen_before.any(dim=1)
        slot = torch.where(seen, chosen_before.int().argmax(dim=1), count.clamp_max(k - 1))
        values[rows, slot] += coef
        indices[rows, slot] = torch.where(active, i, indices[rows, slot])
        count += (active & ~seen).long()
        r -= coef[:, None] * D[i]
        scores = scores - s_i[:, None] * gram[i] if gram is not None else r @ dic.unit.T
    return SparseCodes(values, torch.where(values != 0, indices, torch.zeros_like(indices)))


@torch.no_grad()
def gradient_pursuit(
    x: Tensor, dictionary: DictionaryLike | Dictionary | Tensor, cfg: CodingConfig = CodingConfig()
) -> SparseCodes:
    """Gradient pursuit (Blumensath & Davies 2008), one new latent per step. x: [B, d] → SparseCodes.

    Step t, with support S (the latents chosen so far, as rows D_S [t, d]) and codes a_S:

        s   = r D̂ᵀ                              normalised correlations, one matmul
        S  ← S ∪ {argmax_{i ∉ S} s_i}           (largest positive one when non-negative)
        g_S = c_S = D_S r                       minus the gradient of ½‖x̃ − a_S D_S‖² on the support
                                                (read off s: c_j = s_j ‖D_j‖)
        u   = g_S D_S                           its image in activation space, [B, d]: a gather of t rows
        α   = ⟨r, u⟩ / ‖u‖²                     exact line search along g_S
        a_S ← a_S + α g_S,  then  a_S ← max(a_S, 0) when non-negative
        r   = x̃ − a_S D_S

    Unlike the original, a latent already in S is never chosen again (its score is masked), so k
    steps give k slots; after clipping a slot may hold 0 (chosen, then switched off).
    """
    dic = as_dictionary(dictionary)
    D = dic.W_dec
    xt = dic.centre(x.to(D))
    B, k = xt.shape[0], min(cfg.k, dic.n)

    values = xt.new_zeros(B, k)
    indices = torch.zeros(B, k, dtype=torch.long, device=D.device)
    used = torch.zeros(B, k, dtype=torch.bool, device=D.device)
    atoms = xt.new_zeros(B, k, D.shape[1])  # D_S, one row per slot, zero for unused slots
    active = torch.ones(B, dtype=torch.bool, device=D.device)
    x_norm = xt.norm(dim=1)
    r = xt.clone()
    for t in range(k):
        active = still_active(active, r, x_norm, cfg.tol)
        if not active.any():
            break
        scores = r @ dic.unit.T  # [B, n]
        s_old = scores.gather(1, indices[:, :t])  # read before choose() masks these entries
        s_i, i, ok = choose(scores, indices[:, :t], cfg.nonnegative)
        active = active & ok
        indices[:, t] = torch.where(active, i, 0)
        used[:, t] = active
        atoms[:, t] = D[i] * active[:, None]
        g = torch.cat([s_old, s_i[:, None]], dim=1) * dic.norms[indices[:, : t + 1]] * used[:, : t + 1]  # [B, t+1]
        u = torch.bmm(g[:, None, :], atoms[:, : t + 1]).squeeze(1)  # [B, d]
        u_sq = (u * u).sum(1)
        alpha = torch.where(u_sq > 0, (r * u).sum(1) / u_sq.clamp_min(1e-30), torch.zeros_like(u_sq))
        values[:, : t + 1] += alpha[:, None] * g
        if cfg.nonnegative:
            values.clamp_(min=0)
        r = xt - torch.bmm(values[:, None, : t + 1], atoms[:, : t + 1]).squeeze(1)
    return SparseCodes(values, torch.where(values != 0, indices, torch.zeros_like(indices)))

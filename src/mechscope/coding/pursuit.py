"""Matching pursuit and gradient pursuit, batched over rows (the only Python loop is over steps).

Shapes: B rows, d width, n latents, k slots. D = W_dec [n, d], x̃ = x − b_dec, r the residual
x̃ − Σ_j a_j D_{i_j}, c = r Dᵀ [B, n] the correlations. A latent is chosen by its normalised
correlation c_i/‖D_i‖ (the largest positive one when codes are non-negative, the largest |·|
otherwise); a row stops early when no latent correlates positively (non-negative codes), or
when its relative residual reaches ``tol``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.coding.base import CodingConfig, Dictionary, DictionaryLike, SparseCode, as_dictionary, selection_scores, still_active

# Matching pursuit may choose a latent again; it stops after k distinct latents or this many × k
# steps, whichever comes first, so that a coherent dictionary cannot keep it looping.
_MP_STEP_FACTOR = 4


@torch.no_grad()
def matching_pursuit(x: Tensor, dictionary: DictionaryLike | Dictionary | Tensor, cfg: CodingConfig = CodingConfig()) -> SparseCode:
    """Matching pursuit (Mallat & Zhang 1993). x: [B, d] → SparseCode with k slots.

    Each step picks i = argmax_i c_i/‖D_i‖ and moves only that coefficient:

        a_i ← a_i + c_i/‖D_i‖²,    r ← r − (c_i/‖D_i‖²) D_i,    c ← c − (c_i/‖D_i‖²) G_i

    where G = D Dᵀ. The last update replaces a [B, d]@[d, n] matmul by a gather of B rows of G when
    the Gram matrix is affordable (n ≤ ``cfg.gram_max_latents``); otherwise c = r Dᵀ is recomputed.
    A latent chosen again adds to its own slot, so the code holds up to k distinct latents.
    """
    dic = as_dictionary(dictionary)
    D = dic.W_dec
    xt = dic.centre(x.to(D))
    B, k = xt.shape[0], min(cfg.k, dic.n)
    rows = torch.arange(B, device=D.device)
    slots = torch.arange(k, device=D.device)
    gram = dic.gram if dic.n <= cfg.gram_max_latents else None
    inv_sq = dic.inv_norms**2

    values = xt.new_zeros(B, k)
    indices = torch.zeros(B, k, dtype=torch.long, device=D.device)
    count = torch.zeros(B, dtype=torch.long, device=D.device)  # distinct latents so far
    active = torch.ones(B, dtype=torch.bool, device=D.device)
    x_norm = xt.norm(dim=1)
    r = xt.clone()
    corr = r @ D.T  # [B, n]
    for _ in range(_MP_STEP_FACTOR * k):
        active = still_active(active & (count < k), r, x_norm, cfg.tol)
        if not active.any():
            break
        best, i = selection_scores(corr, dic, cfg.nonnegative).max(dim=1)
        active = active & (best > 0)
        coef = corr[rows, i] * inv_sq[i] * active  # [B]; zero for finished rows
        chosen_before = (indices == i[:, None]) & (slots < count[:, None])  # [B, k]
        seen = chosen_before.any(dim=1)
        slot = torch.where(seen, chosen_before.int().argmax(dim=1), count.clamp_max(k - 1))
        values[rows, slot] += coef
        indices[rows, slot] = torch.where(active, i, indices[rows, slot])
        count += (active & ~seen).long()
        r -= coef[:, None] * D[i]
        corr = corr - coef[:, None] * gram[i] if gram is not None else r @ D.T
    return SparseCode(values, torch.where(values != 0, indices, torch.zeros_like(indices)))


@torch.no_grad()
def gradient_pursuit(x: Tensor, dictionary: DictionaryLike | Dictionary | Tensor, cfg: CodingConfig = CodingConfig()) -> SparseCode:
    """Gradient pursuit (Blumensath & Davies 2008), one new latent per step. x: [B, d] → SparseCode.

    Step t, with support S (the latents chosen so far, as rows D_S [t, d]) and codes a_S:

        c   = r Dᵀ                              correlations with the residual, one matmul
        S  ← S ∪ {argmax_{i ∉ S} c_i/‖D_i‖}     (largest positive correlation when non-negative)
        g_S = c_S = D_S r                       minus the gradient of ½‖x̃ − a_S D_S‖² on the support
        u   = g_S D_S                           its image in activation space, [B, d]: a gather of t rows
        α   = ⟨r, u⟩ / ‖u‖²                     exact line search along g_S
        a_S ← a_S + α g_S,  then  a_S ← max(a_S, 0) when non-negative
        r   = x̃ − a_S D_S

    Unlike the original, a latent already in S is never chosen again (its correlation is masked),
    so k steps give k slots; after clipping a slot may hold 0 (chosen, then switched off).
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
        corr = r @ D.T  # [B, n]
        scores = selection_scores(corr, dic, cfg.nonnegative).scatter_(1, indices[:, :t], -torch.inf)
        best, i = scores.max(dim=1)
        active = active & (best > 0)
        indices[:, t] = torch.where(active, i, 0)
        used[:, t] = active
        atoms[:, t] = D[i] * active[:, None]
        g = corr.gather(1, indices[:, : t + 1]) * used[:, : t + 1]  # [B, t+1]
        u = torch.bmm(g[:, None, :], atoms[:, : t + 1]).squeeze(1)  # [B, d]
        u_sq = (u * u).sum(1)
        alpha = torch.where(u_sq > 0, (r * u).sum(1) / u_sq.clamp_min(1e-30), torch.zeros_like(u_sq))
        values[:, : t + 1] += alpha[:, None] * g
        if cfg.nonnegative:
            values.clamp_(min=0)
        r = xt - torch.bmm(values[:, None, : t + 1], atoms[:, : t + 1]).squeeze(1)
    return SparseCode(values, torch.where(values != 0, indices, torch.zeros_like(indices)))

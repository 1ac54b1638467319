"""Coders that start from an SAE encoder's codes: as they are, refit on their support, or rescaled.

Shapes: B rows, R fitting rows, d width, n latents, k slots, m latents that fire on the fitting rows.
``encoder`` is any callable x [B, d] → dense codes [B, n] (an SAE's ``encode``). At a target L0 of k
the encoder's code is cut to its k largest activations; an encoder whose own L0 is below k (a TopK
SAE asked for more than its k) gives fewer non-zeros, and the achieved L0 says so.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.coding.base import (
    CodingConfig,
    Dictionary,
    DictionaryLike,
    Encoder,
    SparseCodes,
    as_dictionary,
    top_k_code,
)
from mechscope.coding.nnls import batched_nnls, solve_on


@torch.no_grad()
def encoder_code(x: Tensor, encoder: Encoder, k: int) -> SparseCodes:
    """The encoder's code, cut to its k largest activations. x: [B, d] → SparseCodes with k slots."""
    return top_k_code(encoder(x), k)


def _support_system(xt: Tensor, D: Tensor, code: SparseCodes) -> tuple[Tensor, Tensor, Tensor]:
    """Normal equations on each row's support: G_SS [B, k, k], b_S = D_S x̃ [B, k], used [B, k] bool."""
    used = code.values != 0
    atoms = D[code.indices] * used[..., None]  # [B, k, d]; zero rows for unused slots
    gram = torch.bmm(atoms, atoms.mT)
    rhs = torch.bmm(atoms, xt[:, :, None]).squeeze(2)
    return gram, rhs, used


@torch.no_grad()
def encoder_nnls(
    x: Tensor,
    dictionary: DictionaryLike | Dictionary | Tensor,
    encoder: Encoder,
    cfg: CodingConfig = CodingConfig(),
) -> SparseCodes:
    """Keep the encoder's top-k support S, refit its values by (non-negative) least squares.

        a = argmin_{a ≥ 0} ½‖x̃ − a D_S‖²   ⇔   argmin_{a ≥ 0} ½ aᵀ G_SS a − b_Sᵀ a,   G_SS = D_S D_Sᵀ,  b_S = D_S x̃

    solved exactly by :func:`mechscope.coding.nnls.batched_nnls` (an active set, in float64). The encoder's own values are
    a feasible point of the same problem, so the refit is never worse than them on that support. With
    ``cfg.nonnegative=False`` it is plain least squares on S (one batched solve).
    """
    dic = as_dictionary(dictionary)
    xt = dic.centre(x.to(dic.W_dec))
    code = encoder_code(x, encoder, cfg.k)
    gram, rhs, used = _support_system(xt, dic.W_dec, code)
    gram, rhs = gram.double(), rhs.double()
    if cfg.nonnegative:
        a = batched_nnls(gram, rhs, used, cfg.nnls_max_iter)
    else:
        a = solve_on(gram, rhs, used)
    a = a.to(xt.dtype)
    return SparseCodes(a, torch.where(a != 0, code.indices, torch.zeros_like(code.indices)))


@torch.no_grad()
def fit_posthoc_scale(
    x_fit: Tensor,
    dictionary: DictionaryLike | Dictionary | Tensor,
    encoder: Encoder,
    cfg: CodingConfig = CodingConfig(),
) -> Tensor:
    """Least-squares scale(s) s for the encoder's top-k codes c on fitting rows x_fit [R, d].

    One scalar (``cfg.per_latent_scale=False``), minimising Σ_rows ‖x̃ − s·(c D)‖²:

        s = Σ_rows ⟨x̃, c D⟩ / Σ_rows ‖c D‖²

    One scale per latent, minimising Σ_rows ‖x̃ − Σ_i s_i c_i D_i‖², from the normal equations

        (CᵀC ⊙ G + λI) s = (C ⊙ x̃Dᵀ)ᵀ1 + λ1,   G = D Dᵀ,  λ = ridge · mean diag(CᵀC ⊙ G)

    restricted to the m latents that fire on the fitting rows (the others keep s_i = 1); the
    ridge pulls rarely-firing latents towards 1. Returns a scalar tensor or s: [n].
    """
    dic = as_dictionary(dictionary)
    xt = dic.centre(x_fit.to(dic.W_dec)).double()
    codes = encoder_code(x_fit, encoder, cfg.k).dense(dic.n).double()  # [R, n]
    if not cfg.per_latent_scale:
        recon = codes @ dic.W_dec.double()
        return ((xt * recon).sum() / (recon * recon).sum().clamp_min(1e-30)).to(dic.W_dec.dtype)
    fired = (codes != 0).any(0).nonzero().squeeze(1)
    C, Dm = codes[:, fired], dic.W_dec[fired].double()  # [R, m], [m, d]
    normal = (C.T @ C) * (Dm @ Dm.T)
    lam = cfg.scale_ridge * normal.diagonal().mean()
    rhs = (C * (xt @ Dm.T)).sum(0) + lam
    normal.diagonal().add_(lam)
    scales = torch.ones(dic.n, dtype=torch.float64, device=dic.W_dec.device)
    scales[fired] = torch.linalg.solve(normal, rhs)
    return scales.to(dic.W_dec.dtype)


@torch.no_grad()
def encoder_scaled(x: Tensor, encoder: Encoder, scale: Tensor, k: int) -> SparseCodes:
    """The encoder's top-k code times a fitted scale (scalar, or [n] indexed by latent)."""
    code = encoder_code(x, encoder, k)
    factor = scale if scale.ndim == 0 else scale[code.indices]
    return SparseCodes(code.values * factor, code.indices)

"""Orthogonal matching pursuit: signed (an incremental batched Cholesky factor of the support Gram)
and non-negative (an NNLS refit of the support after each choice).

Shapes: B rows, d width, n latents, k slots, t the current support size. D = W_dec [n, d],
x̃ = x − b_dec, D_S [t, d] the chosen rows, G_SS = D_S D_Sᵀ [t, t] = L Lᵀ, b_S = D_S x̃ [t].

``cfg.nonnegative=True`` (the default; SAE codes are ≥ 0) runs non-negative OMP (Bruckstein, Elad &
Zibulevsky 2008): choose the latent most positively correlated with the residual, then refit every
chosen code by non-negative least squares, so every code is ≥ 0. ``cfg.nonnegative=False`` runs the
classic signed OMP (largest |correlation|, unconstrained least squares).
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
from mechscope.coding.nnls import batched_nnls


@torch.no_grad()
def orthogonal_matching_pursuit(
    x: Tensor, dictionary: DictionaryLike | Dictionary | Tensor, cfg: CodingConfig = CodingConfig()
) -> SparseCodes:
    """OMP: after each new latent, refit all chosen codes by least squares. x: [B, d] → SparseCodes.

    With ``cfg.nonnegative`` the refit is non-negative (:func:`nonnegative_omp`); otherwise, step t (batched over rows; only the [t, t] algebra runs in float64):

        s  = r D̂ᵀ;   i = argmax_{j ∉ S} s_j                 (s_j = ⟨r, D_j⟩/‖D_j‖; largest positive one when non-negative)
        w  = L⁻¹ D_S D_iᵀ                                   forward triangular solve, [t]
        δ  = sqrt(‖D_i‖² − ‖w‖²)                            ‖D_i‖ · sin(angle between D_i and span D_S)
        L ← [[L, 0], [wᵀ, δ]]                               so that L Lᵀ = G_{S∪i, S∪i}
        z ← [z; (⟨D_i, x̃⟩ − w·z)/δ]                         z = L⁻¹ b_S, extended by one forward step
        a_S = L⁻ᵀ z                                         back substitution: argmin ‖x̃ − a D_S‖
        r  = x̃ − a_S D_S                                    orthogonal to every chosen row

    A finished row gets a dummy slot (zero row, w = 0, δ = 1, b = 0), which leaves its solution
    unchanged.
    """
    if cfg.nonnegative:
        return nonnegative_omp(x, dictionary, cfg)
    dic = as_dictionary(dictionary)
    D = dic.W_dec
    xt = dic.centre(x.to(D))
    B, k = xt.shape[0], min(cfg.k, dic.n, dic.d)  # more than d rows cannot be independent

    indices = torch.zeros(B, k, dtype=torch.long, device=D.device)
    atoms = xt.new_zeros(B, k, D.shape[1])  # D_S, zero rows for dummy slots
    L = torch.zeros(B, k, k, dtype=torch.float64, device=D.device)
    z = torch.zeros(B, k, dtype=torch.float64, device=D.device)
    a = torch.zeros(B, 0, dtype=torch.float64, device=D.device)
    active = torch.ones(B, dtype=torch.bool, device=D.device)
    x_norm = xt.norm(dim=1)
    r = xt.clone()
    for t in range(k):
        active = still_active(active, r, x_norm, cfg.tol)
        if not active.any():
            break
        _, i, ok = choose(r @ dic.unit.T, indices[:, :t], nonnegative=False)
        active = active & ok
        atom = D[i] * active[:, None]  # [B, d]
        w = torch.bmm(atoms[:, :t], atom[:, :, None]).double()  # [B, t, 1] = D_S D_iᵀ
        w = torch.linalg.solve_triangular(L[:, :t, :t], w, upper=False).squeeze(2)
        atom_sq = (dic.norms[i].double() * active) ** 2
        # Clamp: rounding can make ‖D_i‖² − ‖w‖² slightly negative when D_i nearly lies in the span.
        delta = (atom_sq - (w * w).sum(1)).clamp_min(1e-12 * atom_sq).sqrt()
        delta = torch.where(active, delta, torch.ones_like(delta))
        L[:, t, :t] = w
        L[:, t, t] = delta
        b_i = (atom * xt).sum(1).double()
        z[:, t] = (b_i - (w * z[:, :t]).sum(1)) / delta
        a = torch.linalg.solve_triangular(L[:, : t + 1, : t + 1].mT, z[:, : t + 1, None], upper=True).squeeze(2)
        indices[:, t] = torch.where(active, i, 0)
        atoms[:, t] = atom
        r = xt - torch.bmm(a.to(xt.dtype)[:, None, :], atoms[:, : t + 1]).squeeze(1)
    values = xt.new_zeros(B, k)
    values[:, : a.shape[1]] = a.to(xt.dtype)
    return SparseCodes(values, torch.where(values != 0, indices, torch.zeros_like(indices)))


@torch.no_grad()
def nonnegative_omp(
    x: Tensor, dictionary: DictionaryLike | Dictionary | Tensor, cfg: CodingConfig = CodingConfig()
) -> SparseCodes:
    """Non-negative OMP: every code ≥ 0. x: [B, d] → SparseCodes.

    Step t (batched over rows; the [t, t] algebra in float64):

        s = r D̂ᵀ;   i = argmax_{j ∉ S} s_j, only if s_i > 0 (else the row stops)
        S ← S ∪ {i};  G_SS, b_S extended by one row and column
        a_S = argmin_{a ≥ 0} ½‖x̃ − a D_S‖²        (:func:`mechscope.coding.nnls.batched_nnls`,
                                                   warm-started at the previous a_S, so ~2 solves a step)
        r = x̃ − a_S D_S

    Departure from the textbook statement: a chosen latent whose NNLS coefficient falls to 0 keeps
    its slot (value 0) and is not offered again. By the NNLS optimality conditions its correlation
    with the new residual is ≤ 0, so the positive-correlation choice would not take it at once anyway;
    keeping it fixes the slot count at k.
    """
    dic = as_dictionary(dictionary)
    D = dic.W_dec
    xt = dic.centre(x.to(D))
    B, k = xt.shape[0], min(cfg.k, dic.n, dic.d)

    indices = torch.zeros(B, k, dtype=torch.long, device=D.device)
    atoms = xt.new_zeros(B, k, D.shape[1])  # D_S, zero rows for unused slots
    gram = torch.zeros(B, k, k, dtype=torch.float64, device=D.device)
    rhs = torch.zeros(B, k, dtype=torch.float64, device=D.device)
    allowed = torch.zeros(B, k, dtype=torch.bool, device=D.device)
    a = torch.zeros(B, k, dtype=torch.float64, device=D.device)
    active = torch.ones(B, dtype=torch.bool, device=D.device)
    x_norm = xt.norm(dim=1)
    r = xt.clone()
    for t in range(k):
        active = still_active(active, r, x_norm, cfg.tol)
        if not active.any():
            break
        _, i, ok = choose(r @ dic.unit.T, indices[:, :t], nonnegative=True)
        active = active & ok
        atom = D[i] * active[:, None]  # [B, d]
        atoms[:, t] = atom
        indices[:, t] = torch.where(active, i, 0)
        col = torch.bmm(atoms[:, : t + 1], atom[:, :, None]).squeeze(2).double()  # [B, t+1] = D_S D_iᵀ
        gram[:, t, : t + 1] = col
        gram[:, : t + 1, t] = col
        rhs[:, t] = (atom * xt).sum(1).double()
        allowed[:, t] = active
        a[:, : t + 1] = batched_nnls(
            gram[:, : t + 1, : t + 1], rhs[:, : t + 1], allowed[:, : t + 1], cfg.nnls_max_iter, start=a[:, : t + 1]
        )
        r = xt - torch.bmm(a[:, None, : t + 1].to(xt.dtype), atoms[:, : t + 1]).squeeze(1)
    values = a.to(xt.dtype)
    return SparseCodes(values, torch.where(values != 0, indices, torch.zeros_like(indices)))

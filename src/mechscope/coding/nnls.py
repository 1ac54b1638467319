"""Non-negative least squares on small batched systems, shared by the encoder refit and non-negative OMP.

Shapes: B rows, k slots. Each row solves its own k×k normal equations G a = b (G = D_S D_Sᵀ, b = D_S x̃),
restricted to the slots it may use; float64 is the caller's choice.
"""

from __future__ import annotations

import torch
from torch import Tensor


def solve_on(gram: Tensor, rhs: Tensor, free: Tensor) -> Tensor:
    """Least squares on each row's free slots, zero elsewhere: G_FF a_F = b_F. [B, k, k], [B, k], [B, k] → [B, k]."""
    pair = free[:, :, None] & free[:, None, :]
    # Identity on the fixed slots keeps the system invertible; a relative 1e-12 ridge covers duplicate rows.
    ridge = 1e-12 * gram.diagonal(dim1=1, dim2=2).amax(1).clamp_min(1e-30)
    diag = torch.where(free, ridge[:, None], torch.ones_like(rhs))
    system = gram * pair + torch.diag_embed(diag)
    return torch.linalg.solve(system, (rhs * free)[..., None]).squeeze(-1) * free


def batched_nnls(gram: Tensor, rhs: Tensor, allowed: Tensor, max_iter: int, start: Tensor | None = None) -> Tensor:
    """min_{a ≥ 0, a = 0 off ``allowed``} ½ aᵀGa − bᵀa per row, by a batched Lawson–Hanson active set.

    gram [B, k, k], rhs [B, k], allowed [B, k] → a [B, k]. The free set F starts empty (a = 0), or,
    given a feasible ``start`` [B, k] (≥ 0, zero off ``allowed``; e.g. the optimum before a slot was
    allowed), at a = start with F = {i : start_i > 0}. One iteration, for every row at once:

        z = argmin over F (one batched solve)
        if some z_i ≤ 0 (i ∈ F):  θ = min_{i ∈ F, z_i ≤ 0} a_i/(a_i − z_i);  a ← a + θ(z − a);
                                  drop from F the slot that reached 0
        else:                     a ← z;  w = b − G a;  add argmax_{i ∉ F, allowed} w_i to F if w_i > 0,
                                  otherwise a satisfies the KKT conditions and the row is done

    F stays linearly independent, so every solve is well posed even when k > d. A row whose
    newly added slot is refused at once (rounding) stops where it is.
    """
    B, k = rhs.shape
    slots = torch.arange(k, device=rhs.device)
    a = torch.zeros_like(rhs) if start is None else (start * allowed).clamp_min(0)
    free = a > 0
    just_added = torch.full((B,), -1, dtype=torch.long, device=rhs.device)
    done = ~allowed.any(1)
    kkt_tol = 1e-10 * rhs.abs().amax(1, keepdim=True)
    for _ in range(max_iter):
        if done.all():
            break
        z = solve_on(gram, rhs, free)
        blocked = free & (z <= 0) & ~done[:, None]
        ratio = torch.where(blocked, a / (a - z).clamp_min(1e-300), torch.full_like(a, torch.inf))
        theta, first = ratio.min(1)
        stepping = blocked.any(1)
        done = done | (stepping & (first == just_added) & (theta <= 0))
        stepping = stepping & ~done
        landed = ~blocked.any(1) & ~done
        moved = a + theta.clamp(0, 1)[:, None] * (z - a)
        a = torch.where(stepping[:, None], moved, torch.where(landed[:, None], z, a))
        hit = stepping[:, None] & (slots == first[:, None])
        a = torch.where(hit, torch.zeros_like(a), a).clamp_min(0)
        free = free & ~hit
        w = rhs - torch.bmm(gram, a[:, :, None]).squeeze(2)
        candidates = allowed & ~free & (w > kkt_tol) & landed[:, None]
        adding = candidates.any(1)
        best = torch.where(candidates, w, torch.full_like(w, -torch.inf)).argmax(1)
        free = free | (adding[:, None] & (slots == best[:, None]))
        just_added = torch.where(adding, best, torch.full_like(best, -1))
        done = done | (landed & ~adding)
    return a * allowed

"""Two measures of *which* latents a coder chooses (reconstruction metrics live in evals.metrics).

Shapes: B rows, d width, n latents, k slots.

- support Jaccard  = mean over rows of |S_a ∩ S_b| / |S_a ∪ S_b|, S the set of latents with a
                     non-zero code; 1 for a row where both sets are empty.
- span cosine      = for the t-th non-zero latent of a row's code (slots taken in the order the coder
                     chose them, t ≥ 2), with unit decoder row u_t = D_{i_t}/‖D_{i_t}‖ and P_{<t} the
                     orthogonal projection onto span{D_{i_1}, …, D_{i_{t−1}}}:
                         |cos(u_t, P_{<t} u_t)| = ‖P_{<t} u_t‖   (0 when P_{<t} u_t = 0)
                     i.e. how far the new latent lies inside the span of those chosen before it
                     (0: orthogonal to it, 1: inside it). Latents later set to zero (a clipped
                     gradient-pursuit slot) are not counted, in either role.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.coding.base import SparseCodes


def support_jaccard(a: SparseCodes, b: SparseCodes, n: int) -> Tensor:
    """[B] per-row Jaccard overlap of the non-zero supports of two codes over n latents."""
    sa, sb = a.support(n), b.support(n)
    inter = (sa & sb).sum(1).double()
    union = (sa | sb).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def span_cosines(code: SparseCodes, W_dec: Tensor) -> tuple[Tensor, Tensor]:
    """Span cosine of each chosen latent (see module docstring) → (cos [B, k], valid [B, k] bool).

    Position t of the outputs is the row's t-th non-zero latent in the order the coder chose it.

    Non-zero slots are moved to the front, keeping their order, and their unit rows U [B, k, d]
    are factorised Uᵀ = Q R (batched QR). Column t of R holds the coordinates of u_t in the
    orthonormal basis q_1..q_t, and q_1..q_{t−1} span the earlier rows, so ‖P_{<t} u_t‖ = ‖R[:t, t]‖.
    ``valid`` marks the slots that have at least one non-zero latent before them.
    """
    nonzero = code.values != 0
    order = torch.argsort((~nonzero).int(), dim=1, stable=True)  # non-zero slots first, in order
    idx = code.indices.gather(1, order)
    keep = nonzero.gather(1, order)
    U = torch.nn.functional.normalize(W_dec[idx].double(), dim=-1) * keep[..., None]  # [B, k, d]
    R = torch.linalg.qr(U.mT, mode="r").R  # [B, min(d, k), k]
    k = idx.shape[1]
    above = torch.ones(R.shape[1], k, dtype=torch.bool, device=R.device).triu(1)  # rows j < t
    cos = ((R * above) ** 2).sum(1).sqrt().clamp_max(1.0)
    valid = keep & (torch.arange(k, device=R.device) >= 1)
    return cos.to(code.values.dtype), valid

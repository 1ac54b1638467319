"""Per-row reference pursuits, written the obvious way: the yardstick for tests and ``bench/coding.py``.

Slow on purpose (a Python loop over rows and over steps, one matvec per step); use the batched
coders for work. Same choices as the batched ones with non-negative codes and unit-norm rows:
take the not-yet-chosen latent with the largest correlation ⟨r, D_i⟩, stop at k latents.
Shapes: B rows, d width, n latents, k steps. x: [B, d], D: [n, d] → dense codes [B, n].
"""

from __future__ import annotations

import torch
from torch import Tensor


def _next_latent(D: Tensor, r: Tensor, support: list[int], signed: bool = False) -> int:
    c = D @ r
    if signed:
        c = c.abs()
    c[support] = -torch.inf
    return int(c.argmax())


@torch.no_grad()
def reference_omp(x: Tensor, D: Tensor, k: int, nonnegative: bool = False) -> Tensor:
    """OMP row by row: add the best latent, then refit every chosen code with ``torch.linalg.lstsq``.

    ``nonnegative=True``: only a positive correlation is taken (a row without one stops), and the
    refit is ``scipy.optimize.nnls`` (an implementation independent of mechscope's). ``False``: the
    largest |correlation| and plain least squares.
    """
    from scipy.optimize import nnls

    out = x.new_zeros(x.shape[0], D.shape[0])
    for row, xr in enumerate(x):
        support: list[int] = []
        r, coef = xr, xr.new_zeros(0)
        for _ in range(k):
            i = _next_latent(D, r, support, signed=not nonnegative)
            if nonnegative and float(D[i] @ r) <= 0:
                break
            support.append(i)
            if nonnegative:
                coef = torch.from_numpy(nnls(D[support].T.numpy(), xr.numpy())[0]).to(xr)
            else:
                coef = torch.linalg.lstsq(D[support].T, xr[:, None]).solution.squeeze(1)
            r = xr - coef @ D[support]
        out[row, support] = coef
    return out


@torch.no_grad()
def reference_gp(x: Tensor, D: Tensor, k: int) -> Tensor:
    """Gradient pursuit row by row: add the best latent, one exact-line-search gradient step, clip at 0."""
    out = x.new_zeros(x.shape[0], D.shape[0])
    for row, xr in enumerate(x):
        support: list[int] = []
        a = x.new_zeros(0)
        r = xr
        for _ in range(k):
            support.append(_next_latent(D, r, support))
            a = torch.cat([a, a.new_zeros(1)])
            g = D[support] @ r
            u = g @ D[support]
            a = (a + (r @ u) / (u @ u) * g).clamp_min(0)
            r = xr - a @ D[support]
        out[row, support] = a
    return out

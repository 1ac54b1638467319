"""Feature and data dimensionality (Elhage et al. 2022, "Toy Models of Superposition"; Henighan et al. 2023,
"Superposition, Memorization, and Double Descent").

Shapes: n features, m hidden dimensions, T examples.

For the rows W_i of W [n, m] (feature i's embedding):

    D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²,          Ŵ_i = W_i / ‖W_i‖,

the fraction of a dimension feature i owns: 1 for a feature with a dimension to itself, 1/2 for each
of an antipodal pair, 2/5 for each corner of a pentagon in 2 dimensions, 0 for a feature not
represented (‖W_i‖ = 0; defined so here). Dimensions per feature = m / ‖W‖²_F.

Data dimensionality applies the same formula to the hidden vectors h_t of T examples, H [T, m]:
D_t = ‖h_t‖² / Σ_s (ĥ_t · h_s)².
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.errors import UsageError


def _dimensionality(W: Tensor, what: str) -> Tensor:
    if W.ndim != 2 or W.shape[0] == 0:
        raise UsageError(f"{what} must be a non-empty 2-D matrix, got shape {tuple(W.shape)}")
    W = W.detach().double()
    sq = W.pow(2).sum(1)  # [n] ‖W_i‖²
    norms = sq.sqrt()
    unit = W / norms.clamp_min(1e-30)[:, None]
    overlap = (unit @ W.T).pow(2).sum(1)  # [n] Σ_j (Ŵ_i·W_j)²
    return torch.where(sq > 0, sq / overlap.clamp_min(1e-300), torch.zeros_like(sq)).float()


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² for W [n_features, m] → [n_features] (0 where W_i = 0)."""
    return _dimensionality(W, "W [n_features, m]")


def data_dimensionality(H: Tensor) -> Tensor:
    """D_t = ‖h_t‖² / Σ_s (ĥ_t·h_s)² for hidden vectors H [T, m] → [T] (0 where h_t = 0)."""
    return _dimensionality(H, "H [T, m]")


def dims_per_feature(W: Tensor) -> float:
    """m / ‖W‖²_F for W [n_features, m]: 1 with one dimension per feature, 2/5 for a pentagon in 2-D."""
    total = float(W.detach().double().pow(2).sum())
    if total == 0:
        raise UsageError("W is all zeros: no feature is represented, dimensions per feature is undefined")
    return W.shape[1] / total

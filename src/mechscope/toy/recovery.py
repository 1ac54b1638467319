"""Ground-truth recovery of a dictionary: how well learned latents match the true feature directions.

Shapes: F true features, n latents, d width, B rows.

- MMCS (mean max cosine similarity) = (1/F) Σ_f max_j cos(t_f, w_j), true directions t [F, d],
  dictionary rows w [n, d].
- One-to-one matching: the Hungarian assignment (scipy's ``linear_sum_assignment``) maximising
  Σ cos(t_f, w_π(f)) with each latent used at most once; reported as the mean matched cosine and the
  fraction of true features matched above cosine 0.9.
- Support precision / recall / F1 per row: the predicted set of a row is {π⁻¹(j) : code_j ≠ 0} (an
  active latent with no matched feature, or matched below ``min_cos``, is a false positive); the true
  set is the row's active features. P = |pred ∩ true|/|pred|, R = |pred ∩ true|/|true|,
  F1 = 2|pred ∩ true| / (|pred| + |true|), each averaged over the rows where its denominator is non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def _unit(W: Tensor) -> Tensor:
    W = W.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosines(truth: Tensor, dictionary: Tensor) -> Tensor:
    """[F, n] cos(t_f, w_j) for truth [F, d] and dictionary [n, d]."""
    return _unit(truth) @ _unit(dictionary).T


def mmcs(truth: Tensor, dictionary: Tensor) -> float:
    """Mean over true features of the largest cosine with any dictionary row."""
    return float(cosines(truth, dictionary).max(1).values.mean())


@dataclass(frozen=True)
class Matching:
    """One-to-one assignment of true features to latents."""

    feature_of_latent: Tensor
    """[n] int64: the true feature matched to each latent, −1 when unmatched or matched below min_cos."""
    cos: Tensor
    """[F] cosine of each true feature with its matched latent (0 when unmatched)."""

    def fraction_above(self, threshold: float = 0.9) -> float:
        return float((self.cos > threshold).float().mean())


def hungarian(truth: Tensor, dictionary: Tensor, min_cos: float = 0.0) -> Matching:
    """Hungarian matching maximising the summed cosine; pairs below ``min_cos`` are not counted as matched."""
    C = cosines(truth, dictionary).cpu().numpy().astype(np.float64)  # scipy reads host memory
    rows, cols = linear_sum_assignment(C, maximize=True)
    F, n = C.shape
    feature_of_latent = torch.full((n,), -1, dtype=torch.long)
    cos = torch.zeros(F)
    for f, j in zip(rows, cols):
        cos[f] = float(C[f, j])
        if C[f, j] > min_cos:
            feature_of_latent[j] = int(f)
    return Matching(feature_of_latent, cos)


def support_scores(active: Tensor, codes_support: Tensor, feature_of_latent: Tensor) -> dict[str, float]:
    """Per-row precision, recall, F1 (formulas above). active [B, F] bool, codes_support [B, n] bool."""
    B, F = active.shape
    mapped = feature_of_latent >= 0
    pred_true = torch.zeros(B, F, dtype=torch.bool)
    sup = codes_support & mapped[None, :]
    rows, latents = sup.nonzero(as_tuple=True)
    pred_true[rows, feature_of_latent[latents]] = True
    hits = (pred_true & active).sum(1).double()
    n_pred = codes_support.sum(1).double()  # every active latent counts, matched or not
    n_true = active.sum(1).double()

    def mean_ratio(num: Tensor, den: Tensor) -> float:
        ok = den > 0
        return float((num[ok] / den[ok]).mean()) if bool(ok.any()) else float("nan")

    return {
        "precision": mean_ratio(hits, n_pred),
        "recall": mean_ratio(hits, n_true),
        "f1": mean_ratio(2 * hits, n_pred + n_true),
    }

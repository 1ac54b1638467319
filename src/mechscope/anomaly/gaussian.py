"""Mahalanobis distance to the trusted activations, and the Gaussian fit it shares with QUE and spectral.

Per site, in float64: mean μ and covariance Σ̂ of the trusted rows; Σ̂ is the Ledoit–Wolf shrinkage
estimate (scikit-learn: Σ̂ = (1 − ρ)·S + ρ·(tr S / d)·I with ρ chosen to minimise the expected Frobenius
error) or, with ``shrinkage="none"``, the sample covariance S (which needs more rows than dimensions).
Score d²(x) = (x − μ)ᵀ Σ̂⁻¹ (x − μ). The whitening map W = Σ̂^(-1/2) (symmetric, by eigendecomposition)
gives ‖W(x − μ)‖² = d²(x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mechscope.anomaly.base import Activations, Detector, DetectorConfig, register
from mechscope.errors import UsageError


@dataclass(frozen=True)
class GaussianConfig(DetectorConfig):
    """Settings of the detectors built on a Gaussian fit of the trusted activations."""

    shrinkage: Literal["ledoit-wolf", "none"] = "ledoit-wolf"
    """Covariance estimate: Ledoit–Wolf shrinkage (any number of rows) or the plain sample covariance."""


def fit_gaussian(x: Tensor, shrinkage: str, site: str) -> tuple[Tensor, Tensor]:
    """(μ [d], W = Σ̂^(-1/2) [d, d]) of rows x [N, d], float64."""
    n, d = x.shape
    x = x.double()
    mu = x.mean(0)
    if shrinkage == "ledoit-wolf":
        from sklearn.covariance import LedoitWolf

        cov = torch.from_numpy(LedoitWolf(assume_centered=False).fit(x.numpy()).covariance_)
    else:
        if n <= d:
            raise UsageError(
                f"site {site!r}: {n} trusted rows for {d} dimensions, the sample covariance is singular; "
                "use `shrinkage`='ledoit-wolf' or give more trusted inputs"
            )
        xc = x - mu
        cov = xc.T @ xc / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    floor = evals.max().clamp_min(1e-300) * 1e-12  # a numerically flat direction must not dominate the score
    w = evecs @ torch.diag(evals.clamp_min(floor).rsqrt()) @ evecs.T
    return mu, w


class GaussianDetector(Detector):
    """Base of the detectors that whiten each site with the trusted mean and covariance."""

    config_cls = GaussianConfig
    cfg: GaussianConfig

    def fit_sites(self, acts: Activations, *, anomalous=None, outputs=None) -> None:
        self.gauss = {s: fit_gaussian(a, self.cfg.shrinkage, s) for s, a in acts.items()}

    def whiten(self, site: str, x: Tensor) -> Tensor:
        """[N, d] → [N, d]: W (x − μ)."""
        mu, w = self.gauss[site]
        return (x.double() - mu) @ w


@register
class Mahalanobis(GaussianDetector):
    """d²(x) = (x − μ)ᵀ Σ̂⁻¹ (x − μ) per site."""

    name = "mahalanobis"

    def score_sites(self, acts: Activations, *, outputs=None, calibrating=False) -> dict[str, Tensor]:
        return {s: self.whiten(s, a).pow(2).sum(1) for s, a in acts.items()}

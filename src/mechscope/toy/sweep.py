"""The sparsity sweep of Elhage et al. 2022: as features get sparser, the ReLU toy model packs more of
them into its m dimensions, and dimensions per feature m/‖W‖²_F falls from 1 through plateaus where
the features sit in regular geometries (1/2 antipodal pairs, 2/5 pentagons, 1/3 triangles …).
Defaults n = 100, m = 10, 20 points of p from 1 to 0.02, 3 instances each: smaller than the paper's
sweep (the paper trains n = 400, m = 30 longer) so the whole sweep runs in minutes on one CPU thread.

Shapes: n features, m hidden dimensions, P sparsity points.
For each activation probability p (1 − S in the paper) a TMS model is trained (the lowest-loss of
``instances``) and we record m/‖W‖²_F and every feature's D_i (see :mod:`mechscope.toy.dimensionality`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mechscope.errors import UsageError
from mechscope.toy.dimensionality import dims_per_feature, feature_dimensionality
from mechscope.toy.features import FeatureConfig
from mechscope.toy.models import ToyModelConfig, check_superposition, train_toy

PLATEAUS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8, 1 / 3, 1 / 4)
"""Fractions of a dimension that regular geometries give (digon 1/2, pentagon 2/5, tetrahedron 3/4,
square antiprism 3/8, a regular k-gon in a 2-d subspace 2/k: hexagon 1/3, octagon 1/4 …)."""


@dataclass(frozen=True)
class SweepConfig:
    """The sparsity sweep: model size, the probabilities swept, the training budget."""

    n_features: int = 100
    """Features n (uniform importance)."""
    dims: int = 10
    """Hidden dimensions m."""
    p_max: float = 1.0
    """Densest point: probability that a feature is active."""
    p_min: float = 0.02
    """Sparsest point (with n/m = 10 the model reaches its floor of 0.1 dimensions per feature near p = 0.03)."""
    points: int = 20
    """Probabilities swept, log-spaced from p_max to p_min."""
    instances: int = 3
    """Initialisations per point (the lowest loss is kept; every instance's m/‖W‖²_F is reported too)."""
    steps: int = 1000
    """Adam steps per point (cosine decay of the learning rate to 0)."""
    lr: float = 1e-2
    """Peak Adam learning rate."""
    batch_size: int = 1024
    """Rows per step."""
    seed: int = 0
    """Seed of the features and the initialisation."""

    def __post_init__(self) -> None:
        if self.points < 2:
            raise UsageError(f"a sweep needs at least two points, got `points` {self.points}")
        if not 0 < self.p_min < self.p_max <= 1:
            raise UsageError(f"need 0 < p_min < p_max ≤ 1, got p_min={self.p_min}, p_max={self.p_max}")
        check_superposition(self.n_features, self.dims, "`n_features`")
        if min(self.instances, self.steps, self.batch_size) < 1:
            raise UsageError(
                f"`instances`, `steps` and `batch_size` must be ≥ 1, got {self.instances}, {self.steps}, {self.batch_size}"
            )
        if not 0 < self.lr < math.inf:
            raise UsageError(f"`lr` must be positive and finite, got {self.lr}")

    def ps(self) -> list[float]:
        return [float(p) for p in np.geomspace(self.p_max, self.p_min, self.points)]


def sparsity_sweep(cfg: SweepConfig, progress: bool = True) -> list[dict[str, Any]]:
    """One dict per p: ``p``, ``dims_per_feature``, ``feature_dimensionality`` (list), ``norms`` (list), ``loss``
    of the best instance, and ``instance_dims_per_feature`` (list, every instance)."""
    out = []
    for p in tqdm(cfg.ps(), disable=not progress, desc="sparsity sweep", unit="point"):
        trained = train_toy(
            FeatureConfig(n_features=cfg.n_features, p=p, seed=cfg.seed),
            ToyModelConfig(
                dims=cfg.dims,
                instances=cfg.instances,
                steps=cfg.steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                seed=cfg.seed,
            ),
        )
        W = trained.W()
        out.append(
            {
                "p": p,
                "dims_per_feature": dims_per_feature(W),
                "feature_dimensionality": feature_dimensionality(W).tolist(),
                "norms": W.norm(dim=1).tolist(),
                "loss": float(trained.losses[trained.best]),
                "instance_dims_per_feature": [dims_per_feature(trained.W(i)) for i in range(cfg.instances)],
            }
        )
    return out


def plateau_hits(values: list[float], plateaus: tuple[float, ...] = PLATEAUS, tol: float = 0.02) -> dict[float, int]:
    """How many of ``values`` (m/‖W‖²_F of the swept points, or the Dᵢ of features) lie within ``tol``
    of each plateau fraction: |v − f| ≤ tol. A value near two fractions counts for both."""
    if not tol > 0:
        raise UsageError(f"`tol` must be > 0, got {tol}")
    v = np.asarray(values, dtype=float)
    return {f: int((np.abs(v - f) <= tol).sum()) for f in plateaus}

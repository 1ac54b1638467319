"""Nearest-neighbour detectors on activations (scikit-learn): k-NN distance and local outlier factor.

Each site's rows are standardised with the trusted mean and per-dimension standard deviation first
(so that one wide dimension does not decide the distances).

- ``knn``: score(x) = Euclidean distance from x to its k-th nearest trusted row.
- ``lof``: local outlier factor (Breunig et al. 2000), scikit-learn's ``LocalOutlierFactor(novelty=True)``;
  score = −``score_samples`` = the LOF of x (≈ 1 inside the trusted cloud, larger outside).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechscope.anomaly.base import Activations, Detector, DetectorConfig, register
from mechscope.errors import UsageError


@dataclass(frozen=True)
class NeighbourConfig(DetectorConfig):
    """Settings of the nearest-neighbour detectors."""

    k: int = 10
    """Neighbours: the k-th distance (knn) or the neighbourhood size (lof)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise UsageError(f"k must be at least 1, got {self.k}")


class _Neighbours(Detector):
    config_cls = NeighbourConfig
    cfg: NeighbourConfig

    def fit_sites(self, acts: Activations, *, anomalous=None, outputs=None) -> None:
        self.norm = {s: (a.mean(0), a.std(0).clamp_min(1e-8)) for s, a in acts.items()}
        for s, a in acts.items():
            if len(a) <= self.cfg.k:
                raise UsageError(
                    f"site {s!r}: {len(a)} trusted rows to fit, need more than k={self.cfg.k}; lower k or give more inputs"
                )
        self.models = {s: self._fit_one(self._np(s, a)) for s, a in acts.items()}

    def _fit_one(self, x: np.ndarray) -> Any:
        """The fitted scikit-learn model of one site's standardised rows x [N, d]."""
        raise NotImplementedError

    def _score_one(self, model: Any, x: np.ndarray) -> np.ndarray:
        """[N] the anomaly score of each standardised row x [N, d] under ``model``."""
        raise NotImplementedError

    def _np(self, site: str, x: Tensor) -> np.ndarray:
        mu, sd = self.norm[site]
        return ((x - mu) / sd).numpy()

    def score_sites(self, acts: Activations, *, outputs=None, calibrating=False) -> dict[str, Tensor]:
        return {
            s: torch.from_numpy(np.asarray(self._score_one(self.models[s], self._np(s, a)), dtype=np.float64))
            for s, a in acts.items()
        }


@register
class KNN(_Neighbours):
    """Distance to the k-th nearest trusted row."""

    name = "knn"

    def _fit_one(self, x: np.ndarray):
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=self.cfg.k).fit(x)

    def _score_one(self, nn, x: np.ndarray) -> np.ndarray:
        return nn.kneighbors(x)[0][:, -1]


@register
class LOF(_Neighbours):
    """Local outlier factor against the trusted rows."""

    name = "lof"

    def _fit_one(self, x: np.ndarray):
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor(n_neighbors=self.cfg.k, novelty=True).fit(x)

    def _score_one(self, lof, x: np.ndarray) -> np.ndarray:
        return -lof.score_samples(x)

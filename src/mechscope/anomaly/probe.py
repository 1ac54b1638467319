"""Supervised linear probe: logistic regression on trusted (label 0) vs known-anomalous (label 1) rows.

It sees anomaly labels, which a deployed detector never has, so it is reported only as a CEILING on what
a linear read-out of the site can separate. Rows are standardised with the pooled mean and standard
deviation; scikit-learn ``LogisticRegression`` (L2, C = ``c``); score = the decision function wᵀx + b.
The anomalous rows it is fitted on must not be scored (``evaluate`` holds them out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mechscope.anomaly.base import Activations, Detector, DetectorConfig, register
from mechscope.errors import UsageError


@dataclass(frozen=True)
class ProbeConfig(DetectorConfig):
    """Settings of the supervised probe."""

    c: float = 1.0
    """Inverse L2 strength of the logistic regression."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.c <= 0:
            raise UsageError(f"c must be positive, got {self.c}")


@register
class Probe(Detector):
    """Logistic regression that sees anomaly labels (a ceiling, not a detector)."""

    name = "probe"
    config_cls = ProbeConfig
    cfg: ProbeConfig
    supervised = True

    def fit_sites(self, acts: Activations, *, anomalous: Activations | None = None, outputs=None) -> None:
        from sklearn.linear_model import LogisticRegression

        if anomalous is None or not all(len(a) for a in anomalous.values()):
            raise UsageError("the probe is supervised: give anomalous examples to fit it on (they are then held out)")
        self.probes, self.norm = {}, {}
        for s, x in acts.items():
            both = torch.cat([x, anomalous[s]])
            mu, sd = both.mean(0), both.std(0).clamp_min(1e-8)
            y = np.r_[np.zeros(len(x)), np.ones(len(anomalous[s]))]
            self.norm[s] = (mu, sd)
            self.probes[s] = LogisticRegression(C=self.cfg.c, max_iter=2000).fit(((both - mu) / sd).numpy(), y)

    def score_sites(self, acts: Activations, *, outputs=None, calibrating=False) -> dict[str, Tensor]:
        return {
            s: torch.from_numpy(
                self.probes[s].decision_function(((x - self.norm[s][0]) / self.norm[s][1]).numpy())
            ).double()
            for s, x in acts.items()
        }

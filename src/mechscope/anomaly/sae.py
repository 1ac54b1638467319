"""SAE-based detector: a sparse autoencoder trained on trusted activations, per site.

Trained with :class:`mechscope.sae.Trainer` on rows drawn (seeded, with replacement) from the trusted
fit rows; the architecture comes from :data:`mechscope.sae.REGISTRY` (default TopK). Two raw terms:

- reconstruction error e(x) = ‖x − x̂‖²;
- rarity r(x) = mean over the latents that fire on x of −log f_j, where
  f_j = (#trusted rows on which latent j fires + 1) / (N + 2) (Laplace-smoothed firing frequency), so a
  latent that never fired on trusted data counts −log(1/(N + 2)).

The site's raw score is the sum of the two terms, each standardised by its mean and standard deviation
on the trusted fit rows (``term`` picks one of them alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mechscope.anomaly.base import Activations, Detector, DetectorConfig, register
from mechscope.errors import UsageError


@dataclass(frozen=True)
class SAEDetectorConfig(DetectorConfig):
    """Settings of the SAE detector."""

    arch: str = "topk"
    """SAE architecture (a key of mechscope.sae.REGISTRY); k is set for those that take it."""
    expansion: int = 4
    """Latents per activation dimension (latents = expansion · d)."""
    k: int = 8
    """Active latents per row, for the architectures that take k."""
    steps: int = 400
    """Training steps of each site's SAE."""
    sae_batch_size: int = 128
    """Rows per SAE training step (at most the number of trusted fit rows)."""
    lr: float = 2e-3
    """Adam learning rate of the SAE."""
    term: Literal["both", "recon", "rare"] = "both"
    """Which raw term scores: reconstruction error, latent rarity, or the sum of both standardised."""
    seed: int = 0
    """Seed of the SAE's initialisation and of the rows it trains on."""

    def __post_init__(self) -> None:
        super().__post_init__()
        from mechscope.sae import REGISTRY

        if self.arch not in REGISTRY:
            raise UsageError(f"unknown SAE architecture {self.arch!r}; choose one of: {', '.join(REGISTRY)}")
        if min(self.expansion, self.k, self.steps, self.sae_batch_size) < 1 or self.lr <= 0:
            raise UsageError("expansion, k, steps, sae_batch_size and lr must be positive")


@register
class SAEDetector(Detector):
    """Reconstruction error plus rarely-firing latents of an SAE trained on trusted activations."""

    name = "sae"
    config_cls = SAEDetectorConfig
    cfg: SAEDetectorConfig

    def _train(self, x: Tensor):
        from mechscope.sae import REGISTRY, Member, OptimConfig, TrainConfig, Trainer

        cfg = self.cfg
        cls = REGISTRY[cfg.arch]
        latents = cfg.expansion * x.shape[1]
        kw = {"k": min(cfg.k, latents)} if "k" in cls.config_cls.__dataclass_fields__ else {}
        batch = min(cfg.sae_batch_size, len(x))
        member = Member(
            cls.config_cls(d_in=x.shape[1], latents=latents, **kw),
            OptimConfig(lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10)),
        )
        trainer = Trainer(
            [member],
            TrainConfig(
                steps=cfg.steps,
                batch_size=batch,
                seed=cfg.seed,
                device="cpu",
                checkpoint_every=0,
                progress=False,
                log_every=cfg.steps,
            ),
        )
        g = torch.Generator().manual_seed(cfg.seed)
        xf = x.float()
        trainer.fit(xf[torch.randint(len(xf), (batch,), generator=g)] for _ in range(cfg.steps))
        return trainer.export(0)

    @torch.no_grad()
    def _terms(self, site: str, x: Tensor) -> tuple[Tensor, Tensor]:
        sae, log_f = self.saes[site], self.log_freq[site]
        xf = x.float()
        codes = sae.encode(xf)
        err = (sae.decode(codes) - xf).pow(2).sum(1).double()
        fired = (codes != 0).double()
        rare = (fired * -log_f).sum(1) / fired.sum(1).clamp_min(1)
        return err, rare

    def fit_sites(self, acts: Activations, *, anomalous=None, outputs=None) -> None:
        self.saes, self.log_freq, self.term_scale = {}, {}, {}
        for s, x in acts.items():
            sae = self._train(x)
            self.saes[s] = sae
            with torch.no_grad():
                counts = (sae.encode(x.float()) != 0).double().sum(0)
            self.log_freq[s] = ((counts + 1) / (len(x) + 2)).log()
            err, rare = self._terms(s, x)
            self.term_scale[s] = [(float(t.mean()), float(t.std().clamp_min(1e-12))) for t in (err, rare)]

    def score_sites(self, acts: Activations, *, outputs=None, calibrating=False) -> dict[str, Tensor]:
        out = {}
        for s, x in acts.items():
            z = [(t - m) / sd for t, (m, sd) in zip(self._terms(s, x), self.term_scale[s])]
            out[s] = {"recon": z[0], "rare": z[1], "both": z[0] + z[1]}[self.cfg.term]
        return out

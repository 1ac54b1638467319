"""Absorption per SAE architecture on the toy hierarchy, at one matched L0.

The data: ``parents`` parent features, each with ``children_per_parent`` children that fire only with it
(probability ``child_given_parent``), magnitudes U[0, 1], on orthonormal directions (d = F, so that
superposition does not mix into the measurement). Every registered architecture with a ``k`` field
trains on the same batches with the same k (below the data's mean L0, so the dictionary must choose what
to fire: the sparsity pressure that makes absorption pay), and :func:`mechscope.evals.absorption.absorption`
scores each on held-out rows. Architectures whose L0 is set by a penalty (ReLU, JumpReLU, Gated) would
need a per-architecture search to match L0 and are left out of the table; the ground-truth benchmark
(``mechscope toy bench``) covers them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from mechscope.evals.absorption import absorption
from mechscope.toy.features import FeatureConfig, SyntheticFeatures


@dataclass(frozen=True)
class AbsorptionConfig:
    """The hierarchy, the matched L0 and the training budget of the absorption table."""

    parents: int = 16
    """Parent features."""
    children_per_parent: int = 4
    """Children of each parent (a child fires only with its parent)."""
    child_given_parent: float = 0.4
    """Probability that a child fires when its parent does."""
    p: float = 0.1
    """Probability that a parent fires on a row."""
    k: int = 2
    """Active latents per row for every architecture (the data's mean L0 is about 4.2 with the defaults)."""
    steps: int = 1500
    """Training steps."""
    batch_size: int = 512
    """Rows per step."""
    lr: float = 3e-3
    """Adam learning rate (every architecture)."""
    eval_rows: int = 20_000
    """Held-out rows scored."""
    seed: int = 0
    """Seed of the features, the directions and the initialisations."""

    def __post_init__(self) -> None:
        if self.parents < 1 or self.children_per_parent < 1:
            raise ValueError("absorption needs at least one parent with at least one child")
        if not 0 < self.p <= 1 or not 0 < self.child_given_parent <= 1:
            raise ValueError("p and child_given_parent must be in (0, 1]")
        if min(self.k, self.steps, self.batch_size, self.eval_rows) < 1:
            raise ValueError("k, steps, batch_size and eval_rows must be positive")


def k_architectures() -> list[str]:
    """Registered SAE architectures whose L0 is a ``k`` (so one k matches them all)."""
    from mechscope.sae import REGISTRY

    return [name for name, cls in REGISTRY.items() if "k" in {f.name for f in dataclasses.fields(cls.config_cls)}]


def absorption_table(cfg: AbsorptionConfig = AbsorptionConfig(), archs: list[str] | None = None) -> dict[str, Any]:
    """Train each architecture on the hierarchy; {"features": F, "mean_l0": …, "rows": [{arch, l0, fvu, absorbed, …}]}."""
    from mechscope.sae import REGISTRY, Member, OptimConfig, TrainConfig, Trainer

    n = cfg.parents * (1 + cfg.children_per_parent)
    feats = SyntheticFeatures(
        FeatureConfig(
            n_features=n,
            p=cfg.p,
            parents=cfg.parents,
            children_per_parent=cfg.children_per_parent,
            child_given_parent=cfg.child_given_parent,
            seed=cfg.seed,
        )
    )
    directions, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(cfg.seed + 1)))
    archs = archs or k_architectures()
    optim = OptimConfig(lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10))

    def sae_fields(arch: str) -> dict[str, float]:
        """The same k for every architecture, and AuxK at weight 1 where it has one (a cross-layer transcoder has none)."""
        has_auxk = "auxk_coef" in {f.name for f in dataclasses.fields(REGISTRY[arch].config_cls)}
        return {"k": cfg.k, **({"auxk_coef": 1.0} if has_auxk else {})}

    members = [Member(REGISTRY[a].config_cls(d_in=n, latents=n, **sae_fields(a)), optim) for a in archs]
    trainer = Trainer(
        members,
        TrainConfig(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            dead_window=20 * cfg.batch_size,
            progress=False,
            device="cpu",
            seed=cfg.seed,
        ),
    )
    trainer.fit(values @ directions for values, _ in feats.batches(cfg.batch_size))
    values, active = feats.batch(10**9, cfg.eval_rows)  # an index training never reaches: held-out rows
    x = values @ directions
    rows = []
    for i, arch in enumerate(archs):
        sae = trainer.export(i).eval()
        with torch.no_grad():
            codes = sae.encode(x)
            fvu = float((sae.decode(codes) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        a = absorption(codes, sae.W_dec.detach(), directions, active, feats.parent)
        rows.append({"arch": arch, "l0": float((codes != 0).sum(1).float().mean()), "fvu": fvu, **a.to_dict()})
    return {"features": n, "mean_l0": feats.expected_l0(), "config": dataclasses.asdict(cfg), "rows": rows}

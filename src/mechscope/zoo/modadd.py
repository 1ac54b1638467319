"""``modadd``: (a + b) mod p with p = 113, a one-layer transformer trained with weight decay until it groks.

Input: ``a b =`` (tokens a, b ∈ [0, p), "=" is token p), 3 positions; output logits [B, 3, p], scored at the
"=" position (2). All p² pairs are split once by a seeded permutation: ``train_fraction`` for training,
the rest held out. Training uses strong weight decay, as in Nanda et al. (2023, "Progress
measures for grokking via mechanistic interpretability"): the model first memorises the training pairs,
then (much later) generalises by the Fourier "clock" algorithm.

Departures from Nanda et al., for a recipe that trains in about a minute on one CPU core: d_model 96
instead of 128 and d_mlp 384 instead of 512, train fraction 0.5 instead of 0.3, minibatches of 1024
instead of the full batch, and a learning rate of 3e-3 instead of 1e-3. More data and a larger step make
generalisation come early (a few hundred steps, close behind memorisation) instead of after a long
plateau; with 35% of the data and batches of 512 the model was still at 37% held-out accuracy after
1,000 steps in our trial. No LayerNorm, as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import UsageError
from mechscope.task import Task
from mechscope.zoo.recipe import TrainRecipe
from mechscope.zoo.transformer import TransformerShape


@dataclass(frozen=True)
class ModAddConfig(TrainRecipe):
    """Recipe of the one-layer modular-addition transformer (4 heads, MLP, no LayerNorm)."""

    p: int = 113
    """The modulus (a prime, so every frequency is a generator)."""
    train_fraction: float = 0.5
    """Fraction of the p² pairs used for training."""
    d_model: int = 96
    """Residual width."""
    n_heads: int = 4
    """Attention heads."""
    d_mlp: int = 384
    """MLP hidden width."""
    steps: int = 1200
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1.0
    warmup: int = 10
    checkpoints: int = 24

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.p < 3 or not 0 < self.train_fraction < 1 or self.d_model % self.n_heads:
            raise UsageError("modadd needs p ≥ 3, 0 < train_fraction < 1 and d_model divisible by n_heads")

    def shape(self) -> TransformerShape:
        return TransformerShape(
            vocab=self.p + 1,
            n_out=self.p,
            n_ctx=3,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            n_layers=1,
            d_mlp=self.d_mlp,
            layer_norm=False,
            causal=True,
        )

    def make_task(self) -> Task:
        p = self.p
        a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
        x = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # [p², 3]
        y = (a + b) % p
        order = torch.randperm(p * p, generator=torch.Generator().manual_seed(self.seed))
        cut = int(round(self.train_fraction * p * p))
        tr, va = order[:cut], order[cut:]
        return Task("modadd", x[tr], y[tr], x[va], y[va], positions=(2,), n_classes=p)

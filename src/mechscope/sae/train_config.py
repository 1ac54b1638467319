"""The configs of a training run: :class:`OptimConfig` (Adam and the schedules of one SAE), :class:`TrainConfig`
(what the run does with the batches, shared by a sweep) and :class:`Member` (one SAE of a sweep). The trainer that
reads them is :mod:`mechscope.sae.trainer`; its module docstring states the schedules' formulas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mechscope import training
from mechscope.config import ADAM_BETA, LEARNING_RATE, NON_NEGATIVE, check_ranges, in_range
from mechscope.sae.base import REGISTRY, SAEConfig

PAPER_DEAD_WINDOW = 10_000_000
"""Gao et al. (2024): a latent is dead when it has not fired in 10M tokens."""


# OptimConfig.decay → the mechscope.training schedule computing lr(t) of the module docstring
_SCHEDULES = {"linear": "warmup_late_linear", "cosine": "warmup_late_cosine", "none": "warmup"}


@dataclass(frozen=True)
class OptimConfig:
    """Adam and the schedules of one SAE."""

    lr: float = field(default=2e-4, metadata=LEARNING_RATE)
    """Peak learning rate of Adam, in (0, 10]."""
    beta1: float = field(default=0.9, metadata=ADAM_BETA)
    """Adam's first-moment decay, in [0, 1)."""
    beta2: float = field(
        default=0.999,
        metadata=in_range(
            0,
            1,
            lo_open=True,
            hi_open=True,
            why=("at 0 a latent whose gradient is 0 steps by m/ε and the weights blow up"),
        ),
    )
    """Adam's second-moment decay, in (0, 1)."""
    warmup_steps: int = field(default=100, metadata=NON_NEGATIVE)
    """Steps over which the learning rate rises linearly from 0 to lr."""
    decay: Literal["linear", "cosine", "none"] = "linear"
    """Shape of the learning-rate decay to 0 at the last step."""
    decay_start: float = field(default=0.8, metadata=in_range(0, 1))
    """Fraction of the steps after which the learning rate decays."""
    sparsity_warmup_steps: int = field(default=0, metadata=NON_NEGATIVE)
    """Steps over which the sparsity coefficient rises linearly from 0 (ReLU, JumpReLU, Gated); 0 = none."""
    max_grad_norm: float = field(default=0.0, metadata=in_range(0, 1e6))
    """Clip the gradient's global norm to this value, in [0, 10^6]; 0 turns clipping off."""

    def __post_init__(self) -> None:
        check_ranges(self)

    def to_training(self) -> training.OptimConfig:
        """The same optimiser and lr schedule as a :class:`mechscope.training.OptimConfig` (fused Adam)."""
        return training.OptimConfig(
            "adam",
            lr=self.lr,
            betas=(self.beta1, self.beta2),
            fused=True,
            schedule=_SCHEDULES[self.decay],
            warmup=self.warmup_steps,
            decay_start=self.decay_start,
        )

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate at ``step`` of ``total`` (formula in the module docstring)."""
        return training.lr_at(self.to_training(), step, total)

    def sparsity_at(self, step: int) -> float:
        return min(1.0, (step + 1) / self.sparsity_warmup_steps) if self.sparsity_warmup_steps else 1.0


@dataclass(frozen=True)
class TrainConfig:
    """What the training run does with the batches, shared by every SAE in a sweep."""

    steps: int = 2000
    """Optimiser steps (each reads one global batch)."""
    batch_size: int = 4096
    """Rows in the global batch (split over data-parallel ranks)."""
    seed: int = 0
    """Seed of the weight initialisation (member i uses seed + i) and of the store's batch order."""
    normalize_input: bool = True
    """Scale inputs so that E‖x‖ = √d (estimated on the first batch, folded into the saved weights)."""
    init_b_dec: Literal["median", "mean", "zeros"] = "median"
    """Initial decoder bias: geometric median (Weiszfeld) or mean of the first batch, or zeros."""
    dead_window: int = 0
    """Rows after which a latent that has not fired counts as dead (AuxK and the logged dead fraction);
    0 = follow the run: min(10M, max(R/4, min(4·batch_size, R))), R = steps·batch_size (module docstring)."""
    log_every: int = 50
    """Steps between progress-bar and log-file updates."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is always written at the end); 0 writes only the last."""
    eval_every: int = 0
    """Steps between evaluations on held-out batches, when the caller provides them; 0 = never."""
    device: str = "auto"
    """Training device: cpu, cuda, cuda:N, or auto (cuda:LOCAL_RANK when CUDA is available)."""
    progress: bool = True
    """Show a tqdm progress bar (rows/s, FVU, L0, dead fraction) on rank 0."""
    distribute_members: bool = False
    """Under torchrun, deal the members out over the ranks (member i to rank i mod N, each trained on whole
    batches by its rank alone) instead of splitting every batch over the ranks; for sweeps too big for one device."""
    shard_layers: bool = False
    """Under torchrun, split each cross-layer transcoder by layers over the ranks (rank r holds the latents of a
    contiguous block of layers, encoder and decoder rows, ~1/N of the weights; every rank reads whole batches)
    instead of splitting every batch over the ranks; for a CLT too big for one device."""

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError("steps and batch_size must be positive")
        if self.log_every <= 0 or min(self.dead_window, self.checkpoint_every, self.eval_every) < 0:
            raise ValueError("log_every must be positive; dead_window, checkpoint_every, eval_every non-negative")

    def resolved_dead_window(self) -> int:
        """The dead-latent window in rows: ``dead_window``, or the run-derived default when it is 0."""
        if self.dead_window:
            return self.dead_window
        rows = self.steps * self.batch_size
        return min(PAPER_DEAD_WINDOW, max(rows // 4, min(4 * self.batch_size, rows)))


@dataclass(frozen=True)
class Member:
    """One SAE of a sweep."""

    sae: SAEConfig
    """The SAE's architecture config (its class picks the registry entry)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Its optimiser and schedules."""
    name: str = ""
    """Folder name of the saved SAE; empty = the architecture name (plus the index if repeated)."""

    @property
    def arch(self) -> str:
        for name, cls in REGISTRY.items():
            if cls.config_cls is type(self.sae):
                return name
        raise TypeError(f"{type(self.sae).__name__} is not the config of a registered architecture")

"""Toy models whose truth is known, trained in seconds on :class:`~mechscope.toy.features.SyntheticFeatures`.

Shapes: I instances (independent copies trained side by side from different initialisations), B rows,
n features, m hidden dimensions, H hidden neurons.

- Hand-made superposition: x = f D with fixed random unit directions D [n, d]
  (:func:`~mechscope.toy.features.random_directions`); nothing to train.
- ``tms`` (Elhage et al. 2022): h = x W [I, B, m], x' = ReLU(h Wᵀ + b), with W [I, n, m], b [I, n];
  loss = mean over rows of Σ_i I_i (x_i − x'_i)², summed over instances. ``linear``: the same without
  the ReLU (a linear low-rank autoencoder, which keeps only the m most important features).
- ``abs`` (computation in superposition): y = ReLU(x W_in + b_in) W_out + b_out with W_in [I, n, H],
  trained to output |x_i| for signed sparse x; loss = mean over rows of Σ_i I_i (|x_i| − y_i)². The
  hidden features are known by construction: |x_i| = ReLU(x_i) + ReLU(−x_i), so a neuron can only
  help feature i through the two directions ±e_i.

Trained weights are cached (:mod:`mechscope.cache`: digest-checked, written once under a lock) in
``<cache>/toy/<kind>-<hash>.safetensors``, named by a hash of every config that shaped them, so a second
call loads instead of training.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mechscope.cache import RETRAIN, cache_dir, load_state, train_once
from mechscope.config import to_dict
from mechscope.errors import UsageError
from mechscope.toy.features import FeatureConfig, SyntheticFeatures
from mechscope.training import OptimConfig, fit


@dataclass(frozen=True)
class ToyModelConfig:
    """Which toy model, how wide, and how it trains."""

    kind: Literal["tms", "linear", "abs"] = "tms"
    """tms: ReLU-output toy model; linear: linear low-rank autoencoder; abs: MLP computing |x_i|."""
    dims: int = 2
    """Hidden dimensions m (tms, linear) or hidden neurons H (abs)."""
    instances: int = 8
    """Copies trained side by side from different initialisations; the lowest-loss one is kept."""
    steps: int = 4000
    """Adam steps."""
    batch_size: int = 1024
    """Rows per step (fresh rows each step)."""
    lr: float = 1e-2
    """Peak Adam learning rate (cosine decay to 0 over the steps: :mod:`mechscope.training`'s annealing)."""
    seed: int = 0
    """Seed of the initialisation."""

    def __post_init__(self) -> None:
        if min(self.dims, self.instances, self.steps, self.batch_size) < 1:
            raise UsageError(
                f"dims, instances, steps and batch_size must be ≥ 1, got {self.dims}, {self.instances}, "
                f"{self.steps}, {self.batch_size}"
            )
        if not (0 < self.lr < math.inf):
            raise UsageError(f"lr must be positive and finite, got {self.lr}")


def check_superposition(features: int, dims: int, features_flag: str = "`features`", dims_flag: str = "`dims`") -> None:
    """Refuse toy sizes with nothing in superposition, naming the parameter that is out of range (a config's
    `field`, shown as its flag by the command):
    at least 2 features and 1 ≤ dims < features."""
    if features < 2:
        raise UsageError(
            f"{features_flag} {features}: a toy model of superposition needs at least 2 features; "
            f"give {features_flag} ≥ 2"
        )
    if not 1 <= dims < features:
        raise UsageError(
            f"{dims_flag} {dims}: give {dims_flag} between 1 and {features - 1} for {features} features; use fewer "
            "dims than features (with as many, each feature has its own dimension: no superposition)"
        )


class ToyAutoencoder(nn.Module):
    """x' = act(x W Wᵀ + b), act = ReLU (tms) or identity (linear). W [I, n, m], b [I, n]."""

    def __init__(self, n: int, m: int, instances: int, relu: bool, generator: torch.Generator):
        super().__init__()
        self.W = nn.Parameter(torch.randn(instances, n, m, generator=generator) * (2 / (n + m)) ** 0.5)
        self.b = nn.Parameter(torch.zeros(instances, n))
        self.relu = relu

    def hidden(self, x: Tensor) -> Tensor:
        """h = x W. x: [B, n] or [I, B, n] → [I, B, m]."""
        return torch.einsum("...bn,inm->ibm", x, self.W)

    def forward(self, x: Tensor) -> Tensor:
        """x' [I, B, n]."""
        out = torch.einsum("ibm,inm->ibn", self.hidden(x), self.W) + self.b[:, None, :]
        return torch.relu(out) if self.relu else out

    def target(self, x: Tensor) -> Tensor:
        return x


class AbsMLP(nn.Module):
    """y = ReLU(x W_in + b_in) W_out + b_out, target |x|. W_in [I, n, H], W_out [I, H, n]."""

    def __init__(self, n: int, hidden: int, instances: int, generator: torch.Generator):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(instances, n, hidden, generator=generator) * (1 / n) ** 0.5)
        self.b_in = nn.Parameter(torch.zeros(instances, hidden))
        self.W_out = nn.Parameter(torch.randn(instances, hidden, n, generator=generator) * (1 / hidden) ** 0.5)
        self.b_out = nn.Parameter(torch.zeros(instances, n))

    def hidden(self, x: Tensor) -> Tensor:
        """ReLU(x W_in + b_in): [B, n] → [I, B, H]."""
        return torch.relu(torch.einsum("...bn,inh->ibh", x, self.W_in) + self.b_in[:, None, :])

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("ibh,ihn->ibn", self.hidden(x), self.W_out) + self.b_out[:, None, :]

    def target(self, x: Tensor) -> Tensor:
        return x.abs()


ToyModel = ToyAutoencoder | AbsMLP
"""Every toy model: x [B, n] → [I, B, n], trained towards ``target(x)``."""

# kind → builder(n, m, instances, generator); the CLI choices come from here.
MODELS: dict[str, Callable[[int, int, int, torch.Generator], ToyModel]] = {
    "tms": lambda n, m, i, g: ToyAutoencoder(n, m, i, True, g),
    "linear": lambda n, m, i, g: ToyAutoencoder(n, m, i, False, g),
    "abs": lambda n, m, i, g: AbsMLP(n, m, i, g),
}


@dataclass
class TrainedToy:
    """A trained toy model (all instances), its per-instance final losses and the best instance."""

    model: ToyModel
    losses: Tensor
    """[I] importance-weighted loss of each instance on the last 10% of steps."""
    features: SyntheticFeatures

    @property
    def best(self) -> int:
        return int(self.losses.argmin())

    def W(self, instance: int | None = None) -> Tensor:
        """[n, m] the embedding of one instance (the best by default): W (tms, linear) or W_in (abs)."""
        W = self.model.get_parameter("W" if hasattr(self.model, "W") else "W_in")
        return W[self.best if instance is None else instance].detach()


def weighted_loss(model: ToyModel, x: Tensor, importance: Tensor) -> Tensor:
    """[I] mean over rows of Σ_i I_i (target_i − out_i)²."""
    return ((model.target(x) - model(x)).pow(2) * importance).sum(-1).mean(-1)


CACHE_FORMAT = 2
"""Bumped when the cached files change (2: digest-checked by :mod:`mechscope.cache`), so older ones retrain."""


def cache_name(features: FeatureConfig, cfg: ToyModelConfig, extra: dict | None = None) -> str:
    blob = json.dumps(
        {"features": to_dict(features), "model": to_dict(cfg), "format": CACHE_FORMAT, **(extra or {})}, sort_keys=True
    )
    return f"{cfg.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def train_toy(
    features: FeatureConfig, cfg: ToyModelConfig, data: Tensor | None = None, cache: bool = True, progress: bool = False
) -> TrainedToy:
    """Train (or load from the cache) a toy model on fresh batches of ``features``, or full-batch on the
    fixed rows ``data [T, n]`` when given (the data-dimensionality experiment)."""
    if cfg.kind == "abs" and not features.signed:
        features = FeatureConfig(**{**to_dict(features), "signed": True})
    feats = SyntheticFeatures(features)
    model = MODELS[cfg.kind](features.n_features, cfg.dims, cfg.instances, torch.Generator().manual_seed(cfg.seed))
    if not cache:
        return TrainedToy(model, _fit(model, feats, cfg, data, progress), feats)
    extra = {"data": hashlib.sha256(data.numpy().tobytes()).hexdigest()} if data is not None else None
    path = cache_dir() / "toy" / (cache_name(features, cfg, extra) + ".safetensors")

    def fit() -> dict[str, Tensor]:
        losses = _fit(model, feats, cfg, data, progress)
        return {**model.state_dict(), "_losses": losses}

    tensors = train_once(path, fit)
    losses = tensors.pop("_losses")
    load_state(model, tensors, path, RETRAIN)
    return TrainedToy(model, losses, feats)


def _fit(model: ToyModel, feats: SyntheticFeatures, cfg: ToyModelConfig, data: Tensor | None, progress: bool) -> Tensor:
    tail = max(1, cfg.steps // 10)
    acc = torch.zeros(cfg.instances)
    batches = feats.batches(cfg.batch_size)

    def on_step(step: int, loss: Tensor) -> None:
        if step >= cfg.steps - tail:
            acc.add_(loss.detach())

    fit(
        model,
        lambda x: weighted_loss(model, x, feats.importance),
        lambda s: data if data is not None else next(batches)[0],
        OptimConfig("adam", lr=cfg.lr, schedule="annealing"),
        steps=cfg.steps,
        on_step=on_step,
        progress=f"toy {cfg.kind}" if progress else None,
    )
    return acc / tail

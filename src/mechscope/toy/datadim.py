"""Data dimensionality over the training-set size T, on the training examples and on held-out ones
(Henighan et al. 2023 show the training curve; the held-out one is what this module adds).

Shapes: T examples, n features, m hidden dimensions, P pixels.

For each T a model is trained on a fixed set of T examples (full batch) and we compute
D_t = ‖h_t‖² / Σ_s (ĥ_t·h_s)² (:func:`~mechscope.toy.dimensionality.data_dimensionality`) on the hidden
vectors of the T training examples, and separately on T held-out examples of the same distribution
(the sum runs over the set the example belongs to, so both curves compare sets of equal size). A
model that memorises gives its training examples directions of their own (large D_t on train, not
on held-out); one that generalises stores features, and the two curves meet.

- ``toy``: the ReLU toy model x' = ReLU(WᵀWx + b) on sparse features, h = x W (m = 2 as in the paper).
- ``image``: an MLP classifier on real images (Fashion-MNIST by default) with a bottleneck of width m,
  x [P] → ReLU(x A + a) [64] → h = (·) B + c [m] → logits [10]; D_t is computed on h.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope.errors import UsageError
from mechscope.toy.dimensionality import data_dimensionality, feature_dimensionality
from mechscope.toy.features import FeatureConfig, SyntheticFeatures
from mechscope.toy.models import ToyModelConfig, check_superposition, train_toy
from mechscope.training import OptimConfig, fit

if TYPE_CHECKING:
    from mechscope.data.images import Split


@dataclass(frozen=True)
class DataDimConfig:
    """The sizes of training set swept, and both models' budgets."""

    sizes: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500, 1000, 2000)
    """Training-set sizes T (at least two)."""
    n_features: int = 400
    """Toy model: features n."""
    dims: int = 2
    """Hidden dimensions m of both models."""
    p: float = 0.005
    """Toy model: probability that a feature is active."""
    toy_steps: int = 3000
    """Toy model: full-batch Adam steps per T."""
    image_set: str = "fashion-mnist"
    """Image set for the classifier (see mechscope.data.images)."""
    image_steps: int = 600
    """Classifier: full-batch Adam steps per T."""
    seed: int = 0
    """Seed of the examples and the initialisations."""

    def __post_init__(self) -> None:
        if len(self.sizes) < 2:
            raise UsageError(f"a sweep over T needs at least two sizes, got {list(self.sizes)}; pass several `sizes`")
        if min(self.sizes) < 2:
            raise UsageError("every training-set size must be ≥ 2 (D_t of a lone example is always 1)")
        check_superposition(self.n_features, self.dims, "`n_features`")
        if not 0 < self.p <= 1:
            raise UsageError(f"`p` {self.p} must lie in (0, 1]")
        if min(self.toy_steps, self.image_steps) < 1:
            raise UsageError(f"`toy_steps` and `image_steps` must be ≥ 1, got {self.toy_steps}, {self.image_steps}")


def _point(T: int, h_train: Tensor, h_val: Tensor, **extra: Any) -> dict[str, Any]:
    dt, dv = data_dimensionality(h_train), data_dimensionality(h_val)
    return {
        "T": T,
        "train_mean": float(dt.mean()),
        "val_mean": float(dv.mean()),
        "train_sum": float(dt.sum()),
        "val_sum": float(dv.sum()),
        **extra,
    }


def toy_curve(cfg: DataDimConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Per T: mean and sum of D_t on train and held-out examples, and the mean and sum of the features' D_i."""
    feats = FeatureConfig(n_features=cfg.n_features, p=cfg.p, seed=cfg.seed)
    gen = SyntheticFeatures(feats)
    out = []
    for T in tqdm(cfg.sizes, disable=not progress, desc="data dimensionality (toy)"):
        x_train = gen.batch(10_000 + T, T)[0]
        x_val = gen.batch(20_000 + T, T)[0]
        trained = train_toy(
            feats, ToyModelConfig(dims=cfg.dims, instances=1, steps=cfg.toy_steps, lr=1e-2, seed=cfg.seed), data=x_train
        )
        W = trained.W()
        D = feature_dimensionality(W)
        out.append(
            _point(
                T,
                x_train @ W,
                x_val @ W,
                feature_dim_mean=float(D.mean()),
                feature_dim_sum=float(D.sum()),
                train_loss=float(trained.losses[0]),
            )
        )
    return out


class BottleneckMLP(nn.Module):
    """Images [B, P] → hidden h [B, m] → logits [B, C]."""

    def __init__(self, pixels: int, m: int, classes: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(pixels, width), nn.ReLU(), nn.Linear(width, m))
        self.head = nn.Linear(m, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return h, self.head(h)


def _fit_classifier(model: BottleneckMLP, x: Tensor, y: Tensor, steps: int) -> None:
    """Full-batch Adam (lr 3e-3) on the cross-entropy of the logits."""
    fit(
        model,
        lambda _: nn.functional.cross_entropy(model(x)[1], y),
        lambda step: None,
        OptimConfig("adam", lr=3e-3),
        steps=steps,
    )


def image_curve(
    cfg: DataDimConfig, progress: bool = True, load: Callable[[str, Split], Any] | None = None
) -> list[dict[str, Any]]:
    """Per T: D_t on the classifier's bottleneck for T training and T held-out (test-split) images, and accuracies."""
    from mechscope.data.images import load_images

    load = load or load_images
    train, test = load(cfg.image_set, "train"), load(cfg.image_set, "test")
    g = torch.Generator().manual_seed(cfg.seed)
    tr_order, te_order = torch.randperm(len(train.labels), generator=g), torch.randperm(len(test.labels), generator=g)
    if max(cfg.sizes) > min(len(tr_order), len(te_order)):
        raise UsageError(
            f"T up to {max(cfg.sizes)} but {cfg.image_set} has {len(tr_order)} train / {len(te_order)} test images; use smaller `sizes`"
        )
    X, Xv = train.as_float().flatten(1), test.as_float().flatten(1)
    out = []
    for T in tqdm(cfg.sizes, disable=not progress, desc=f"data dimensionality ({cfg.image_set})"):
        xi, yi = X[tr_order[:T]], train.labels[tr_order[:T]]
        xv, yv = Xv[te_order[:T]], test.labels[te_order[:T]]
        torch.manual_seed(cfg.seed)
        model = BottleneckMLP(X.shape[1], cfg.dims, train.n_classes)
        _fit_classifier(model, xi, yi, cfg.image_steps)
        with torch.no_grad():
            (h, logits), (hv, logits_v) = model(xi), model(xv)
        out.append(
            _point(
                T,
                h,
                hv,
                train_acc=float((logits.argmax(1) == yi).float().mean()),
                val_acc=float((logits_v.argmax(1) == yv).float().mean()),
            )
        )
    return out

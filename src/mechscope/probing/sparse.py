"""k-sparse probing (SAEBench; Gurnee et al. 2023): how much of a concept k coordinates carry.

Shapes: N rows, m coordinates (d activation dims or n latents), k kept coordinates.

For one binary task (positives vs as many negatives):

1. choose k coordinates by the difference of class means on the *training* rows, |mean(X⁺) − mean(X⁻)| (the
   top k; SAEBench's choice);
2. fit a logistic regression (L2 with inverse strength C = ``inverse_l2``) on those k coordinates of the training rows;
3. score held-out rows: accuracy (threshold 0.5) and AUROC of the decision function.

Every task is run on each dictionary's latents and, beside them, on the model's own activations at the site (the
k dims chosen the same way), on k random orthonormal directions of the activations (the same k, no selection: what
k arbitrary directions give), and once with every dimension of the activations (the dense probe: the ceiling a
linear reader of the site reaches). A dictionary whose k latents beat the k best dims is one whose latents line up
with the concept better than the basis of the model does.

Tasks: a two-class concept is one task (class 1 positive); a concept with more classes gives one task per class,
that class against an equal number of rows drawn from the others (SAEBench's one-vs-rest), and its scores are the
mean over those tasks. Each side is balanced by drawing (``seed``) as many rows of the larger class as the smaller
has, so chance accuracy is 0.5. A class with fewer than ``min_rows`` positive rows on either side is left out.

Where this departs from SAEBench: each coordinate is standardised on the training rows before the fit (SAEBench
fits raw values), so that one C penalises latents and activation dims alike whatever their scale; and the document rows
are fixed-length contexts (SAEBench truncates documents at 128 tokens and pools over the real tokens).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mechscope.config import COUNT, check_ranges, in_range
from mechscope.errors import UsageError
from mechscope.probing.features import ACTIVATIONS

RANDOM = "random directions"
DENSE = "activations, dense"


@dataclass(frozen=True)
class ProbeConfig:
    """The k values and the logistic regression of sparse probing."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    """Coordinates kept per probe (each k is one row of the table)."""
    inverse_l2: float = field(default=1.0, metadata=in_range(0, 1e6, lo_open=True))
    """Inverse L2 strength of the logistic regression (scikit-learn's C), on standardised coordinates; in (0, 1e6]."""
    max_iter: int = field(default=1000, metadata=COUNT)
    """Iterations of the solver (lbfgs); ≥ 1."""
    min_rows: int = field(default=10, metadata=COUNT)
    """A class needs this many positive rows on each side (train, test) to be a task; ≥ 1."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive whole numbers")


class Task(NamedTuple):
    """One binary task: row indices and 0/1 targets of each side."""

    name: str
    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray


def _balanced(pos: np.ndarray, neg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(pos), len(neg))
    pos, neg = rng.permutation(pos)[:n], rng.permutation(neg)[:n]
    return np.concatenate([pos, neg]), np.concatenate([np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)])


def binary_tasks(label: Tensor, test: Tensor, classes: tuple[str, ...], min_rows: int, seed: int = 0) -> list[Task]:
    """The balanced binary tasks of a concept (module docstring); ``label`` [N] class indices, ``test`` [N] bool."""
    lab, held = label.numpy(), test.numpy()
    rng = np.random.default_rng(seed)
    positives = [1] if len(classes) == 2 else list(range(len(classes)))
    tasks = []
    for c in positives:
        sides = []
        for side in (False, True):
            pos = np.flatnonzero((lab == c) & (held == side))
            neg = np.flatnonzero((lab != c) & (held == side))
            sides.append(_balanced(pos, neg, rng))
        if min(len(sides[0][0]), len(sides[1][0])) >= 2 * min_rows:
            tasks.append(Task(classes[c], sides[0][0], sides[0][1], sides[1][0], sides[1][1]))
    return tasks


def top_mean_difference(x: Tensor, y: np.ndarray, k: int, signed: bool = False) -> Tensor:
    """[k] indices of the coordinates of ``x`` [N, m] with the largest mean(X⁺) − mean(X⁻) (``signed``) or its
    absolute value, positives where ``y`` is 1."""
    pos = torch.from_numpy(y == 1)
    diff = x[pos].double().mean(0) - x[~pos].double().mean(0)
    score = diff if signed else diff.abs()
    return score.topk(min(k, x.shape[1])).indices


def random_directions(d: int, k: int, seed: int) -> Tensor:
    """[d, k] orthonormal directions drawn from a Gaussian (QR), seeded."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.float()


def fit_probe(x_train: Tensor, y_train: np.ndarray, C: float, max_iter: int) -> Any:
    """A logistic regression on the standardised columns of ``x_train`` [N, k]: a scikit-learn pipeline."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        # An unconverged fit is still scored on held-out rows, which is the number reported.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return probe.fit(x_train.double().numpy(), y_train)


def score(probe: Any, x: Tensor, y: np.ndarray) -> dict[str, float]:
    """{"accuracy", "auroc"} of a fitted probe on rows ``x`` with targets ``y``."""
    from sklearn.metrics import roc_auc_score

    xs = x.double().numpy()
    acc = float((probe.predict(xs) == y).mean())
    auroc = float(roc_auc_score(y, probe.decision_function(xs))) if 0 < y.mean() < 1 else float("nan")
    return {"accuracy": acc, "auroc": auroc}


def k_sparse(x: Tensor, task: Task, k: int, cfg: ProbeConfig) -> dict[str, float]:
    """Accuracy and AUROC of the k-sparse probe on ``x`` [N, m] (coordinates by mean difference on train)."""
    keep = top_mean_difference(x[task.train], task.y_train, k)
    probe = fit_probe(x[task.train][:, keep], task.y_train, cfg.inverse_l2, cfg.max_iter)
    return score(probe, x[task.test][:, keep], task.y_test)


def probe_task(features: dict[str, Tensor], task: Task, cfg: ProbeConfig, seed: int = 0) -> dict[str, Any]:
    """Scores of one task: {source: {k: {accuracy, auroc}}} for every source of ``features`` (the activations and each
    dictionary), the random directions and the dense probe ({"dense": …})."""
    acts = features[ACTIVATIONS]
    out: dict[str, Any] = {name: {k: k_sparse(x, task, k, cfg) for k in cfg.ks} for name, x in features.items()}
    rand = {}
    for k in cfg.ks:
        proj = acts @ random_directions(acts.shape[1], min(k, acts.shape[1]), seed + k)
        probe = fit_probe(proj[task.train], task.y_train, cfg.inverse_l2, cfg.max_iter)
        rand[k] = score(probe, proj[task.test], task.y_test)
    out[RANDOM] = rand
    dense = fit_probe(acts[task.train], task.y_train, cfg.inverse_l2, cfg.max_iter)
    out[DENSE] = score(dense, acts[task.test], task.y_test)
    return out


def sparse_probing(
    features: dict[str, Tensor], label: Tensor, test: Tensor, classes: tuple[str, ...], cfg: ProbeConfig, seed: int = 0
) -> dict[str, Any]:
    """Sparse probing of one concept: per source and k, the mean over tasks of accuracy and AUROC.

    Returns {"tasks": [names], "rows": {"train", "test"} per task (mean), "scores": {source: {k: {accuracy, auroc}}},
    "dense": {accuracy, auroc}}; sources are the keys of ``features`` plus :data:`RANDOM`."""
    tasks = binary_tasks(label, test, classes, cfg.min_rows, seed)
    if not tasks:
        raise UsageError(
            f"no class has `min_rows`={cfg.min_rows} rows on each side of the split: "
            "raise `contexts` or `rows`, or lower `min_rows`"
        )
    each = [probe_task(features, t, cfg, seed) for t in tasks]
    sources = [*features, RANDOM]
    mean = {
        s: {k: {m: float(np.mean([e[s][k][m] for e in each])) for m in ("accuracy", "auroc")} for k in cfg.ks}
        for s in sources
    }
    return {
        "tasks": [t.name for t in tasks],
        "rows": {
            "train": float(np.mean([len(t.train) for t in tasks])),
            "test": float(np.mean([len(t.test) for t in tasks])),
        },
        "scores": mean,
        "dense": {m: float(np.mean([e[DENSE][m] for e in each])) for m in ("accuracy", "auroc")},
    }

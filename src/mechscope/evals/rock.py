"""The rock: the best constant model, fit on training targets and scored like any other model.

A constant model ignores its input and predicts one distribution q over the C classes (V tokens for
a language model, the labels for a classifier). It is fit on the *training* targets, at the same
positions the other losses score (an LM's next-token targets, BOS never among them), and scored on
exactly the evaluation targets with the same per-example totals, so its loss gets the same
clustered standard error (:func:`mechscope.evals.metrics.clustered_stderr`) as every other loss.

Formulas (c_w = count of class w among the M training targets, α > 0):

- additive (Lidstone) smoothing   q_w = (c_w + α) / (M + α·C)
- rock loss on evaluation targets L_rock = mean over predictions of −log q_target
- α by leave-one-out likelihood   α* = argmax_α Σ_w c_w · log((c_w − 1 + α) / (M − 1 + α·C))

α* is the α under which each training target is best predicted by the counts of all the others, so
it is chosen on training data only (a token seen once in training is exactly the situation of a
token unseen there). It is found by golden-section search over log α in [1e-4, 10].

One rock for every method. The evaluator (``mechscope evaluate``, the report, the frontier), the graph
command, the zoo's tasks (:class:`mechscope.task.Task`, hence scrubbing, circuit faithfulness and SPD
program replacement) and the circuits tasks all fit their constant predictor here, with this one rule, so
rocks printed by two commands on the same data are the same number. Why leave-one-out α and not a fixed
α = ½ (add-½, the Krichevsky–Trofimov/Jeffreys estimator): a fixed α ignores how many training targets there
are per class; with 2,000 IOI answers over SmolLM2's 49,152 tokens add-½ hands 24,576 pseudo-counts to tokens
that never occur, and the rock becomes nearly uniform. Where the targets are plentiful per class the two agree
(the numbers that moved when the rule changed are in the docs of each method).

Why not the entropy of the evaluation targets: that is the loss of the unigram of the evaluation text scored
on itself, an in-sample number below what any constant model reaches on unseen text, and it grows with the
number of evaluated contexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.errors import MechscopeError, UsageError

_ALPHA_RANGE = (1e-4, 10.0)


def loo_log_likelihood(counts: Tensor, alpha: float) -> float:
    """Σ_w c_w · log((c_w − 1 + α) / (M − 1 + α·C)) for class counts [C]: the leave-one-out log-likelihood."""
    c = counts.double()
    m, n_classes = float(c.sum()), c.numel()
    seen = c[c > 0]
    return float((seen * torch.log(seen - 1 + alpha)).sum()) - float(m) * math.log(m - 1 + alpha * n_classes)


def loo_alpha(counts: Tensor, iters: int = 60) -> float:
    """α* maximising :func:`loo_log_likelihood` over [1e-4, 10] (golden-section search on log α)."""
    lo, hi = math.log(_ALPHA_RANGE[0]), math.log(_ALPHA_RANGE[1])
    r = (math.sqrt(5) - 1) / 2
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    fa, fb = loo_log_likelihood(counts, math.exp(a)), loo_log_likelihood(counts, math.exp(b))
    for _ in range(iters):
        if fa > fb:
            hi, b, fb = b, a, fa
            a = hi - r * (hi - lo)
            fa = loo_log_likelihood(counts, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + r * (hi - lo)
            fb = loo_log_likelihood(counts, math.exp(b))
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True, eq=False)
class Rock:
    """A fitted constant predictor: log q [C] and how it was fit."""

    log_q: Tensor
    """[C] float64 log-probabilities of the classes."""
    alpha: float
    """The additive smoothing used."""
    n_train: int
    """Training targets it was fit on (M)."""
    name: str
    """What it is, in words, for tables and verdicts."""

    @classmethod
    def fit(cls, targets: Tensor, n_classes: int, alpha: float | None = None, what: str = "unigram") -> Rock:
        """Fit on training ``targets`` (class ids, any shape; −100 entries are ignored) over ``n_classes``
        classes; ``alpha`` None chooses it by leave-one-out likelihood (see the module docstring)."""
        t = targets.reshape(-1)
        t = t[t != -100]
        if t.numel() < 2:
            raise MechscopeError(
                f"the rock needs at least 2 training targets, got {t.numel()}: give more training data"
            )
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            raise MechscopeError(
                f"training targets must lie in [0, {n_classes}) (the model's classes), got "
                f"{int(t.min())}..{int(t.max())}: were they tokenised for another model?"
            )
        if alpha is not None and not alpha > 0:
            raise UsageError(f"rock smoothing alpha must be > 0, got {alpha}")
        counts = torch.bincount(t, minlength=n_classes).double()
        a = loo_alpha(counts) if alpha is None else float(alpha)
        log_q = torch.log((counts + a) / (t.numel() + a * n_classes))
        how = "chosen by leave-one-out" if alpha is None else "given"
        name = f"{what} of {t.numel():,} training targets, add-α smoothing, α={a:.3g} {how}"
        return cls(log_q, a, int(t.numel()), name)

    def nll(self, targets: Tensor) -> Tensor:
        """−log q_target per prediction, [M] float64 on the device of ``targets`` [M] (class ids)."""
        return -self.log_q.to(targets.device)[targets]

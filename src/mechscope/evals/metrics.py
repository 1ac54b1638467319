"""Reconstruction and loss metrics: one formula each, stated here and used everywhere.

Shapes: B rows, d width, n latents, M predictions (tokens or examples), C classes (V for an LM).
Inputs with extra leading dims ([B, T, d]) are flattened to rows first.

- MSE             = Σ‖x − x̂‖² / (B·d)
- FVU             = Σ‖x − x̂‖² / Σ‖x − x̄‖²   (centred; x̄ is the mean row of the evaluated rows;
                    sums accumulated in float64)
- explained var.  = 1 − FVU
- L0              = mean over rows of #{i : code_i ≠ 0}
- L1              = mean over rows of Σ|code_i|
- dead fraction   = fraction of latents that never fired (code ≠ 0) on the evaluated rows
- dense fraction  = fraction of latents that fire on more than ``dense_threshold`` (10%) of rows
- cosine          = mean over rows of ⟨x, x̂⟩ / (‖x‖‖x̂‖)
- norm ratio      = mean over rows of ‖x̂‖ / ‖x‖   (< 1 means shrinkage)

:class:`ReconstructionStats` accumulates these over many batches exactly (the centred
denominator uses Σ‖x‖² − B‖x̄‖², in float64), so a streamed FVU equals the one-shot FVU.

Loss metrics (all in nats):

- CE              = mean over predictions of −log p(target)
- stderr          = √(N/(N−1) · Σ_i (s_i − L·c_i)²) / Σ_i c_i   for a mean L = Σs/Σc over N clusters
                    (contexts) with loss total s_i over c_i predictions: the cluster-robust error
- rock            = mean over evaluation predictions of −log q_target, q the additively smoothed distribution of
                    the *training* targets (:mod:`mechscope.evals.rock`): the loss of the best constant model
                    (a unigram for an LM, the label distribution for a classifier), with the clustered stderr
- label entropy   = −Σ_c q_c log q_c of the empirical distribution of a target set (an in-sample number: the
                    rock's loss on its own training targets when α → 0, never the rock on held-out data)
- KL              = mean over predictions of Σ_c p_clean,c (log p_clean,c − log p_other,c)
- loss recovered  = (L_ablated − L_spliced) / (L_ablated − L_clean); 1 when splicing costs nothing,
                    0 when it is as bad as the ablation, NaN when the ablation costs nothing
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import torch
from torch import Tensor

_EPS = 1e-12


def _rows(t: Tensor) -> Tensor:
    """[..., d] → [B, d] in float64."""
    return t.detach().double().reshape(-1, t.shape[-1])


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per element: Σ‖x − x̂‖² / (B·d). x, x_hat: [B, d]."""
    return float(((_rows(x) - _rows(x_hat)) ** 2).mean())


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained, centred: Σ‖x − x̂‖² / Σ‖x − x̄‖², in float64. x, x_hat: [B, d]."""
    x64, xh64 = _rows(x), _rows(x_hat)
    err = ((x64 - xh64) ** 2).sum()
    total = ((x64 - x64.mean(0, keepdim=True)) ** 2).sum()
    return float(err / total.clamp_min(_EPS))


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def l0(codes: Tensor) -> float:
    """Mean number of non-zero codes per row. codes: [B, n]."""
    return float((codes != 0).sum(-1).double().mean())


def l1(codes: Tensor) -> float:
    """Mean L1 norm of the codes per row. codes: [B, n]."""
    return float(codes.double().abs().sum(-1).mean())


def cosine(x: Tensor, x_hat: Tensor) -> float:
    """Mean over rows of cos(x, x̂). x, x_hat: [B, d]."""
    return float(torch.nn.functional.cosine_similarity(_rows(x), _rows(x_hat), dim=-1, eps=_EPS).mean())


def norm_ratio(x: Tensor, x_hat: Tensor) -> float:
    """Mean over rows of ‖x̂‖/‖x‖ (shrinkage when below 1). x, x_hat: [B, d]."""
    return float((_rows(x_hat).norm(dim=-1) / _rows(x).norm(dim=-1).clamp_min(_EPS)).mean())


def firing_fractions(codes: Tensor) -> Tensor:
    """Fraction of rows on which each latent fires. codes: [B, n] → [n] (float64)."""
    return (codes.reshape(-1, codes.shape[-1]) != 0).double().mean(0)


def dead_fraction(codes: Tensor) -> float:
    """Fraction of latents that never fire on these rows. codes: [B, n]."""
    return float((firing_fractions(codes) == 0).double().mean())


def dense_fraction(codes: Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents that fire on more than ``threshold`` of rows. codes: [B, n]."""
    return float((firing_fractions(codes) > threshold).double().mean())


def label_entropy(targets: Tensor, ignore_index: int | None = -100) -> float:
    """Entropy in nats of the empirical distribution of ``targets`` (any shape of class ids),
    −Σ_c q_c log q_c with q_c = count_c / M; entries equal to ``ignore_index`` are left out."""
    t = targets.reshape(-1)
    if ignore_index is not None:
        t = t[t != ignore_index]
    if t.numel() == 0:
        raise ValueError("label_entropy of an empty target set")
    q = torch.unique(t, return_counts=True)[1].double() / t.numel()
    return float(-(q * q.log()).sum())


def cross_entropy_per(logits: Tensor, targets: Tensor) -> Tensor:
    """−log softmax(logits)[target] per prediction, [M] float64. logits: [M, C], targets: [M].

    Computed in float32 (a [M, V] float64 copy of LM logits costs too much memory), returned in float64."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none").double()


def cross_entropy_sum(logits: Tensor, targets: Tensor) -> float:
    """Σ over predictions of −log softmax(logits)[target], summed in float64. logits: [M, C], targets: [M]."""
    return float(cross_entropy_per(logits, targets).sum())


def clustered_stderr(sums: Tensor, counts: Tensor) -> float:
    """Standard error of a mean over predictions that come in N clusters (contexts): with cluster totals
    s_i over c_i predictions and L = Σs/Σc, SE = √(N/(N−1) · Σ(s_i − L·c_i)²) / Σc. Predictions of one
    context are correlated, so treating them as independent would understate the error. NaN for N < 2."""
    s, c = sums.double(), counts.double()
    n = s.numel()
    if n < 2 or float(c.sum()) == 0:
        return math.nan
    mean = s.sum() / c.sum()
    return float(torch.sqrt(n / (n - 1) * ((s - mean * c) ** 2).sum()) / c.sum())


def kl_sum(logp_clean: Tensor, logp_other: Tensor) -> float:
    """Σ over predictions of KL(p_clean ‖ p_other) = Σ_c p_clean,c (log p_clean,c − log p_other,c).
    Both are log-probabilities [M, C]; divide by M for the mean per prediction."""
    # kl_div with log targets treats 0·log 0 as 0 where a clean probability underflows;
    # per-prediction sums in float32, the total in float64 (as for cross_entropy_sum).
    per = torch.nn.functional.kl_div(logp_other.float(), logp_clean.float(), reduction="none", log_target=True)
    return float(per.sum(-1).double().sum())


def loss_recovered(l_ablated: float, l_spliced: float, l_clean: float) -> float:
    """(L_ablated − L_spliced) / (L_ablated − L_clean); NaN when the ablation costs nothing (|gap| < 1e-9)."""
    gap = l_ablated - l_clean
    return (l_ablated - l_spliced) / gap if abs(gap) > 1e-9 else math.nan


@dataclass
class ReconstructionStats:
    """Streaming accumulator of every metric above, exact over any batching.

    ``update(x, x_hat, codes)`` with x, x_hat: [B, d] and codes: [B, n] (or None when the
    reconstruction has no codes); ``results()`` returns a dict of floats.
    """

    dense_threshold: float = 0.1
    rows: int = 0
    sum_x: Tensor | None = None  # [d] float64
    sum_sq_x: float = 0.0
    sum_sq_err: float = 0.0
    sum_cos: float = 0.0
    sum_norm_ratio: float = 0.0
    sum_l0: float = 0.0
    sum_l1: float = 0.0
    fire_counts: Tensor | None = field(default=None)  # [n] float64

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, codes: Tensor | None = None) -> None:
        x64, xh64 = x.detach().double().reshape(-1, x.shape[-1]), x_hat.detach().double().reshape(-1, x.shape[-1])
        self.rows += x64.shape[0]
        s = x64.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq_x += float((x64**2).sum())
        self.sum_sq_err += float(((x64 - xh64) ** 2).sum())
        self.sum_cos += float(torch.nn.functional.cosine_similarity(x64, xh64, dim=-1, eps=_EPS).sum())
        self.sum_norm_ratio += float((xh64.norm(dim=-1) / x64.norm(dim=-1).clamp_min(_EPS)).sum())
        if codes is not None:
            c = codes.detach().reshape(-1, codes.shape[-1])
            nz = c != 0
            self.sum_l0 += float(nz.sum())
            self.sum_l1 += float(c.double().abs().sum())
            f = nz.double().sum(0)
            self.fire_counts = f if self.fire_counts is None else self.fire_counts + f

    def results(self) -> dict[str, float]:
        if self.rows == 0 or self.sum_x is None:
            raise ValueError("ReconstructionStats.results() called before any update()")
        d = self.sum_x.shape[0]
        mean = self.sum_x / self.rows
        total = self.sum_sq_x - self.rows * float((mean**2).sum())
        out = {
            "rows": float(self.rows),
            "mse": self.sum_sq_err / (self.rows * d),
            "fvu": self.sum_sq_err / max(total, _EPS),
            "cosine": self.sum_cos / self.rows,
            "norm_ratio": self.sum_norm_ratio / self.rows,
        }
        out["explained_variance"] = 1.0 - out["fvu"]
        if self.fire_counts is not None:
            frac = self.fire_counts / self.rows
            out["l0"] = self.sum_l0 / self.rows
            out["l1"] = self.sum_l1 / self.rows
            out["dead_fraction"] = float((frac == 0).double().mean())
            out["dense_fraction"] = float((frac > self.dense_threshold).double().mean())
        return out

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
                    0 when it is as bad as the ablation. The gap g = L_ablated − L_clean is divided by only
                    when g > max(GAP_RTOL · max(|L_clean|, |L_ablated|), GAP_Z · SE(g)) (:func:`loss_recovered`);
                    otherwise the fraction is NaN ("n/a", JSON null) with the reason in words
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


GAP_RTOL = 1e-3
"""A gap L_ablated − L_clean at or below this fraction of the larger of the two losses is too small to divide by."""
GAP_Z = 2.0
"""A gap within this many standard errors of zero is too small to divide by (as the verdicts' "two standard errors")."""


@dataclass(frozen=True)
class Recovered:
    """A loss-recovered fraction with its denominator, and why it is n/a when it is (see :func:`loss_recovered`).

    ``float(r)`` is the fraction (NaN when n/a); arithmetic on ``r`` itself is refused, so no caller prints a
    fraction without deciding what to do with a NaN."""

    value: float
    """(L_ablated − L_spliced) / (L_ablated − L_clean), or NaN when the gap is too small to divide by."""
    gap: float
    """L_ablated − L_clean in nats: the denominator."""
    gap_se: float
    """Standard error of the gap (NaN when per-example losses were not given)."""
    reason: str | None
    """Why ``value`` is NaN, in words naming the gap (None when it is a number)."""

    def __float__(self) -> float:
        return self.value

    def warning(self, baseline: str) -> str | None:
        """The line a caller prints when the fraction is n/a, naming the ``baseline`` and the gap; None otherwise."""
        return None if self.reason is None else f"warning: loss recovered vs {baseline} is n/a: {self.reason}"


def loss_recovered(clean: float, ablated: float, spliced: float, *, gap_se: float = math.nan) -> Recovered:
    """Loss recovered = (L_ablated − L_spliced) / (L_ablated − L_clean), all in nats, with one zero-gap rule.

    Pass the losses by name (``clean=…, ablated=…, spliced=…``): this is the only place the fraction is
    computed. ``gap_se`` is the standard error of the gap g = L_ablated − L_clean, computed from the paired
    per-example differences (``clustered_stderr(ablated_per − clean_per, counts)``) wherever per-example
    losses exist.

    The zero-gap rule: the fraction is a number only when

        g > max(GAP_RTOL · max(|L_clean|, |L_ablated|), GAP_Z · SE(g))      (GAP_RTOL = 1e-3, GAP_Z = 2)

    i.e. the ablation must cost a positive amount that is neither negligible beside the losses themselves
    nor within two standard errors of nothing (an unknown SE drops that term). Otherwise the denominator is
    noise, and dividing by it prints fractions like 291% or −517% that mean nothing; the result is NaN with
    a ``reason`` naming the gap, which every caller prints as a warning line (:meth:`Recovered.warning`)
    and writes as JSON null. A gap that is negative beyond its error (the ablation *lowers* the loss) is
    n/a too: "recovering" a loss the ablation did not cost has no meaning. A NaN loss gives NaN with a
    reason."""
    gap = ablated - clean
    if not all(math.isfinite(v) for v in (clean, ablated, spliced)):
        return Recovered(
            math.nan,
            gap,
            gap_se,
            f"a loss is not a number (clean {clean:.4g}, ablated {ablated:.4g}, spliced {spliced:.4g} nats)",
        )
    floor = GAP_RTOL * max(abs(clean), abs(ablated))
    noise = GAP_Z * gap_se if math.isfinite(gap_se) else 0.0
    if gap > max(floor, noise):
        return Recovered((ablated - spliced) / gap, gap, gap_se, None)
    err = f" ± {gap_se:.4f}" if math.isfinite(gap_se) else ""
    if abs(gap) <= noise:
        why = f"within {GAP_Z:g} standard errors of zero: too small to divide by (the fraction would be noise)"
    elif abs(gap) <= floor:
        why = f"within {GAP_RTOL:g} of the losses' scale ({floor:.2g} nats) of zero: too small to divide by"
    else:
        why = "negative: the ablation lowers the loss, so there is no cost to recover"
    return Recovered(math.nan, gap, gap_se, f"the gap L_ablated − L_clean = {gap:+.4f}{err} nats is {why}")


def percent(fraction: float | Recovered | None, digits: int = 1) -> str:
    """A loss-recovered fraction as a percentage, "n/a" when it is NaN or None (JSON null), never a made-up number."""
    v = math.nan if fraction is None else float(fraction)
    return "n/a" if math.isnan(v) else f"{100 * v:.{digits}f}%"


def percent_interval(lo: float | None, hi: float | None, digits: int = 1) -> str:
    """An interval of fractions as "12.3–45.6%", "n/a" when either end is NaN or None."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "n/a"
    return f"{100 * lo:.{digits}f}–{100 * hi:.{digits}f}%"


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

"""Activation distributions along directions at a site: moments, tails and which family fits.

For a unit direction u, the projections ⟨x, u⟩ over the rows x of a site are described by

- mean, variance (ddof = 1)
- skew G1 = g1 · √(n(n−1)) / (n−2),             g1 = m3 / m2^{3/2}
- excess kurtosis G2 = ((n+1) g2 + 6)(n−1) / ((n−2)(n−3)),  g2 = m4 / m2² − 3
  (m_k the central sample moments; G1, G2 are the bias-corrected estimators, scipy's ``bias=False``)
- bimodality coefficient b = (G1² + 1) / (G2 + 3(n−1)² / ((n−2)(n−3)));  b > 5/9 (a uniform's value)
  hints at two modes
- maximum-likelihood fits (``scipy.stats.<family>.fit``) of Gaussian, logistic, Laplace and Student-t,
  each with its log-likelihood ℓ and BIC = k·ln n − 2ℓ (k free parameters). The best family is the one
  with the lowest BIC: raw ℓ would nearly always pick the Student-t, which holds the Gaussian as df → ∞.

Three kinds of directions:

- ``random``: unit vectors drawn uniformly on the sphere (seeded);
- ``basis``: neuron directions e_j, for a seeded random choice of j;
- ``latent``: a dictionary's latent directions, by default the decoder rows W_dec[i] / ‖W_dec[i]‖ — the
  direction in activation space the latent writes. ``latent_direction="encoder"`` uses the encoder columns
  W_enc[:, i] / ‖W_enc[:, i]‖ instead — the direction the latent reads, whose projection is its
  pre-activation up to scale and bias.

Shapes: B rows, d width, n latents.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats
from torch import Tensor

FAMILIES: dict[str, Any] = {
    "gaussian": stats.norm,
    "logistic": stats.logistic,
    "laplace": stats.laplace,
    "student_t": stats.t,
}
"""Family name → scipy distribution; ``.fit`` gives the maximum-likelihood parameters."""


@dataclass(frozen=True)
class DistributionConfig:
    """Which directions to examine and how many projections to fit."""

    n_random: int = 8
    """Random unit directions."""
    n_basis: int = 8
    """Basis (neuron) directions, a seeded random choice of neurons."""
    n_latents: int = 8
    """Latent directions (when a dictionary is given and no latent ids are chosen: a seeded random choice)."""
    latent_direction: Literal["decoder", "encoder"] = "decoder"
    """Decoder rows (the direction a latent writes) or encoder columns (the direction it reads)."""
    max_samples: int = 4000
    """Rows used per direction (a seeded subsample): the Student-t fit is the slow one."""
    seed: int = 0
    """Seed of the direction draws and the subsample."""

    def __post_init__(self) -> None:
        if self.max_samples < 10:
            raise ValueError(f"max_samples must be ≥ 10 for the moment estimators, got {self.max_samples}")


@dataclass(frozen=True)
class Fit:
    """A maximum-likelihood fit of one family to one direction's projections."""

    family: str
    params: tuple[float, ...]
    """scipy's parameters: (loc, scale), or (df, loc, scale) for the Student-t."""
    loglik: float
    """Total log-likelihood ℓ of the samples under the fitted density."""
    bic: float
    """k·ln n − 2ℓ; lower is better."""


@dataclass(frozen=True)
class DirectionStats:
    """Moments and fits of the projections onto one direction."""

    kind: str
    """``random``, ``basis`` or ``latent``."""
    index: int
    """Draw number for random directions, the neuron for basis, the latent for latent directions."""
    n: int
    mean: float
    var: float
    skew: float
    excess_kurtosis: float
    bimodality: float
    fits: tuple[Fit, ...]
    best: str
    """Family with the lowest BIC, or ``constant`` when the projections do not vary."""

    def fit(self, family: str) -> Fit:
        return next(f for f in self.fits if f.family == family)

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in ("kind", "index", "n", "mean", "var", "skew", "excess_kurtosis", "bimodality", "best")
        }
        out["fits"] = {f.family: {"params": list(f.params), "loglik": f.loglik, "bic": f.bic} for f in self.fits}
        return out


def moments(values: np.ndarray) -> dict[str, float]:
    """Mean, variance (ddof 1), bias-corrected skew G1 and excess kurtosis G2, bimodality coefficient."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n < 4:
        raise ValueError(f"moments need at least 4 values, got {n}")
    mean = float(v.mean())
    c = v - mean
    m2, m3, m4 = float((c**2).mean()), float((c**3).mean()), float((c**4).mean())
    if m2 <= 0:
        return {"mean": mean, "var": 0.0, "skew": math.nan, "excess_kurtosis": math.nan, "bimodality": math.nan}
    g1, g2 = m3 / m2**1.5, m4 / m2**2 - 3.0
    skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    kurt = ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))
    bimodality = (skew**2 + 1.0) / (kurt + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    return {"mean": mean, "var": m2 * n / (n - 1), "skew": skew, "excess_kurtosis": kurt, "bimodality": bimodality}


def fit_families(values: np.ndarray) -> tuple[Fit, ...]:
    """Maximum-likelihood fit of every family in :data:`FAMILIES`, with log-likelihood and BIC."""
    v = np.asarray(values, dtype=np.float64)
    fits = []
    for name, dist in FAMILIES.items():
        params = tuple(float(p) for p in dist.fit(v))
        ll = float(dist.logpdf(v, *params).sum())
        fits.append(Fit(name, params, ll, len(params) * math.log(v.size) - 2.0 * ll))
    return tuple(fits)


def describe(values: np.ndarray, kind: str, index: int) -> DirectionStats:
    """Moments, fits and the best family of one direction's projections."""
    mom = moments(values)
    if mom["var"] <= 1e-12 * max(1.0, mom["mean"] ** 2):
        return DirectionStats(kind, index, int(np.size(values)), **mom, fits=(), best="constant")
    fits = fit_families(values)
    best = min(fits, key=lambda f: f.bic).family
    return DirectionStats(kind, index, int(np.size(values)), **mom, fits=fits, best=best)


def choose_directions(
    d: int,
    cfg: DistributionConfig,
    W_dec: Tensor | None = None,
    W_enc: Tensor | None = None,
    latent_ids: list[int] | None = None,
) -> list[tuple[str, int, Tensor]]:
    """(kind, index, unit direction [d]) for the random, basis and latent directions of ``cfg``.

    W_dec: [n, d] (rows are latent directions); W_enc: [d, n] (columns are)."""
    g = torch.Generator().manual_seed(cfg.seed)
    out: list[tuple[str, int, Tensor]] = []
    rand = torch.randn(cfg.n_random, d, generator=g, dtype=torch.float64)
    out += [("random", i, r / r.norm()) for i, r in enumerate(rand)]
    for j in sorted(torch.randperm(d, generator=g)[: cfg.n_basis].tolist()):
        e = torch.zeros(d, dtype=torch.float64)
        e[j] = 1.0
        out.append(("basis", j, e))
    mat = None
    if cfg.latent_direction == "decoder" and W_dec is not None:
        mat = W_dec.detach().double()
    elif cfg.latent_direction == "encoder" and W_enc is not None:
        mat = W_enc.detach().double().T
    if mat is not None:
        if latent_ids is None:
            latent_ids = sorted(torch.randperm(mat.shape[0], generator=g)[: cfg.n_latents].tolist())
        for i in latent_ids:
            v = mat[i]
            out.append(("latent", int(i), v / v.norm().clamp_min(1e-12)))
    return out


@dataclass(frozen=True, eq=False)
class DistributionReport:
    """Per-direction statistics and the projections they came from (for plots)."""

    stats: tuple[DirectionStats, ...]
    values: tuple[np.ndarray, ...] = field(repr=False)
    """Projections [n] of each direction, aligned with ``stats``."""
    latent_direction: str = "decoder"
    latent_choice: str = ""
    """How the latents were chosen, in words (e.g. "8 drawn at random from the 6,000 that fired"); empty: by the caller."""

    def best_counts(self) -> dict[str, dict[str, int]]:
        """kind → best family → how many directions of that kind it fits best."""
        out: dict[str, Counter] = {}
        for s in self.stats:
            out.setdefault(s.kind, Counter())[s.best] += 1
        return {k: dict(c) for k, c in out.items()}

    def summary_lines(self) -> list[str]:
        """One line per kind of direction: the winning families and the median excess kurtosis."""
        lines = []
        for kind, counts in self.best_counts().items():
            kurt = [s.excess_kurtosis for s in self.stats if s.kind == kind and not math.isnan(s.excess_kurtosis)]
            med = float(np.median(kurt)) if kurt else math.nan
            fams = ", ".join(f"{f} {c}" for f, c in sorted(counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"{kind:7s} directions: best fit {fams}; median excess kurtosis {med:.2f}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "latent_direction": self.latent_direction,
            "latent_choice": self.latent_choice,
            "best_counts": self.best_counts(),
            "directions": [s.to_dict() for s in self.stats],
        }


@torch.no_grad()
def analyse_directions(
    x: Tensor,
    cfg: DistributionConfig = DistributionConfig(),
    W_dec: Tensor | None = None,
    W_enc: Tensor | None = None,
    latent_ids: list[int] | None = None,
) -> DistributionReport:
    """Describe the projections of the rows of ``x`` [B, d] onto random, basis and latent directions."""
    rows = x.detach().reshape(-1, x.shape[-1]).double()
    if rows.shape[0] > cfg.max_samples:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        rows = rows[torch.randperm(rows.shape[0], generator=g)[: cfg.max_samples]]
    dirs = choose_directions(rows.shape[1], cfg, W_dec, W_enc, latent_ids)
    values = tuple((rows @ u).numpy() for _, _, u in dirs)
    return DistributionReport(
        tuple(describe(v, k, i) for (k, i, _), v in zip(dirs, values)), values, cfg.latent_direction
    )


def plot_fits(report: DistributionReport, per_kind: int = 4, bins: int = 60):
    """Histograms (density, log y so the tails show) with the fitted densities; one row per kind.

    The best family's curve is drawn thick. Returns a matplotlib ``Figure`` made without pyplot, so it
    renders with the Agg canvas and never touches the caller's backend or global figure list."""
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(s.kind for s in report.stats))
    per_kind = max(1, min(per_kind, max(sum(s.kind == k for s in report.stats) for k in kinds)))
    fig = Figure(figsize=(3.2 * per_kind, 2.6 * len(kinds)))
    axes = fig.subplots(len(kinds), per_kind, squeeze=False)
    colours = {"gaussian": "#1f77b4", "logistic": "#2ca02c", "laplace": "#d62728", "student_t": "#9467bd"}
    for r, kind in enumerate(kinds):
        items = [(s, v) for s, v in zip(report.stats, report.values) if s.kind == kind][:per_kind]
        for c in range(per_kind):
            ax = axes[r][c]
            if c >= len(items):
                ax.axis("off")
                continue
            s, v = items[c]
            ax.hist(v, bins=bins, density=True, histtype="stepfilled", color="#bbbbbb", edgecolor="none")
            grid = np.linspace(v.min(), v.max(), 300)
            for f in s.fits:
                pdf = FAMILIES[f.family].pdf(grid, *f.params)
                ax.plot(
                    grid,
                    pdf,
                    color=colours[f.family],
                    lw=2.2 if f.family == s.best else 0.9,
                    label=f.family if (r, c) == (0, 0) else None,
                )
            ax.set_yscale("log")
            lo = max(1e-4, 0.5 / (v.size * max(np.ptp(v), 1e-12) / bins))  # one count per bin, as a density
            ax.set_ylim(bottom=lo)
            kurt = "n/a" if math.isnan(s.excess_kurtosis) else f"{s.excess_kurtosis:.1f}"
            ax.set_title(f"{kind} {s.index}: {s.best} (κ={kurt})", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6, loc="lower center", framealpha=0.8)
    fig.suptitle(f"projections onto unit directions (latents: {report.latent_direction} directions)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig

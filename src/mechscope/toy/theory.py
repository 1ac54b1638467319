"""The optimum of the TMS loss inside the symmetric regular-polygon family, in closed form at p → 0.

Why: a trained n=5, m=2 TMS is a perfect pentagon (every D_i = 2/5) but its m/‖W‖²_F is ≈ 0.31, not
2/5, because every row has norm ≈ 1.13 and every bias is ≈ −0.25. This module shows that this is the
optimum of the loss, not a training defect.

Model (Elhage et al. 2022): x' = ReLU(x W Wᵀ + b), loss L = E Σ_i (x_i − x'_i)² (importance 1), each
x_i independently 0 with probability 1 − p and uniform on [0, 1] with probability p.

Symmetric family, two parameters: W_i = a·(cos 2πi/n, sin 2πi/n) (a regular n-gon of radius a, m = 2),
b_i = β for every i. Write s = a² and c_j = cos(2πj/n), so (W Wᵀ)_ij = s·c_{i−j}.

Expected loss, split by the set S of active features (|S| = k):

    L(s, β; p) = (1−p)ⁿ · n·ReLU(β)²  +  n p (1−p)ⁿ⁻¹ · ℓ₁(s, β)  +  Σ_{k≥2} P(k) · E[loss | k active],

with the one-active loss (feature 0 active with value u ~ U[0, 1]; the others read s·c_j·u + β):

    ℓ₁(s, β) = E_u (u − ReLU(s u + β))²  +  Σ_{j=1}^{n−1} E_u ReLU(s c_j u + β)².

The first term is the feature's own reconstruction, the sum is the interference the ReLU lets through
(for the pentagon only the two neighbours at 72°, c = 0.309, can pass it; the ones at 144° have c < 0).
Every expectation is a piecewise polynomial: ∫₀¹ ReLU(αu + β)² du = [(αu+β)³/(3α)] over the part of
[0, 1] where αu + β > 0, and ∫₀¹ u·ReLU(su + β) du = s(1−t³)/3 + β(1−t²)/2 with t = clip(−β/s, 0, 1).

Limit p → 0: the k ≥ 2 terms are O(p²) and β > 0 costs n β² at order p⁰, so the optimum tends to
argmin_{s>0, β≤0} ℓ₁(s, β) (:func:`limit_optimum`; computed here with scipy.optimize). For n = 5 it is
a = 1.1705 (s = 1.370), β = −0.2823: D_i = 2/5 exactly (a regular pentagon at any radius),
m/(represented features) = 2/5, but m/‖W‖²_F = 2/(n a²) = 0.292 < 2/5. The negative bias keeps the neighbours' interference
s·c·u below zero for most u; it also takes |β| off the feature's own output, and a > 1 (a slope s > 1)
wins that back for large u. So m/‖W‖²_F < 2/5 is the price of the bias, and D_i, which is
scale-free, is the measure that sees the pentagon.

At finite p (:func:`finite_p_optimum`) the k ≥ 2 terms are estimated by Monte Carlo with fixed samples
conditioned on k (so the objective is deterministic and smooth enough for Nelder–Mead). For n = 5:
p = 0.01 → a = 1.163, β = −0.275, m/‖W‖²_F = 0.296; p = 0.05 → a = 1.135, β = −0.247, 0.310 (what
training finds: tests/integration/test_toy_models.py). Rows with two active features pay for a large
slope s (u_i + u_j both amplified), so as p grows the optimum moves towards a = 1, β = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.stats import binom


def relu_sq_mean(alpha: float, beta: float) -> float:
    """∫₀¹ ReLU(α u + β)² du, exactly."""
    if alpha == 0:
        return max(beta, 0.0) ** 2
    # the part of [0, 1] where αu + β > 0
    root = -beta / alpha
    lo, hi = (max(0.0, root), 1.0) if alpha > 0 else (0.0, min(1.0, root))
    if hi <= lo:
        return 0.0
    return ((alpha * hi + beta) ** 3 - (alpha * lo + beta) ** 3) / (3 * alpha)


def own_loss(s: float, beta: float) -> float:
    """E_u (u − ReLU(s u + β))², u ~ U[0, 1], s > 0: the active feature's own reconstruction error."""
    t = min(max(-beta / s, 0.0), 1.0)
    cross = s * (1 - t**3) / 3 + beta * (1 - t**2) / 2  # ∫ u·ReLU(su + β)
    return 1 / 3 - 2 * cross + relu_sq_mean(s, beta)


def one_active_loss(s: float, beta: float, n: int = 5) -> float:
    """ℓ₁(s, β) = E(u − ReLU(su + β))² + Σ_{j=1}^{n−1} E ReLU(s cos(2πj/n) u + β)²."""
    return own_loss(s, beta) + sum(relu_sq_mean(s * math.cos(2 * math.pi * j / n), beta) for j in range(1, n))


def polygon(n: int, a: float = 1.0) -> np.ndarray:
    """[n, 2] the regular n-gon of radius a: W_i = a (cos 2πi/n, sin 2πi/n)."""
    ang = 2 * np.pi * np.arange(n) / n
    return a * np.stack([np.cos(ang), np.sin(ang)], 1)


@dataclass(frozen=True)
class PolygonOptimum:
    """The best member of the symmetric family and what it implies."""

    n: int
    """Features (corners of the polygon)."""
    p: float
    """Activation probability (0 = the limit p → 0)."""
    a: float
    """Row norm ‖W_i‖."""
    bias: float
    """Common bias β."""
    loss: float
    """ℓ₁ at the optimum (p = 0) or the expected loss L (p > 0)."""

    @property
    def dims_per_feature(self) -> float:
        """m/‖W‖²_F = 2/(n a²)."""
        return 2 / (self.n * self.a**2)

    @property
    def feature_dimensionality(self) -> float:
        """D_i of every corner: 1/Σ_j cos²(2πj/n) = 2/n for n ≥ 3 (independent of a)."""
        return 1 / float(sum(math.cos(2 * math.pi * j / self.n) ** 2 for j in range(self.n)))


def limit_optimum(n: int = 5) -> PolygonOptimum:
    """argmin over s = a² > 0, β ≤ 0 of ℓ₁(s, β): the optimum of the family as p → 0."""
    res = minimize(
        lambda v: one_active_loss(math.exp(v[0]), -math.exp(v[1]), n),
        x0=[0.0, math.log(0.2)],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000},
    )
    s, beta = math.exp(res.x[0]), -math.exp(res.x[1])
    return PolygonOptimum(n, 0.0, math.sqrt(s), beta, float(res.fun))


def expected_loss(
    s: float, beta: float, p: float, n: int = 5, samples: int = 20_000, seed: int = 0, _cache: dict | None = None
) -> float:
    """L(s, β; p): the k = 0 and k = 1 terms exactly, k ≥ 2 by Monte Carlo (``samples`` rows per k with
    k ≥ 2 whose probability exceeds 1e-12; fixed seed, so the function is deterministic)."""
    G = s * np.cos(2 * np.pi * (np.arange(n)[:, None] - np.arange(n)[None, :]) / n)  # [n, n]
    total = binom.pmf(0, n, p) * n * max(beta, 0.0) ** 2 + binom.pmf(1, n, p) * one_active_loss(s, beta, n)
    rng = np.random.default_rng(seed)
    for k in range(2, n + 1):
        pk = binom.pmf(k, n, p)
        if pk < 1e-12:
            continue
        x = np.zeros((samples, n))
        idx = np.argsort(rng.random((samples, n)), axis=1)[:, :k]  # a uniform k-subset per row
        np.put_along_axis(x, idx, rng.random((samples, k)), axis=1)
        out = np.maximum(x @ G + beta, 0)
        total += pk * float(((x - out) ** 2).sum(1).mean())
    return float(total)


def finite_p_optimum(p: float, n: int = 5, samples: int = 20_000, seed: int = 0) -> PolygonOptimum:
    """argmin over (a, β) of L(a², β; p) (Nelder–Mead from the p → 0 optimum)."""
    if not 0 < p <= 1:
        raise ValueError(f"p must lie in (0, 1], got {p}")
    start = limit_optimum(n)
    res = minimize(
        lambda v: expected_loss(v[0] ** 2, v[1], p, n, samples, seed),
        x0=[start.a, start.bias],
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-12, "maxiter": 2000},
    )
    return PolygonOptimum(n, p, abs(float(res.x[0])), float(res.x[1]), float(res.fun))

"""Models whose learning coefficient λ is known analytically, for checking the estimator.

Specs (``mechscope llc --known SPEC``):

- ``regular:d`` — linear regression y = wᵀx with w ∈ ℝᵈ at a random full-rank w*: λ = d/2.
- ``monomial:k1,k2,…`` — one product term f(x) = x₁ · Π wᵢ^{kᵢ} at w* = 0, so
  K(w) = ½ E[x₁²] Π wᵢ^{2kᵢ} and λ = minᵢ 1/(2kᵢ). Terms separated by ``+`` use disjoint variables
  and their own input coordinate, f(x) = Σⱼ xⱼ Πᵢ∈ⱼ wᵢ^{kᵢ}, and their λ add: ``monomial:1,3+2``.
- ``rrr:M,H,N,r`` — reduced-rank regression, the two-layer linear network x ↦ B A x with
  A ∈ ℝ^{H×M}, B ∈ ℝ^{N×H}, at a true product of rank r: λ from Aoyagi & Watanabe (2005), :func:`aoyagi_rrr`.

All use inputs x ~ N(0, I) and *noise-free* targets y = f(x; w*), with the Gaussian negative
log-likelihood (σ = 1, constant dropped) as the loss, ℓ = ½ ‖f(x; w) − y‖². Then
L_n(w) − L_n(w*) = K_n(w) ≥ 0 exactly, the empirical version of K with the empirical input covariance
Σ_n in place of I; Σ_n is positive definite, so K_n has the same λ as K. Noise-free targets are a
deliberate choice: with noisy targets nβ(E[L_n] − L_n(w*)) carries an extra data-dependent term of
size about √(λβ/2)·U_n (U_n ~ N(0, 1), Watanabe's WBIC analysis), about 20% of λ at n = 10⁴, which
measures the sample rather than the sampler; the check here isolates the sampler and estimator.

For ``rrr`` the point w* is the most singular point of the true set: A's first r rows and B's first r
columns random, the rest exactly zero (so rank A = rank B = r). Aoyagi's λ is the minimum over the true
set, attained there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError


def aoyagi_rrr(M: int, H: int, N: int, r: int) -> tuple[float, int]:
    """λ and its multiplicity m for reduced-rank regression (input M, hidden H, output N, true rank r).

    Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in Bayesian estimation":
      case 2, M + H < N + r:  λ = (HM − Hr + Nr)/2, m = 1
      case 3, N + H < M + r:  λ = (HN − Hr + Mr)/2, m = 1
      case 4, M + N < H + r:  λ = MN/2, m = 1
      case 1, otherwise (N + r ≤ M + H, M + r ≤ N + H, H + r ≤ M + N):
        M + H + N + r even:  λ = [2(H + r)(M + N) − (M − N)² − (H + r)²]/8,      m = 1
        M + H + N + r odd:   λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1]/8,  m = 2
    """
    if min(M, H, N) < 1 or r < 0 or r > min(M, H, N):
        raise UsageError(f"rrr needs M, H, N ≥ 1 and 0 ≤ r ≤ min(M, H, N), got M={M} H={H} N={N} r={r}")
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2, 1
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2, 1
    if M + N < H + r:
        return M * N / 2, 1
    s = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 0:
        return s / 8, 1
    return (s + 1) / 8, 2


class Monomials(nn.Module):
    """f(x) = Σⱼ xⱼ Πᵢ∈ⱼ wᵢ^{kᵢ}: x [B, J] → [B, 1]; one scalar parameter per variable, all at 0."""

    powers: Tensor
    """[P] the exponent kᵢ of each variable (a buffer)."""

    def __init__(self, terms: tuple[tuple[int, ...], ...]):
        super().__init__()
        self.terms = terms
        self.w = nn.Parameter(torch.zeros(sum(len(t) for t in terms)))
        starts = [sum(len(t) for t in terms[:j]) for j in range(len(terms))]
        self.slices = [slice(a, a + len(t)) for a, t in zip(starts, terms)]
        self.register_buffer("powers", torch.tensor([k for t in terms for k in t], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        factors = self.w.pow(self.powers)  # [P]
        prods = torch.stack([factors[s].prod() for s in self.slices])  # [J]
        return (x @ prods)[:, None]


class TwoLayerLinear(nn.Module):
    """x [B, M] ↦ B A x [B, N] (no biases)."""

    def __init__(self, M: int, H: int, N: int):
        super().__init__()
        self.A = nn.Linear(M, H, bias=False)
        self.B = nn.Linear(H, N, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.B(self.A(x))


def gaussian_nll(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """ℓ = ½ ‖f(x) − y‖² averaged over the batch rows (σ = 1, constant dropped)."""
    x, y = batch
    return 0.5 * (model(x) - y).pow(2).sum(-1).mean()


@dataclass(frozen=True, eq=False)
class KnownModel:
    """A model at w*, its data and loss, and the true λ."""

    spec: str
    model: nn.Module
    inputs: Tensor  # [n, in]
    targets: Tensor  # [n, out]
    loss_fn: Callable[[nn.Module, tuple[Tensor, Tensor]], Tensor]
    llc_true: float
    multiplicity: int

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


_EXAMPLES = "e.g. regular:4, monomial:1,3+2 or rrr:5,3,5,0"


def _ints(text: str, where: str) -> tuple[int, ...]:
    """The comma-separated integers of ``text``; ``where`` ("--known 'x'") starts the error."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{where}: cannot read the integers {text!r}; write {_EXAMPLES}") from None
    return vals


def _regular(args: str, where: str, n: int, g: torch.Generator):
    vals = _ints(args, where)
    d = vals[0] if len(vals) == 1 else 0
    if d < 1:
        raise UsageError(f"{where}: regular:d needs one integer d ≥ 1")
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g))
    return model, torch.randn(n, d, generator=g), d / 2, 1


def _monomial(args: str, where: str, n: int, g: torch.Generator):
    terms = tuple(_ints(t, where) for t in args.split("+"))
    if any(k < 1 for t in terms for k in t):
        raise UsageError(f"{where}: monomial exponents must be integers ≥ 1")
    lam = sum(min(1 / (2 * k) for k in t) for t in terms)
    # multiplicity of a term: how many of its variables reach the minimum 1/(2k) (the largest k);
    # of a sum in disjoint variables: Σ(mⱼ − 1) + 1 (the log powers of the convolved densities add)
    mult = sum(sum(1 for k in t if k == max(t)) - 1 for t in terms) + 1
    return Monomials(terms), torch.randn(n, len(terms), generator=g), lam, mult


def _rrr(args: str, where: str, n: int, g: torch.Generator):
    vals = _ints(args, where)
    if len(vals) != 4:
        raise UsageError(f"{where}: rrr:M,H,N,r needs four integers")
    M, H, N, r = vals
    try:
        lam, mult = aoyagi_rrr(M, H, N, r)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    model = TwoLayerLinear(M, H, N)
    with torch.no_grad():
        model.A.weight.zero_()
        model.B.weight.zero_()
        model.A.weight[:r] = torch.randn(r, M, generator=g)
        model.B.weight[:, :r] = torch.randn(N, r, generator=g)
    return model, torch.randn(n, M, generator=g), lam, mult


KNOWN: dict[str, Callable] = {"regular": _regular, "monomial": _monomial, "rrr": _rrr}
"""Spec kind → builder(args, where, n, generator) → (model at w*, inputs, λ, multiplicity); ``where``
(e.g. "--known 'rrr:1'") starts its errors."""


def known_model(spec: str, n: int = 10_000, seed: int = 0, *, name: str = "spec") -> KnownModel:
    """Build the known-answer model ``spec`` with ``n`` rows of noise-free data. Errors about the spec start
    with ``name`` and the spec (the CLI passes its flag, ``--known``)."""
    where = f"{name} {spec!r}"
    kind, _, args = spec.partition(":")
    if kind not in KNOWN or not args.strip():
        raise UsageError(
            f"{where}: unknown known-answer spec; use one of regular:d, monomial:k1,k2[+k3,…], "
            f"rrr:M,H,N,r ({_EXAMPLES})"
        )
    if n < 2:
        raise UsageError(f"known-answer models need n ≥ 2 rows, got {n}")
    g = torch.Generator().manual_seed(seed)
    model, x, lam, mult = KNOWN[kind](args, where, n, g)
    with torch.no_grad():
        y = model(x)
    return KnownModel(spec, model, x, y.detach(), gaussian_nll, float(lam), int(mult))


def _sinh_grid(gamma: float, points: int):
    """Quadrature nodes w and weights dw on |w| ≤ 10/√γ ∧ 50, dense near 0 (w = 10⁻⁴ sinh t, t uniform):
    the localised posterior of a product term lives near the axes, at widths down to ~10⁻³ far along them."""
    import numpy as np

    half = min(10 / math.sqrt(gamma), 50.0)
    t = np.linspace(-1, 1, points) * math.asinh(half / 1e-4)
    return 1e-4 * np.sinh(t), 1e-4 * np.cosh(t) * (t[1] - t[0])


def localized_monomial_llc(spec: str, nbeta: float, gamma: float, scale: float = 1.0) -> float:
    """The exact expectation of nβ·K under the localised posterior of a ``monomial`` spec, by quadrature:
    what λ̂ converges to with infinitely long, unbiased chains at this nβ and γ (λ itself is its limit as
    γ/nβ → 0). ``scale`` is E[x²] (1 for the population; the empirical mean for a data set).

    With K = (s/2)·Π wᵢ^{2kᵢ} and a = nβ·s/2, per term (terms are independent, so their expectations add),
    the prior weight π(w) = e^{−γ‖w‖²/2} and M(w) = Π wᵢ^{2kᵢ}:

    - without an exponent 1 (one or two variables):  E[aM] under π(w)·exp(−aM(w));
    - with an exponent 1 on w₁ (two or three variables, the rest v): w₁ is Gaussian given v with precision
      2aM'(v) + γ, M' = M / w₁², so E = ∫ c(v)·(2aM' + γ)^{-1/2} π(v) dv / ∫ (2aM' + γ)^{-1/2} π(v) dv,
      c(v) = aM' / (2aM' + γ)  (→ 1/(2k) as γ/a → 0, by parts).

    Larger terms raise a UsageError. Quadrature on a grid dense near 0 (:func:`_sinh_grid`): 200,001 points
    in one dimension, 1,201² in two (the same numbers to 4 digits as 5,001² on the shapes of docs/llc.md).
    """
    import numpy as np

    kind, _, args = spec.partition(":")
    if kind != "monomial":
        raise UsageError(f"localized_monomial_llc needs a monomial spec, got {spec!r}")
    a = nbeta * scale / 2
    total = 0.0
    for t in (list(_ints(t, f"monomial spec {spec!r}")) for t in args.split("+")):
        gauss = 1 in t and len(t) > 1
        if gauss:
            t.remove(1)
        if len(t) > 2:
            raise UsageError(
                f"the quadrature covers terms of up to two variables, or three with an exponent 1, not {spec!r}"
            )
        w, dw = _sinh_grid(gamma, 200_001 if len(t) == 1 else 1_201)
        if len(t) == 1:
            m, weight = w ** (2 * t[0]), np.exp(-gamma / 2 * w**2) * dw  # [G]
        else:
            m = w[:, None] ** (2 * t[0]) * w[None, :] ** (2 * t[1])  # [G, G]
            weight = np.exp(-gamma / 2 * (w[:, None] ** 2 + w[None, :] ** 2)) * dw[:, None] * dw[None, :]
        if gauss:
            prec = 2 * a * m + gamma
            p = weight * prec**-0.5
            total += float(((a * m / prec) * p).sum() / p.sum())
        else:
            log_p = -a * m
            p = weight * np.exp(log_p - log_p.max())
            total += float((a * m * p).sum() / p.sum())
    return total


def default_nbeta(n: int) -> float:
    """nβ = n / ln n (β = 1/ln n, the WBIC temperature)."""
    if n < 2:
        raise UsageError(f"nβ = n/ln n needs n ≥ 2 rows, got {n}")
    return n / math.log(n)

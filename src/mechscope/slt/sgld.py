"""Localised SGLD samplers as ``torch.optim.Optimizer`` subclasses.

The sampler draws from the localised, tempered posterior around the trained weights w*:

    p(w) ∝ exp(−U(w)),   U(w) = nβ · L_n(w) + (γ/2) · ‖w − w*‖²

with L_n the mean loss on the n training rows, nβ the inverse temperature times n, γ ≥ 0 the
localisation strength (γ = 0: unlocalised SGLD, U(w) = nβ · L_n(w)). The caller computes the minibatch mean loss L_b(w), calls ``backward()`` and
then ``step()``; the gradient of U is estimated as nβ ∇L_b(w) + γ (w − w*).

SGLD (Welling & Teh 2011, localised as in Lau et al. 2023), with step size ε:

    w ← w − (ε/2) · ∇U(w) + √ε · ξ,                  ξ ~ N(0, I)

RMSProp-preconditioned SGLD (Li et al. 2016, "pSGLD"), with α the averaging rate and δ a floor:

    V ← α V + (1 − α) ∇U(w)²,   G = 1 / (δ + √V)
    w ← w − (ε/2) · G ⊙ ∇U(w) + √ε · √G ⊙ ξ

Departures from the papers: (1) V averages the squared gradient of U itself (nβ-scaled, with the
localisation term), not of the unscaled loss, so that ε is a step in preconditioned units whatever the
loss scale; (2) pSGLD's Γ(w) correction term (the divergence of G) is dropped, as in the paper's own
experiments, because G changes slowly — which needs α close to 1: on a quadratic the stationary
variance came out 23% too large with α = 0.99 (G follows the chain) and within 5% with α = 0.999, the
default here; (3) V starts at the first gradient squared rather than 0, so the
first steps are not huge; (4) the floor δ defaults to 1 (the paper uses 1e-5): ∇U is exactly 0 at a
minimum w* of noise-free data, and a tiny δ would then make G, and the first noise draws, enormous; with
δ = 1, G ≤ 1, so the preconditioned step is never larger than plain SGLD's at the same ε (|∇U| is
≫ 1 wherever the posterior lives, since it carries the factor nβ). Both samplers update all parameters with fused ``torch._foreach_*`` kernels
and draw the noise for every parameter in one ``randn`` call (the per-step cost is then dominated by
the model's forward and backward passes, not by Python).

Each step also records, for the MALA acceptance diagnostic, the drift it applied and the noise scale
(:meth:`LocalSGLD.proposal`), so the diagnostic needs no second copy of the update maths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor

from mechscope.errors import UsageError


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(
            f"{name} must be a finite number > 0, got {value!r}: pass a positive value "
            f"(or let `mechscope llc --calibrate` choose it)"
        )


def sq_distance(params: list[Tensor], w_star: list[Tensor]) -> float:
    """‖w − w*‖² over a list of tensors: one fused norm per tensor (float32), summed in float64, one sync."""
    norms = torch._foreach_norm(torch._foreach_sub([p.detach() for p in params], w_star))
    return float(torch.stack(norms).double().square().sum())


class LocalSGLD(torch.optim.Optimizer):
    """SGLD localised at the parameters' values when the optimizer is built (w*).

    ``lr`` is ε, ``nbeta`` is nβ, ``localization`` is γ. Parameters' ``.grad`` must hold ∇L_b (the
    gradient of the minibatch *mean* loss) when :meth:`step` is called.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        nbeta: float,
        localization: float,
        generator: torch.Generator | None = None,
    ):
        _check_positive("the step size ε (lr)", lr)
        _check_positive("nβ (nbeta)", nbeta)
        if not (isinstance(localization, (int, float)) and math.isfinite(localization) and localization >= 0):
            raise UsageError(
                f"the localisation γ must be a finite number ≥ 0 (0: unlocalised SGLD), got {localization!r}"
            )
        super().__init__(params, dict(lr=lr, nbeta=nbeta, localization=localization))
        self.generator = generator
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["w_star"] = p.detach().clone()
        self._last_drift: list[Tensor] | None = None
        self._last_scale: list[Tensor] | float | None = None

    def _noise(self, params: list[Tensor]) -> list[Tensor]:
        """One standard-normal draw for all ``params`` (a single ``randn`` call, split into views)."""
        total = sum(p.numel() for p in params)
        flat = torch.randn(total, generator=self.generator, device=params[0].device, dtype=params[0].dtype)
        return [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in params]), params)]

    def grad_U(self, group: dict, params: list[Tensor]) -> list[Tensor]:
        """∇U = nβ ∇L_b + γ (w − w*) for the parameters of one group (a new list of tensors)."""
        w_star = [self.state[p]["w_star"] for p in params]
        diff = list(torch._foreach_sub([p.detach() for p in params], w_star))
        torch._foreach_mul_(diff, group["localization"])
        grads = cast(list[Tensor], [p.grad for p in params])  # set by the backward before each step
        torch._foreach_add_(diff, grads, alpha=group["nbeta"])
        return diff

    keep_proposal: bool = True
    """Keep ∇U and the noise scale of the next step for :meth:`proposal` (the MALA diagnostic). The estimator
    sets it only before the steps it diagnoses; without it, plain SGLD takes the fused path below."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - the Optimizer API
        """One Langevin step on every parameter that has a gradient: w ← w − ½ε·G∇U + √ε·√G·ξ, with G from
        :meth:`precondition` (the identity when it returns None).

        Fused path (plain SGLD, ``keep_proposal`` False): the same update written as three in-place passes and
        no temporary for ∇U, w ← lerp(w, w*, εγ/2) − (ε·nβ/2)·∇L_b + √ε·ξ, since
        w − (ε/2)(nβ∇L_b + γ(w − w*)) = w + (εγ/2)(w* − w) − (ε·nβ/2)∇L_b. Equal in exact arithmetic (and the
        same noise draws); in float32 the rounding differs, so long chains are not bit-identical across paths."""
        if not self.keep_proposal and type(self).precondition is LocalSGLD.precondition:
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                eps = group["lr"]
                torch._foreach_lerp_(params, [self.state[p]["w_star"] for p in params], eps * group["localization"] / 2)
                torch._foreach_add_(params, [p.grad for p in params], alpha=-eps * group["nbeta"] / 2)
                torch._foreach_add_(params, self._noise(params), alpha=math.sqrt(eps))
            self._last_drift = self._last_scale = None
            return None
        drifts, scales = [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            g = self.grad_U(group, params)
            G = self.precondition(group, params, g)
            eps = group["lr"]
            torch._foreach_add_(params, g if G is None else torch._foreach_mul(g, G), alpha=-eps / 2)
            noise = self._noise(params)
            if G is not None:
                torch._foreach_mul_(noise, torch._foreach_sqrt(G))
            torch._foreach_add_(params, noise, alpha=math.sqrt(eps))
            drifts += g
            scales += [eps] * len(params) if G is None else torch._foreach_mul(G, eps)
        self._last_drift, self._last_scale = drifts, scales
        return None

    def proposal(self) -> tuple[list[Tensor], list]:
        """The ∇U used and the per-parameter variance scale (ε, or ε·G) of the last step, for MALA."""
        if self._last_drift is None:
            raise RuntimeError("proposal() is only defined after a step taken with keep_proposal = True")
        return self._last_drift, self._last_scale  # type: ignore[return-value]

    def precondition(self, group: dict, params: list[Tensor], g: list[Tensor]) -> list[Tensor] | None:
        """G for the parameters of one group, given their ∇U ``g`` (None: identity)."""
        return None

    def distance(self) -> float:
        """‖w − w*‖ over all parameters (escape diagnostic)."""
        params = [p for group in self.param_groups for p in group["params"]]
        return math.sqrt(sq_distance(params, [self.state[p]["w_star"] for p in params]))


class LocalRMSpropSGLD(LocalSGLD):
    """RMSProp-preconditioned SGLD (pSGLD) localised at w*; see the module docstring for the update."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        nbeta: float,
        localization: float,
        alpha: float = 0.999,
        eps_floor: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        if not 0 <= alpha < 1:
            raise UsageError(f"the RMSProp averaging rate alpha must be in [0, 1), got {alpha}")
        super().__init__(params, lr, nbeta, localization, generator)
        for group in self.param_groups:
            group["alpha"], group["eps_floor"] = alpha, eps_floor

    def precondition(self, group: dict, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """G = 1 / (δ + √V), V the running average of ∇U² (updated here, once per step)."""
        sq = torch._foreach_mul(g, g)
        V = []
        for p, s in zip(params, sq):
            st = self.state[p]
            if "V" not in st:
                st["V"] = s.clone()
            V.append(st["V"])
        torch._foreach_mul_(V, group["alpha"])
        torch._foreach_add_(V, sq, alpha=1 - group["alpha"])
        G = list(torch._foreach_sqrt(V))
        torch._foreach_add_(G, group["eps_floor"])
        torch._foreach_reciprocal_(G)
        return G


SAMPLERS: dict[str, type[LocalSGLD]] = {"sgld": LocalSGLD, "rmsprop_sgld": LocalRMSpropSGLD}
"""Sampler name → optimizer class (CLI choices come from here)."""

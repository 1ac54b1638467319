"""Automatic choice of the step size ε and the localisation γ, with the sweep kept for a plot.

The rule (the same for every model; nothing is tuned per case):

1. ε is swept on a grid in units of 1/nβ (ε · nβ from ``eps_grid``, largest first), because the drift
   of the Langevin step is (ε/2)·nβ·∇L: the same ε·nβ means the same step in loss units whatever n is.
2. γ is tried from the smallest value of ``gammas`` up, and the smallest γ with a healthy plateau wins.
   Why the smallest: the localising prior (γ/2)‖w − w*‖² pulls the chain towards w* and lowers the
   sampled loss, so λ̂ is biased *low* by an amount that grows with γ, and the chains at a large γ look
   perfectly healthy while being biased (the defect of the first version of this rule). On the monomial
   w⁴ at n = 10⁴ the exact expectation (quadrature) is 0.072, 0.217, 0.246, 0.2496 at γ = 100, 10, 1, 0.1
   against λ = 0.25. A larger γ is used only when the smaller ones cannot be sampled healthily.
3. A pilot is **healthy** when every chain stays finite, the mean MALA acceptance is at least
   ``accept_min`` (the step's discretisation error is small), R̂ ≤ 1.1, no chain has a negative λ̂, and
   fewer than half of the chains are flagged drifting or escaping. Departure from the first version,
   which wanted no warning at all: the per-chain drift test calls 6% of stationary chains with lag-1
   autocorrelation 0.99 drifting (12% at 1,600 draws), so one of 4 chains warned in 22–40% of good pilots
   and the sweep skipped good settings at random (``monomial:1+2`` fell through to γ = 100 and −31%);
   two of 4 happens in ~2% (6p² for a per-chain rate p). A real problem (burn-in too short, a step too
   large) moves every chain and is still caught, and split-R̂ compares the halves of all chains at once.
   The final run's warnings still name every flagged chain.
4. Pilots are long enough to be judged. Each starts with Langevin time ε·nβ × draws = ``pilot_time``
   (burn-in half that; steps clipped to [``pilot_min_steps``, ``pilot_max_steps``]) and, while it is finite and
   accepted (MALA) but its standard error exceeds ``pilot_rel_se`` · |λ̂| or its diagnostics warn, it is run
   again with twice the draws and burn-in, the last doubling clipped to ``pilot_max_steps`` draws (the first
   version stopped at the last power-of-two multiple below the cap, so a pilot could end at half the cap). A short pilot of a flat posterior
   (a monomial, a small γ) has a noisy λ̂ and noisy diagnostics: judged as it was, it failed at random, so
   the old rule fell through to a large γ; judged at a fixed precision, the small γ passes.
5. For each γ, walking down the ε grid, the first pair of *adjacent* healthy ε whose λ̂ agree —
   |λ̂₁ − λ̂₂| ≤ ``rel_tol`` · max(|λ̂₁|, |λ̂₂|) + 2·√(SE₁² + SE₂²) — is a plateau: the estimate no longer
   depends on the step. The *smaller* ε of the pair is chosen: its discretisation bias is the smaller
   (for a quadratic loss the bias of λ̂ grows like ε·nβ·h/4) and the agreement shows it mixes.
   The final run gets at least the chosen pilot's burn-in and twice its draws
   (:attr:`CalibrationResult.burn_in`, :attr:`CalibrationResult.draws`).
6. Stability in γ: the chosen ε is also piloted at the next larger γ of the grid (same length), and
   :attr:`CalibrationResult.gamma_check` says whether λ̂ agrees there (the same agreement test). When it
   does, the estimate sits on the plateau of λ̂ against γ (a larger γ would not change it), so the bias
   left by the localisation is within the tolerance; when it does not, λ̂ still rises as γ falls and the
   smallest healthy γ is the least biased estimate available, which the caller reports.
7. If no γ has a plateau, the healthy setting with the highest MALA acceptance is taken (or, failing
   that, the finite one with the highest acceptance) and ``CalibrationResult.found_plateau`` is False;
   the caller reports it.

Limits. Directions that only the prior confines (the flat valleys of a singular model: ``rrr``'s
rescalings, ``monomial:1,3``'s axis w₂ = 0) relax on the prior's time scale, Langevin time ~2/γ, i.e.
2·nβ/(γ · ε·nβ) steps — 2·10⁴ steps at γ = 0.1, ε·nβ = 1, n = 10⁴. Pilots and final runs are usually shorter,
so along those valleys the chains sample the neighbourhood of w* they reached, not the whole localised
posterior; docs/llc.md reports where that matters.

Rule v4 (options, off by default; docs/llc.md, "Rule v4"): with ``LLCConfig.metropolis`` the pilots and the final
run are Metropolis-adjusted, so a chain cannot run away where a valley's cross-curvature grows; ``final_relax_max``
> 0 lengthens the final run to the prior's relaxation time 2/(γ·ε) steps (capped); ``gamma_check_precise`` doubles
the γ check's pilot to the same precision as the others; a γ below 0.1 comes from ``gammas``. Together they are
``bench/llc_known.py --v4``. It is not the default because it was not measured on the whole table.

Departure from devinterp's guidance ("pick ε and γ by eye from the loss traces"): the plateau-and-health
rule replaces the eye so that the table in docs/llc.md is calibrated by one rule with no per-case tuning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mechscope.config import COUNT, NON_NEGATIVE, check_ranges, in_range
from mechscope.errors import UsageError
from mechscope.slt.estimator import GAMMA, LLCConfig, LLCResult, LossFn, estimate_llc
from mechscope.slt.known import default_nbeta

FRACTION = in_range(0, 1, lo_open=True)
"""Range of a relative tolerance or an acceptance rate: (0, 1]."""


@dataclass(frozen=True)
class CalibrationConfig:
    """The sweep over ε and γ and the pilot chains it runs at each setting."""

    eps_grid: tuple[float, ...] = field(
        default=(10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003), metadata=in_range(0, 1e3, lo_open=True)
    )
    """Step sizes tried, as ε · nβ, largest first; each in (0, 1000]."""
    gammas: tuple[float, ...] = field(default=(0.1, 1.0, 10.0, 100.0), metadata=GAMMA)
    """Localisation strengths tried, smallest first; each in (0, 10^6]."""
    pilot_chains: int = field(default=4, metadata=in_range(2, why="the standard error comes from the chains' spread"))
    """Chains per pilot run (≥ 2)."""
    pilot_time: float = field(default=150.0, metadata=in_range(0, 1e6, lo_open=True))
    """Langevin time ε·nβ × draws of each pilot chain (its burn-in runs half as long), in (0, 10^6]."""
    pilot_min_steps: int = field(default=200, metadata=in_range(6, why="the diagnostics split the trace"))
    """Fewest draws of a pilot chain (at large ε), ≥ 6."""
    pilot_max_steps: int = field(default=3200, metadata=COUNT)
    """Most draws of a pilot chain (after doubling), to bound the sweep's cost; ≥ pilot_min_steps."""
    pilot_rel_se: float = field(default=0.05, metadata=FRACTION)
    """A finite, accepted pilot is re-run with twice the draws while its SE exceeds this × |λ̂| (or it warns);
    in (0, 1]."""
    accept_min: float = field(default=0.9, metadata=FRACTION)
    """Lowest mean MALA acceptance of a healthy setting, in (0, 1]."""
    rel_tol: float = field(default=0.1, metadata=FRACTION)
    """Relative agreement of λ̂ at adjacent ε that makes a plateau, in (0, 1] (at 1 any two λ̂ of one sign agree)."""
    max_healthy: int = field(default=3, metadata=COUNT)
    """Healthy pilots tried at one γ without finding a plateau before moving to the next γ (bounds the cost); ≥ 1."""
    final_relax_max: int = field(default=0, metadata=NON_NEGATIVE)
    """Rule v4 (0: off, rule v3): the final run's draws are raised to the prior's relaxation time along a flat
    valley, 2/(γ·ε) steps, capped at this many; ≥ 0."""
    gamma_check_precise: bool = False
    """Rule v4: the γ check's pilot is a pilot like the others, doubled until its SE ≤ ``pilot_rel_se`` · |λ̂|
    (or ``pilot_max_steps``), instead of one run as long as the chosen pilot (rule v3)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.eps_grid:
            raise UsageError("`eps_grid` is empty: give at least one ε·nβ")
        if not self.gammas:
            raise UsageError("`gammas` is empty: give at least one γ")
        if self.pilot_max_steps < self.pilot_min_steps:
            raise UsageError(
                f"`pilot_max_steps` = {self.pilot_max_steps} is below `pilot_min_steps` = "
                f"{self.pilot_min_steps}; give pilot_max_steps ≥ pilot_min_steps"
            )


@dataclass(frozen=True)
class CalibrationResult:
    """Every pilot measured, and the chosen setting."""

    points: tuple[dict[str, Any], ...]
    """One dict per pilot: eps, eps_nbeta, gamma, llc, se, mala, rhat, healthy, warnings."""
    epsilon: float
    gamma: float
    found_plateau: bool
    nbeta: float
    burn_in: int
    """Burn-in of the chosen pilot: the final run should use at least this."""
    draws: int
    """Twice the draws of the chosen pilot (rule v4: at least the relaxation time, :func:`final_draws`): the final
    run should use at least this."""
    gamma_check: dict[str, Any] | None = None
    """The chosen ε piloted at the next larger γ: gamma, llc, se, agree (None when γ is the largest tried)."""

    def final_config(self, cfg: LLCConfig) -> LLCConfig:
        """``cfg`` with the chosen ε and γ, and at least the recommended burn-in and draws."""
        return dataclasses.replace(
            cfg,
            epsilon=self.epsilon,
            gamma=self.gamma,
            burn_in=max(cfg.burn_in, self.burn_in),
            draws=max(cfg.draws, self.draws),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "gamma": self.gamma,
            "found_plateau": self.found_plateau,
            "nbeta": self.nbeta,
            "burn_in": self.burn_in,
            "draws": self.draws,
            "gamma_check": self.gamma_check,
            "points": list(self.points),
        }


def _healthy(res: LLCResult, accept_min: float) -> bool:
    """Rule 3 of the module docstring: finite, accepted, R̂ ≤ 1.1, no negative chain, and fewer than half of the
    chains flagged drifting or escaping."""
    C = res.loss_traces.shape[0]
    f = res.flags
    return bool(
        np.all(np.isfinite(res.loss_traces))
        and np.isfinite(res.mala_accept)
        and res.mala_accept >= accept_min
        and not (np.isfinite(res.rhat) and res.rhat > 1.1)
        and not f.get("negative")
        and 2 * len(f.get("drifting", [])) < C
        and 2 * len(f.get("escaping", [])) < C
    )


def _point(res: LLCResult, eps: float, gamma: float, nbeta: float, accept_min: float) -> dict[str, Any]:
    finite = bool(np.all(np.isfinite(res.loss_traces)))
    healthy = _healthy(res, accept_min)
    return {
        "eps": eps,
        "eps_nbeta": eps * nbeta,
        "gamma": gamma,
        "llc": res.llc_hat,
        "se": res.llc_se,
        "mala": res.mala_accept,
        "rhat": res.rhat,
        "healthy": bool(healthy),
        "finite": finite,
        "warnings": list(res.warnings),
    }


def _agree(a: dict, b: dict, rel_tol: float) -> bool:
    return abs(a["llc"] - b["llc"]) <= rel_tol * max(abs(a["llc"]), abs(b["llc"])) + 2 * np.hypot(a["se"], b["se"])


def _pilot(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    base: LLCConfig,
    cfg: CalibrationConfig,
    eps_nb: float,
    gamma: float,
    nbeta: float,
) -> dict[str, Any]:
    """One pilot at (ε·nβ, γ), doubled in length while finite and accepted but imprecise or warning."""
    draws = int(min(max(cfg.pilot_time / eps_nb, cfg.pilot_min_steps), cfg.pilot_max_steps))
    while True:
        pilot = dataclasses.replace(
            base,
            epsilon=eps_nb / nbeta,
            gamma=gamma,
            chains=cfg.pilot_chains,
            draws=draws,
            burn_in=draws // 2,
            thin=1,
            mala_every=max(1, draws // 30),
            nbeta=nbeta,
        )
        pt = _point(
            estimate_llc(model, loss_fn, data, pilot, progress=False), eps_nb / nbeta, gamma, nbeta, cfg.accept_min
        )
        pt["draws"], pt["burn_in"] = draws, draws // 2
        accepted = pt["finite"] and np.isfinite(pt["mala"]) and pt["mala"] >= cfg.accept_min
        precise = np.isfinite(pt["se"]) and pt["se"] <= cfg.pilot_rel_se * abs(pt["llc"])
        if not accepted or (precise and pt["healthy"]) or draws >= cfg.pilot_max_steps:
            return pt
        draws = min(2 * draws, cfg.pilot_max_steps)


def calibrate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[Tensor] | DataLoader,
    base: LLCConfig = LLCConfig(),
    cfg: CalibrationConfig = CalibrationConfig(),
    *,
    progress: bool = True,
) -> CalibrationResult:
    """Sweep ε and γ with pilot chains (``base`` gives the sampler, nβ, batch size and seed) and choose."""
    n = len(data.dataset) if isinstance(data, DataLoader) else len(data[0])  # type: ignore[arg-type]
    nbeta = base.nbeta if base.nbeta is not None else default_nbeta(n)
    points: list[dict[str, Any]] = []
    bar = tqdm(total=len(cfg.gammas) * len(cfg.eps_grid), desc="calibrating ε, γ", disable=not progress, leave=False)
    chosen = None
    gammas = sorted(cfg.gammas)
    for gamma in gammas:
        prev, healthy_here = None, 0
        for eps_nb in sorted(cfg.eps_grid, reverse=True):
            pt = _pilot(model, loss_fn, data, base, cfg, eps_nb, gamma, nbeta)
            points.append(pt)
            bar.update(1)
            if prev is not None and prev["healthy"] and pt["healthy"] and _agree(prev, pt, cfg.rel_tol):
                chosen = pt
                break
            prev = pt
            healthy_here += pt["healthy"]
            if healthy_here >= cfg.max_healthy:
                break
        if chosen is not None:
            break
    bar.close()
    found = chosen is not None
    if chosen is None:
        pool = [p for p in points if p["healthy"]] or [p for p in points if p["finite"]] or points
        chosen = max(pool, key=lambda p: (np.nan_to_num(p["mala"], nan=-1.0), -p["gamma"]))
    check = None
    larger = [g for g in gammas if g > chosen["gamma"]]
    if found and larger and cfg.gamma_check_precise:
        eps_nb = chosen["eps"] * nbeta
        pt = dict(_pilot(model, loss_fn, data, base, cfg, eps_nb, larger[0], nbeta), gamma_check=True)
        points.append(pt)
        check = _gamma_check(chosen, pt, eps_nb, cfg.rel_tol)
    elif found and larger:
        eps_nb = chosen["eps"] * nbeta
        pilot = dataclasses.replace(
            base,
            epsilon=chosen["eps"],
            gamma=larger[0],
            chains=cfg.pilot_chains,
            draws=chosen["draws"],
            burn_in=chosen["burn_in"],
            thin=1,
            mala_every=max(1, chosen["draws"] // 30),
            nbeta=nbeta,
        )
        pt = _point(
            estimate_llc(model, loss_fn, data, pilot, progress=False), chosen["eps"], larger[0], nbeta, cfg.accept_min
        )
        pt["draws"], pt["burn_in"], pt["gamma_check"] = chosen["draws"], chosen["burn_in"], True
        points.append(pt)
        check = _gamma_check(chosen, pt, eps_nb, cfg.rel_tol)
    return CalibrationResult(
        tuple(points),
        float(chosen["eps"]),
        float(chosen["gamma"]),
        found,
        float(nbeta),
        int(chosen["burn_in"]),
        final_draws(cfg, int(chosen["draws"]), chosen["eps"], chosen["gamma"]),
        check,
    )


def _gamma_check(chosen: dict, pt: dict, eps_nb: float, rel_tol: float) -> dict[str, Any]:
    return {
        "gamma": pt["gamma"],
        "eps_nbeta": eps_nb,
        "llc": pt["llc"],
        "se": pt["se"],
        "draws": pt["draws"],
        "agree": bool(np.isfinite(pt["llc"]) and _agree(chosen, pt, rel_tol)),
    }


def final_draws(cfg: CalibrationConfig, pilot_draws: int, eps: float, gamma: float) -> int:
    """Draws the final run should have: twice the chosen pilot's (rules v3 and v4) and, in rule v4
    (``final_relax_max`` > 0), at least the prior's relaxation time 2/(γ·ε) steps, capped at ``final_relax_max``."""
    draws = 2 * pilot_draws
    if cfg.final_relax_max > 0:
        draws = max(draws, min(cfg.final_relax_max, math.ceil(2 / (gamma * eps))))
    return draws


def sweep_figure(result: CalibrationResult, title: str = "") -> Figure:
    """λ̂ (± 2 SE) against ε·nβ, one curve per γ (filled markers: healthy pilots), the choice starred;
    below, the MALA acceptance with the health threshold."""
    fig = Figure(figsize=(6.4, 5.2))
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for gamma in sorted({p["gamma"] for p in result.points}):
        pts = sorted((p for p in result.points if p["gamma"] == gamma and p["finite"]), key=lambda p: p["eps_nbeta"])
        if not pts:
            continue
        x = [p["eps_nbeta"] for p in pts]
        line = ax.plot(x, [p["llc"] for p in pts], "-", lw=1, label=f"γ = {gamma:g}")[0]
        for p in pts:
            ax.errorbar(
                p["eps_nbeta"],
                p["llc"],
                yerr=2 * np.nan_to_num(p["se"]),
                fmt="o",
                color=line.get_color(),
                mfc=line.get_color() if p["healthy"] else "white",
                ms=5,
                capsize=2,
            )
        ax2.plot(x, [p["mala"] for p in pts], "o-", color=line.get_color(), ms=4, lw=1)
    ax.plot(
        [result.epsilon * result.nbeta],
        [next(p["llc"] for p in result.points if p["eps"] == result.epsilon and p["gamma"] == result.gamma)],
        "*",
        ms=16,
        color="k",
        label="chosen" + ("" if result.found_plateau else " (no plateau)"),
    )
    ax2.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_ylabel("λ̂ (pilot, ± 2 SE)")
    ax2.set_ylabel("MALA acceptance")
    ax2.set_xlabel("ε · nβ")
    ax2.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title or "calibration sweep (hollow: unhealthy)", fontsize=10)
    fig.tight_layout()
    return fig

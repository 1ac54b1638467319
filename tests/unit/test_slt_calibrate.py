"""The calibration rule itself (``mechscope.slt.calibrate``): fabricated pilot results in, the choice out.

``estimate_llc`` is replaced by a table of what a pilot at (ε·nβ, γ) would measure, so each test pins
one clause of the rule (smallest γ first, healthy, plateau of adjacent ε, the smaller ε taken, pilots
doubled until precise, the γ check, the fallback without a plateau); one cheap real sweep on regular:2
checks that the rule lands on λ end to end.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from mechscope.slt import LLCConfig, known_model
from mechscope.slt.calibrate import CalibrationConfig, calibrate
from mechscope.slt.estimator import LLCResult

NBETA = 100.0
GRID = (3.0, 1.0, 0.3, 0.1)
DATA = (np.zeros((1000, 1)),)  # only len(data[0]) is read: n for nβ (nβ is given explicitly anyway)
BASE = LLCConfig(nbeta=NBETA, batch_size=10)
calmod = importlib.import_module("mechscope.slt.calibrate")  # the module (the package re-exports the function)


def fake(table, calls):
    """An ``estimate_llc`` stand-in: table[(ε·nβ, γ)] = dict(llc, se, mala, warn) or a function of the draws."""

    def estimate_llc(model, loss_fn, data, cfg, progress=False):
        key = (round(cfg.epsilon * cfg.nbeta, 6), cfg.gamma)
        calls.append((*key, cfg.draws))
        row = table.get(key, dict(llc=float("nan"), se=float("nan"), mala=0.1, warn=("diverged",)))
        row = row(cfg.draws) if callable(row) else row
        C, D = cfg.chains, cfg.draws
        traces = np.full((C, D), np.nan if not math.isfinite(row["llc"]) else 1.0)
        return LLCResult(
            llc_hat=row["llc"],
            llc_se=row["se"],
            llc_chains=np.full(C, row["llc"]),
            init_loss=0.0,
            nbeta=cfg.nbeta,
            n=1000,
            loss_traces=traces,
            distances=np.zeros((C, 0)),
            mala_accept=row["mala"],
            rhat=row.get("rhat", 1.0),
            frac_negative=0.0,
            warnings=tuple(row.get("warn", ())),
            flags=row.get("flags", {}),
        )

    return estimate_llc


def ok(llc, se=0.01, mala=0.99):
    return dict(llc=llc, se=se, mala=mala)


def run(monkeypatch, table, **cal):
    calls: list = []
    monkeypatch.setattr(calmod, "estimate_llc", fake(table, calls))
    cfg = CalibrationConfig(
        **{
            "eps_grid": GRID,
            "gammas": (0.1, 1.0, 10.0),
            "pilot_min_steps": 10,
            "pilot_time": 100.0,
            "pilot_max_steps": 400,
            **cal,
        }
    )
    return calibrate(None, None, DATA, BASE, cfg, progress=False), calls


def test_smallest_gamma_with_a_plateau_wins_and_the_smaller_eps_is_taken(monkeypatch):
    table = {
        (3.0, 0.1): dict(llc=5.0, se=0.01, mala=0.4),  # too large a step: rejected by MALA
        (1.0, 0.1): ok(1.30),
        (0.3, 0.1): ok(1.00),
        (0.1, 0.1): ok(1.02),  # plateau at 0.3–0.1
        (0.1, 1.0): ok(0.99),  # the γ check
        # γ = 1 has a plateau too (at larger ε) but is only tried if γ = 0.1 fails
        (3.0, 1.0): ok(0.9),
        (1.0, 1.0): ok(0.9),
    }
    res, calls = run(monkeypatch, table)
    assert (res.epsilon * NBETA, res.gamma) == pytest.approx((0.1, 0.1))
    assert res.found_plateau
    assert res.gamma_check == {
        "gamma": 1.0,
        "eps_nbeta": pytest.approx(0.1),
        "llc": 0.99,
        "se": 0.01,
        "draws": 400,
        "agree": True,
    }
    # the sweep stopped at the plateau: γ = 1 saw only the check; the final run gets 2× the chosen pilot's draws
    assert [(e, g) for e, g, _ in calls] == [(3.0, 0.1), (1.0, 0.1), (0.3, 0.1), (0.1, 0.1), (0.1, 1.0)]
    assert res.draws == 2 * 400 and res.burn_in == 200  # pilot_time/ε·nβ = 1000 clipped to pilot_max_steps


def test_gamma_check_disagreement_is_reported(monkeypatch):
    table = {(3.0, 0.1): ok(1.0), (1.0, 0.1): ok(1.02), (1.0, 1.0): ok(0.7)}
    res, _ = run(monkeypatch, table)
    assert (res.epsilon * NBETA, res.gamma) == pytest.approx((1.0, 0.1))
    assert res.gamma_check["agree"] is False and res.gamma_check["llc"] == 0.7


def test_v4_gamma_check_is_judged_at_a_fixed_precision(monkeypatch):
    # the check at γ = 1 reads 0.7 against 1.0 but its SE is 0.2 at the chosen pilot's 100 draws (SE ∝ 1/√draws):
    # one run of that length (rule v3) "agrees" within 2 combined SE; rule v4 doubles it like any pilot until its
    # SE ≤ 5% of λ̂ (0.035 needs 3,300 draws; the cap of 1,600 gives 0.05) and then it disagrees
    noisy = lambda d: dict(llc=0.7, se=0.2 * math.sqrt(100 / d), mala=0.99)  # noqa: E731
    table = {(3.0, 0.1): ok(1.0), (1.0, 0.1): ok(1.02), (1.0, 1.0): noisy}
    res, calls = run(monkeypatch, table)
    assert res.gamma_check["agree"] is True and res.gamma_check["draws"] == 100
    res, calls = run(monkeypatch, table, gamma_check_precise=True, pilot_max_steps=1600)
    assert (res.epsilon * NBETA, res.gamma) == pytest.approx((1.0, 0.1))
    assert [d for e, g, d in calls if (e, g) == (1.0, 1.0)] == [100, 200, 400, 800, 1600]
    assert res.gamma_check["agree"] is False and res.gamma_check["draws"] == 1600
    assert res.gamma_check["se"] == pytest.approx(0.05)


def test_v4_final_run_covers_the_prior_relaxation_time(monkeypatch):
    # chosen ε·nβ = 1 (ε = 0.01 at nβ = 100), γ = 0.1: relaxation 2/(γ·ε) = 2,000 steps, against 2 × 100 pilot draws
    table = {(3.0, 0.1): ok(1.0), (1.0, 0.1): ok(1.0), (1.0, 1.0): ok(1.0)}
    assert run(monkeypatch, table)[0].draws == 200  # rule v3: twice the chosen pilot
    assert run(monkeypatch, table, final_relax_max=5000)[0].draws == 2000
    assert run(monkeypatch, table, final_relax_max=1500)[0].draws == 1500  # capped
    # never below twice the pilot
    assert calmod.final_draws(CalibrationConfig(final_relax_max=100), 400, 0.01, 0.1) == 800


def test_gammas_are_tried_smallest_first_whatever_their_order(monkeypatch):
    table = {(3.0, 0.1): ok(1.0), (1.0, 0.1): ok(1.0), (3.0, 10.0): ok(0.5), (1.0, 10.0): ok(0.5), (1.0, 1.0): ok(1.0)}
    res, calls = run(monkeypatch, table, gammas=(10.0, 0.1, 1.0))
    assert res.gamma == 0.1 and calls[0][1] == 0.1


def test_unhealthy_small_gamma_falls_through_to_the_next(monkeypatch):
    warn = ("chains [0, 1] are not stationary",)  # half of the 4 chains drift: unhealthy
    table = {
        **{(e, 0.1): dict(llc=1.0, se=0.01, mala=0.99, warn=warn, flags={"drifting": [0, 1]}) for e in GRID},
        (3.0, 1.0): ok(0.95),
        (1.0, 1.0): ok(0.96),
        (1.0, 10.0): ok(0.9),
    }
    res, calls = run(monkeypatch, table)
    assert (res.epsilon * NBETA, res.gamma) == pytest.approx((1.0, 1.0))
    # a warning pilot that is accepted is doubled before it is judged unhealthy: 100/3 → 33, 66, 132, 264, 400 draws
    assert [d for e, g, d in calls if (e, g) == (3.0, 0.1)] == [33, 66, 132, 264, 400]  # the last clipped to the cap
    assert not any(p["healthy"] for p in res.points if p["gamma"] == 0.1)


def test_one_flagged_chain_of_four_is_healthy_but_rhat_or_a_negative_chain_is_not(monkeypatch):
    # one chain flagged drifting (or escaping) of 4 is within the per-chain checks' false-alarm rate: still healthy;
    # R̂ > 1.1 or a chain with negative λ̂ is not, whatever the rest says
    one = dict(
        llc=1.0, se=0.01, mala=0.99, warn=("chains [2] are not stationary",), flags={"drifting": [2], "escaping": [1]}
    )
    table = {(3.0, 0.1): one, (1.0, 0.1): one, (1.0, 1.0): ok(1.0)}
    res, _ = run(monkeypatch, table)
    assert res.gamma == 0.1 and res.found_plateau
    for bad in (dict(rhat=1.2), dict(flags={"negative": [3]})):
        table = {
            (3.0, 0.1): {**ok(1.0), **bad},
            (1.0, 0.1): {**ok(1.0), **bad},
            (3.0, 1.0): ok(0.9),
            (1.0, 1.0): ok(0.9),
            (1.0, 10.0): ok(0.9),
        }
        res, _ = run(monkeypatch, table)
        assert res.gamma == 1.0 and not any(p["healthy"] for p in res.points if p["gamma"] == 0.1)


def test_imprecise_pilots_are_doubled_until_precise(monkeypatch):
    # SE ∝ 1/√draws: 0.2 at 25 draws, so 5% of λ̂ = 1 needs 400 draws
    noisy = lambda d: dict(llc=1.0, se=0.2 * math.sqrt(25 / d), mala=0.99)  # noqa: E731
    table = {(3.0, 0.1): noisy, (1.0, 0.1): noisy, (1.0, 1.0): ok(1.0)}
    res, calls = run(monkeypatch, table, pilot_max_steps=1000, pilot_time=75.0)
    assert [d for e, g, d in calls if (e, g) == (3.0, 0.1)] == [25, 50, 100, 200, 400]
    assert [d for e, g, d in calls if (e, g) == (1.0, 0.1)] == [75, 150, 300, 600]
    assert res.gamma == 0.1 and res.epsilon * NBETA == pytest.approx(1.0) and res.draws == 1200


def test_rejected_step_is_not_doubled(monkeypatch):
    table = {(3.0, 0.1): dict(llc=1.0, se=0.5, mala=0.5), (1.0, 0.1): ok(1.0), (0.3, 0.1): ok(1.0), (0.3, 1.0): ok(1.0)}
    _, calls = run(monkeypatch, table)
    assert [d for e, g, d in calls if (e, g) == (3.0, 0.1)] == [33]


def test_no_plateau_takes_the_most_accepted_and_says_so(monkeypatch):
    # healthy everywhere but λ̂ keeps moving with ε: no plateau at any γ (max_healthy = 3 per γ)
    table = {
        (e, g): ok(v, mala=m)
        for g in (0.1, 1.0, 10.0)
        for e, v, m in [(3.0, 4.0, 0.91), (1.0, 2.0, 0.95), (0.3, 1.0, 0.97 + 0.01 * (g == 1.0)), (0.1, 0.5, 0.99)]
    }
    res, calls = run(monkeypatch, table)
    assert not res.found_plateau and res.gamma_check is None
    assert (res.epsilon * NBETA, res.gamma) == pytest.approx((0.3, 1.0))  # the highest MALA among the tried
    assert {(e, g) for e, g, _ in calls} == {(e, g) for e in (3.0, 1.0, 0.3) for g in (0.1, 1.0, 10.0)}


@pytest.mark.slow  # a real calibration sweep
def test_a_real_sweep_on_regular_2_lands_on_lambda():
    # the rule end to end on a regular model (λ = 1) with real chains: small n and a reduced grid to stay cheap
    # (about 10⁴ SGLD steps). At ε·nβ = 0.3 the step's bias is ≈ +8% and at 0.1 ≈ +2.5% (1/(1 − εnβh/4)), so the
    # two agree within the 10% tolerance and the smaller is taken; γ = 1 is the smallest γ offered.
    km = known_model("regular:2", n=1000)
    base = LLCConfig(batch_size=100, seed=1)
    cfg = CalibrationConfig(eps_grid=(0.3, 0.1), gammas=(1.0, 10.0), pilot_time=60.0, pilot_max_steps=600)
    res = calibrate(km.model, km.loss_fn, (km.inputs, km.targets), base, cfg, progress=False)
    assert res.found_plateau and res.gamma == 1.0 and res.epsilon * res.nbeta == pytest.approx(0.1)
    assert res.gamma_check is not None and res.gamma_check["agree"]
    chosen = next(
        p for p in res.points if p["eps"] == res.epsilon and p["gamma"] == res.gamma and "gamma_check" not in p
    )
    assert chosen["healthy"] and chosen["llc"] == pytest.approx(1.0, rel=0.15) and chosen["se"] < 0.1

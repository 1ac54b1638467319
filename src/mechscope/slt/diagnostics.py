"""Diagnostics of SGLD chains, each a plain function of arrays with its formula stated.

Shape letters: **C** chains, **D** draws per chain.

- :func:`split_rhat` — Gelman–Rubin potential scale reduction on split chains (Gelman et al. 2013,
  BDA3 §11.4): each chain's draws are cut in halves (2C chains of D/2); with W the mean within-half
  variance (ddof 1) and B/D' the variance of the half means (ddof 1),
  V = (D' − 1)/D' · W + B/D',   R̂ = √(V / W).  R̂ ≈ 1 for mixed, stationary chains.
- :func:`mala_accept_prob` — the probability a Metropolis-adjusted Langevin step would accept the
  SGLD move w → w': min(1, exp(U(w) − U(w') + log q(w | w') − log q(w' | w))), with
  q(w' | w) = N(w − ½ S ∇U(w), S) and S the per-coordinate variance (ε, or ε·G preconditioned), U and
  ∇U evaluated on the *same* minibatch at both points (comparing two different minibatches would add
  nβ × the batch noise to U(w) − U(w') and make the number meaningless). High acceptance (≳ 0.9)
  means the discretisation error of the step is small.
- :func:`stationarity` — per chain, the drift of the λ̂ trace between the first and the last third of the
  draws, nβ(mean L_last − mean L_first), compared with a tolerance.
- :func:`chain_warnings` — the warnings in words: non-finite losses, drift (not stationary), a growing
  distance from w* (escape, :func:`escaping`), a negative per-chain λ̂ (the chain found lower loss than w*: w* is not a
  local minimum), R̂ > 1.1, MALA acceptance < 0.9.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor


def split_rhat(traces: np.ndarray) -> float:
    """Split-R̂ of traces [C, D] (D ≥ 4); nan when the within variance is 0."""
    t = np.asarray(traces, dtype=np.float64)
    half = t.shape[1] // 2
    if half < 2:
        return float("nan")
    halves = np.concatenate([t[:, :half], t[:, half : 2 * half]], axis=0)  # [2C, D']
    d = halves.shape[1]
    W = halves.var(axis=1, ddof=1).mean()
    B_over_d = halves.mean(axis=1).var(ddof=1)
    if W <= 0 or not np.isfinite(W):
        return float("nan")
    V = (d - 1) / d * W + B_over_d
    return float(math.sqrt(V / W))


def log_q(w_to: Sequence[Tensor], w_from: Sequence[Tensor], grad_from: Sequence[Tensor], scale: Sequence) -> float:
    """log N(w_to; w_from − ½ S ∇U(w_from), S), dropping the normalising constant (it cancels in the
    ratio when S is the same both ways)."""
    total = 0.0
    for a, b, g, s in zip(w_to, w_from, grad_from, scale):
        total -= float(((a - b + 0.5 * s * g).pow(2) / (2 * s)).sum())
    return total


def mala_accept_prob(
    U_old: float,
    U_new: float,
    w_old: Sequence[Tensor],
    w_new: Sequence[Tensor],
    grad_old: Sequence[Tensor],
    grad_new: Sequence[Tensor],
    scale: Sequence,
) -> float:
    """MALA acceptance probability of the move w_old → w_new (formula in the module docstring)."""
    log_a = U_old - U_new + log_q(w_old, w_new, grad_new, scale) - log_q(w_new, w_old, grad_old, scale)
    if math.isnan(log_a):
        return 0.0
    return float(min(1.0, math.exp(min(log_a, 0.0))))


def _batch_means_se(x: np.ndarray, blocks: int = 5) -> float:
    """SE of the mean of ``x`` from the means of ``blocks`` consecutive blocks (autocorrelation-robust)."""
    return float(np.array([b.mean() for b in np.array_split(x, blocks)]).std(ddof=1) / math.sqrt(blocks))


def escaping(distances: np.ndarray) -> list[bool]:
    """For each chain's distances from w* [C, D']: does it keep moving away? True when the thirds' means rise in
    order (first < middle < last), the last is more than twice the middle **and** that rise exceeds
    3 · √(SE₂² + SE₃²) (batch-means SEs, as in :func:`stationarity`). Needs ≥ 5 samples per third (False
    otherwise: too few to judge).

    Why the significance condition besides the 2× ratio: a stationary chain in a flat direction swings through
    small distances, and judged on ~10 samples per third the ratio alone is crossed by chance (5.5% of stationary
    2-d chains with lag-1 autocorrelation 0.99, so ~20% of 4-chain pilots; with both conditions 1.3%,
    tests/unit/test_slt.py), and a false warning makes the calibration reject a good γ."""
    out = []
    for d in np.asarray(distances, dtype=np.float64):
        third = len(d) // 3
        if third < 5:
            out.append(False)
            continue
        first, mid, last = d[:third], d[third : 2 * third], d[-third:]
        rise = last.mean() - mid.mean()
        se = math.hypot(_batch_means_se(mid), _batch_means_se(last))
        out.append(bool(last.mean() > 2 * mid.mean() > 0 and mid.mean() > first.mean() and rise > 3 * se))
    return out


def stationarity(traces: np.ndarray, init_loss: float, nbeta: float, rel_tol: float = 0.15) -> list[bool]:
    """For each chain of losses [C, D]: is the drift nβ(mean of the last third − mean of the first third)
    within max(rel_tol · |λ̂_chain|, 3 · SE of that difference, 0.05)? (True: looks stationary.) The SE is
    √(SE₁² + SE₃²), each third's SE from the means of 5 blocks inside that third (batch means, so
    autocorrelation does not make it falsely small, and a trend across the chain does not inflate it)."""
    out = []
    for t in np.asarray(traces, dtype=np.float64):
        third = len(t) // 3
        if third < 10:
            out.append(True)
            continue
        first, last = nbeta * t[:third], nbeta * t[-third:]
        drift = last.mean() - first.mean()
        lam = nbeta * (t.mean() - init_loss)
        se = math.hypot(_batch_means_se(first), _batch_means_se(last))
        out.append(bool(np.isfinite(drift) and abs(drift) <= max(rel_tol * abs(lam), 3 * se, 0.05)))
    return out


def chain_flags(traces: np.ndarray, distances: np.ndarray, init_loss: float, nbeta: float) -> dict[str, list[int]]:
    """The chains each per-chain check flags, for losses [C, D] and distances from w* [C, D']: ``diverged``
    (non-finite losses), ``drifting`` (:func:`stationarity`), ``escaping`` (:func:`escaping`), ``negative``
    (λ̂_c < 0). The last three only look at finite chains."""
    t = np.asarray(traces, dtype=np.float64)
    bad = [c for c in range(len(t)) if not np.all(np.isfinite(t[c]))]
    finite = [c for c in range(len(t)) if c not in bad]
    flags: dict[str, list[int]] = {"diverged": bad, "drifting": [], "escaping": [], "negative": []}
    if finite:
        still = stationarity(t[finite], init_loss, nbeta)
        flags["drifting"] = [finite[i] for i, ok in enumerate(still) if not ok]
        d = np.asarray(distances, dtype=np.float64)
        if d.ndim == 2 and d.shape[1]:
            away = escaping(d)
            flags["escaping"] = [c for c in finite if away[c]]
        flags["negative"] = [c for c in finite if nbeta * (t[c].mean() - init_loss) < 0]
    return flags


def chain_warnings(f: dict[str, list[int]], rhat: float, mala: float) -> list[str]:
    """Warnings in words: every flag of :func:`chain_flags` (``f``), R̂ > 1.1, MALA acceptance < 0.9."""
    warn = []
    if f["diverged"]:
        warn.append(f"chains {f['diverged']} produced non-finite losses (diverged): lower the step size ε")
    if f["drifting"]:
        warn.append(
            f"chains {f['drifting']} are not stationary (λ̂ drifts between the first and last third): "
            "more burn-in, a larger ε, or a larger γ"
        )
    if f["escaping"]:
        warn.append(f"chains {f['escaping']} keep moving away from w* (escape): raise the localisation γ")
    if f["negative"]:
        warn.append(
            f"chains {f['negative']} have negative λ̂ (they found lower loss than w*): w* is not a local "
            "minimum; train longer or check the loss"
        )
    if np.isfinite(rhat) and rhat > 1.1:
        warn.append(f"R̂ = {rhat:.2f} > 1.1: the chains disagree; run more draws or more burn-in")
    if np.isfinite(mala) and mala < 0.9:
        warn.append(f"MALA acceptance {mala:.2f} < 0.9: the step size ε is too large (discretisation bias); lower it")
    return warn

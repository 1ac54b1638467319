"""How many Langevin steps a product monomial's valleys need: many Metropolis-adjusted chains at once, beside the quadrature.

A reference experiment for rule v4 (docs/llc.md), not the estimator: ``C`` chains of MALA run side by side in NumPy
on the exact population loss of a ``monomial`` spec, L(w) = ½ Π wᵢ^{2kᵢ} (E[x²] = 1, no minibatch), localised at
w* = 0, at ε = ε·nβ/nβ with nβ = n/ln n, n = 10⁴. Each chain starts at w*, runs ``--steps`` steps of which the first
``--burn-in`` (default: a quarter) are burn-in, and its estimate is nβ · mean L over the rest. Prints one JSON line per (γ, ε·nβ, steps): the mean over chains, its
SE, the SE four chains would have, the acceptance, the chains that diverged (non-finite), and the fully mixed value (:func:`localized_monomial_llc`).
``--scale-sd`` multiplies each step's loss by s ~ N(1, sd²) at both ends of the step (a minibatch's E[x²]);
``--plain`` drops the Metropolis correction (plain SGLD). One step of all 64 chains costs ~0.4 ms here, against
~0.25–3 ms for one step of one chain in ``estimate_llc``, which is what makes 10⁴–10⁵-step chains affordable.

``python bench/llc_valley_mixing.py monomial:1,2,3 --gammas 0.05 0.1 --eps-nbeta 0.3 1 --steps 40000``
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from mechscope.slt import default_nbeta, localized_monomial_llc


def mala_chains(
    ks: np.ndarray,
    nbeta: float,
    gamma: float,
    eps: float,
    steps: int,
    chains: int,
    seed: int,
    burn_in: int,
    scale_sd: float = 0.0,
    metropolis: bool = True,
):
    """Per-chain nβ·mean L over the ``steps`` − ``burn_in`` draws after ``burn_in`` steps, and the mean acceptance. Each step's loss is
    scaled by s ~ N(1, ``scale_sd``²), the same at both ends of the step (a minibatch's E[x²]); the draw is nβ·s·L at
    the chain's point before the step, as ``estimate_llc`` records it. ``metropolis`` False: plain SGLD."""
    rng = np.random.default_rng(seed)

    def loss_grad(w: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        K = 0.5 * np.prod(w ** (2 * ks), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gK = np.where(w != 0, K[:, None] * 2 * ks / np.where(w != 0, w, 1.0), 0.0)
        return nbeta * s * K + gamma / 2 * (w**2).sum(1), nbeta * s[:, None] * gK + gamma * w, s * K

    w = np.zeros((chains, len(ks)))
    total, accepted = np.zeros(chains), 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            s = 1 + scale_sd * rng.standard_normal(chains) if scale_sd > 0 else np.ones(chains)
            U, g, K = loss_grad(w, s)
            if t >= burn_in:
                total += nbeta * K
            prop = w - eps / 2 * g + math.sqrt(eps) * rng.standard_normal(w.shape)
            if metropolis:
                Up, gp, _ = loss_grad(prop, s)
                fwd = ((prop - w + eps / 2 * g) ** 2).sum(1)
                bwd = ((w - prop + eps / 2 * gp) ** 2).sum(1)
                acc = np.log(rng.random(chains)) < np.nan_to_num(U - Up + (fwd - bwd) / (2 * eps), nan=-np.inf)
            else:
                acc = np.ones(chains, dtype=bool)
            accepted += acc.mean()
            w = np.where(acc[:, None], prop, w)
    return total / (steps - burn_in), accepted / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="a product monomial, e.g. monomial:1,2,3 (one term)")
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--eps-nbeta", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[40000])
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--burn-in", type=int, default=None, help="steps before the draws (default: a quarter of --steps)")
    ap.add_argument("--scale-sd", type=float, default=0.0, help="sd of a per-step factor on the loss (a minibatch)")
    ap.add_argument("--plain", action="store_true", help="plain SGLD (no Metropolis correction)")
    args = ap.parse_args()
    ks = np.array([int(k) for k in args.spec.split(":", 1)[1].split(",")], dtype=float)
    nbeta = default_nbeta(10_000)
    for gamma in args.gammas:
        mixed = localized_monomial_llc(args.spec, nbeta, gamma)
        for eps_nb in args.eps_nbeta:
            for steps in args.steps:
                t = time.perf_counter()
                burn = steps // 4 if args.burn_in is None else args.burn_in
                per, acc = mala_chains(
                    ks, nbeta, gamma, eps_nb / nbeta, steps, args.chains, args.seed, burn, args.scale_sd, not args.plain
                )
                sd = float(per.std(ddof=1))
                print(
                    json.dumps(
                        {
                            "bench": "llc_valley_mixing",
                            "spec": args.spec,
                            "gamma": gamma,
                            "eps_nbeta": eps_nb,
                            "steps": steps,
                            "burn_in": burn,
                            "scale_sd": args.scale_sd,
                            "metropolis": not args.plain,
                            "chains": args.chains,
                            "llc": round(float(per.mean()), 4),
                            "se": round(sd / math.sqrt(args.chains), 4),
                            "se_4_chains": round(sd / 2, 4),
                            "accept": round(acc, 3),
                            "diverged": int(np.sum(~np.isfinite(per))),
                            "fully_mixed": round(mixed, 4),
                            "vs_fully_mixed": round(float(per.mean()) / mixed - 1, 3),
                            "wall_s": round(time.perf_counter() - t, 1),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()

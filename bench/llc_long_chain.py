"""One long fixed-setting LLC run on a known-answer model, beside the fully mixed value (docs/llc.md, held-out shapes).

``python bench/llc_long_chain.py monomial:2,3 --eps-nbeta 0.1 --gamma 0.03 --draws 32000`` runs ``estimate_llc``
(no calibration) with 4 chains, ``--draws`` draws after ``--draws``/4 burn-in, batch 500, seed 0, n = 10,000
(nβ = n/ln n), MALA every ``--draws``/30 draws, one thread, and prints one JSON line: λ̂, SE, the per-chain λ̂,
MALA, R̂, warnings, the true λ and, for a monomial the quadrature covers, the fully mixed localised expectation
(:func:`mechscope.slt.localized_monomial_llc` with the data's E[x²]).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mechscope.errors import UsageError
from mechscope.slt import default_nbeta, known_model, localized_monomial_llc
from mechscope.slt.estimator import LLCConfig, estimate_llc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--eps-nbeta", type=float, required=True, help="step size ε in units of 1/nβ")
    ap.add_argument("--gamma", type=float, required=True)
    ap.add_argument("--draws", type=int, default=32000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = 10_000
    km, nb = known_model(args.spec, n=n), default_nbeta(n)
    cfg = LLCConfig(
        epsilon=args.eps_nbeta / nb,
        gamma=args.gamma,
        chains=4,
        draws=args.draws,
        burn_in=args.draws // 4,
        batch_size=500,
        mala_every=max(1, args.draws // 30),
        seed=0,
    )
    t = time.perf_counter()
    r = estimate_llc(km.model, km.loss_fn, (km.inputs, km.targets), cfg, progress=False)
    try:
        mixed = localized_monomial_llc(args.spec, nb, args.gamma, scale=float(km.inputs.pow(2).mean()))
    except UsageError:
        mixed = None
    print(
        json.dumps(
            {
                "bench": "llc_long_chain",
                "spec": args.spec,
                "eps_nbeta": args.eps_nbeta,
                "gamma": args.gamma,
                "draws": args.draws,
                "llc_hat": r.llc_hat,
                "llc_se": r.llc_se,
                "llc_chains": [float(c) for c in r.llc_chains],
                "llc_true": km.llc_true,
                "fully_mixed": mixed,
                "mala": r.mala_accept,
                "rhat": r.rhat,
                "warnings": list(r.warnings),
                "wall_s": round(time.perf_counter() - t, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

"""λ̂ against the analytic λ on known-answer models, every one calibrated by the automatic sweep.

Runs ``mechscope llc --known SPEC --json`` (the command a user runs, default calibration, no per-case
settings) for each spec, ``--workers`` at a time (each single-threaded), with 4 chains and at least
``--draws`` draws after calibration (the calibration asks for more when its pilots needed more), n = 10,000
noise-free rows (nβ = n/ln n ≈ 1086). Every finished spec is written at once to ``--out`` (JSON, atomic), so a
partial run keeps what it measured; sweep plots go to ``--plots`` (one PNG per spec). Prints one JSON line:
every spec's λ̂, SE, true λ, relative error, the chosen ε·nβ and γ, the γ check, the diagnostics, the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mechscope.atomic import atomic_write_json

SPECS = [
    "regular:2",
    "regular:8",
    "monomial:2",
    "monomial:3",
    "monomial:2+3",
    "monomial:1+2",
    "monomial:1,3",
    "rrr:5,3,5,0",
    "rrr:5,4,5,0",
    "rrr:4,3,8,0",
    "rrr:8,3,4,0",
    "rrr:3,8,4,0",
    "rrr:6,4,6,2",
    "rrr:4,2,6,1",
    # held out (issue 29): mixed products and a sum with a product term; rule v3 misses two of them (docs/llc.md)
    "monomial:1,2,3",
    "monomial:1,1,2",
    "monomial:2,3",
    "monomial:1,2",
    "monomial:1,2+3",
]


V4_FLAGS = [
    "--metropolis",
    "--cal-gammas",
    "0.05",
    "0.1",
    "1",
    "10",
    "100",
    "--cal-final-relax-max",
    "40000",
    "--cal-gamma-check-precise",
]
"""``--v4``: rule v4 (docs/llc.md), the same flags for every spec: Metropolis-adjusted steps, γ = 0.05 added to
the grid, the final run at least the prior's relaxation time 2/(γ·ε) (capped at 40,000 draws), a γ check judged
at a fixed precision."""


def one(spec: str, draws: int, plots: Path | None, extra: Sequence[str] = ()) -> dict:
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechscope.cli",
            "llc",
            "--known",
            spec,
            "--json",
            "--no-progress",
            "--draws",
            str(draws),
            "--burn-in",
            "1000",
            "--batch-size",
            "500",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        return {"spec": spec, "error": proc.stderr[-500:]}
    r = json.loads(proc.stdout)
    cal = r["calibration"]
    if plots is not None:
        from mechscope.slt.calibrate import CalibrationResult, sweep_figure

        res = CalibrationResult(
            tuple(cal["points"]),
            cal["epsilon"],
            cal["gamma"],
            cal["found_plateau"],
            cal["nbeta"],
            cal["burn_in"],
            cal["draws"],
            cal["gamma_check"],
        )
        plots.mkdir(parents=True, exist_ok=True)
        sweep_figure(res, f"calibration sweep, {spec} (true λ = {r['llc_true']:.4g})").savefig(
            plots / f"llc-sweep-{spec.replace(':', '-').replace(',', '_').replace('+', 'p')}.png", dpi=100
        )
    return {
        "spec": spec,
        "llc_true": r["llc_true"],
        "multiplicity": r["multiplicity"],
        "llc_hat": r["llc_hat"],
        "llc_se": r["llc_se"],
        "rel_error": r["rel_error"],
        "eps_nbeta": cal["epsilon"] * cal["nbeta"],
        "gamma": cal["gamma"],
        "plateau": cal["found_plateau"],
        "gamma_check": cal["gamma_check"],
        "pilots": len(cal["points"]),
        "llc_chains": r["llc_chains"],
        "draws": r["config"]["draws"],
        "burn_in": r["config"]["burn_in"],
        "mala": r["diagnostics"]["mala_accept"],
        "rhat": r["diagnostics"]["rhat"],
        "warnings": r["diagnostics"]["warnings"],
        "wall_s": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", default=SPECS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=None, help="JSON file written after every finished spec")
    ap.add_argument("--plots", type=Path, default=None, help="folder for the sweep plots")
    ap.add_argument("--v4", action="store_true", help="rule v4: add V4_FLAGS to every spec's command")
    args = ap.parse_args()
    extra = V4_FLAGS if args.v4 else []
    rows: dict[str, dict] = {}
    lock = threading.Lock()

    def summary() -> dict:
        done = [rows[s] for s in args.specs if s in rows]
        ok = [r for r in done if "rel_error" in r]
        return {
            "bench": "llc_known",
            "flags": extra,
            "rows": done,
            "within_10pct": sum(abs(r["rel_error"]) <= 0.1 for r in ok),
            "models": len(done),
            "planned": len(args.specs),
        }

    def task(spec: str) -> None:
        r = one(spec, args.draws, args.plots, extra)
        with lock:
            rows[spec] = r
            print(json.dumps(r), file=sys.stderr, flush=True)
            if args.out is not None:
                atomic_write_json(args.out, summary())

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(task, args.specs))
    print(json.dumps(summary()), flush=True)


if __name__ == "__main__":
    main()

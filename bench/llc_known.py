"""λ̂ against the analytic λ on known-answer models, every one calibrated by the automatic sweep.

Runs ``mechscope llc --known SPEC --json`` (the command a user runs, default calibration, no per-case
settings) for each spec, two at a time, with 4 chains × at least 4000 draws after calibration, n = 10,000
noise-free rows (nβ = n/ln n ≈ 1086). Prints one JSON line: every spec's λ̂, SE, true λ, relative error,
the chosen ε·nβ and γ, the diagnostics, and the wall time.
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

SPECS = ["regular:2", "regular:8", "monomial:2", "monomial:3", "monomial:2+3", "monomial:1+2", "monomial:1,3",
         "rrr:5,3,5,0", "rrr:5,4,5,0", "rrr:4,3,8,0", "rrr:8,3,4,0", "rrr:3,8,4,0", "rrr:6,4,6,2", "rrr:4,2,6,1"]


def one(spec: str) -> dict:
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mechscope.cli", "llc", "--known", spec, "--json", "--no-progress",
                           "--draws", "4000", "--burn-in", "1000", "--batch-size", "500"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"spec": spec, "error": proc.stderr[-500:]}
    r = json.loads(proc.stdout)
    cal = r["calibration"]
    return {"spec": spec, "llc_true": r["llc_true"], "multiplicity": r["multiplicity"], "llc_hat": r["llc_hat"],
            "llc_se": r["llc_se"], "rel_error": r["rel_error"], "eps_nbeta": cal["epsilon"] * cal["nbeta"],
            "gamma": cal["gamma"], "plateau": cal["found_plateau"], "draws": r["config"]["draws"],
            "mala": r["diagnostics"]["mala_accept"], "rhat": r["diagnostics"]["rhat"],
            "warnings": r["diagnostics"]["warnings"], "wall_s": round(time.perf_counter() - t, 1)}


if __name__ == "__main__":
    specs = sys.argv[1:] or SPECS
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(one, specs))
    ok = [r for r in rows if "rel_error" in r]
    print(json.dumps({"bench": "llc_known", "rows": rows,
                      "within_10pct": sum(abs(r["rel_error"]) <= 0.1 for r in ok), "models": len(rows)}), flush=True)

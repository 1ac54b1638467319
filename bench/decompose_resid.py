"""SPD on the toy model of compressed computation (toy:resid-mlp), evaluated along training.

    nice -n 10 python bench/decompose_resid.py [--spd 'C=100,steps=4000,...'] [--target 'features=100,...'] [--every 500]

Prints one JSON line per evaluation (step, losses, alive per target, mlp_in MMCS in feature coordinates, the probe
checks of mlp_in and of mlp_out as one rank-H mechanism) and a last line with the wall time. Single thread.
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import torch

from mechscope.decompose import SPD, SPDConfig, alive, recovery
from mechscope.decompose.resid_mlp import mlp_in_probe_check, mlp_out_check, resid_mlp_target
from mechscope.decompose.toys import TargetConfig
from mechscope.decompose.train import train_spd


def _kw(text: str) -> dict:
    """'a=1,b=2e-3,c=\'x\'' → {'a': 1, 'b': 0.002, 'c': 'x'} (values are Python literals)."""
    return {k.strip(): ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in text.split(",") if kv.strip())}


def evaluate(spd: SPD, kt, x_eval: torch.Tensor) -> dict:
    live = alive(spd, x_eval)
    rec = recovery(spd, kt.truth, live, kt.truth_basis)["mlp_in"]
    probes = kt.probes[0]
    return {
        "alive": live.per_target(spd.names),
        "mmcs_in": rec["mmcs"],
        "hungarian_in": rec["matched_mean_cos"],
        "in_probes": mlp_in_probe_check(spd, live, probes),
        "out": mlp_out_check(spd, live, kt.model, probes),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--spd", default="", help="SPDConfig overrides, e.g. 'C=100,steps=4000,importance_coeff=1e-3,pnorm=2'"
    )
    ap.add_argument("--target", default="", help="TargetConfig overrides (default: the papers' size)")
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--n-eval", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = SPDConfig(**{"C": 100, "importance_coeff": 1e-3, "pnorm": 2.0, **_kw(args.spd)})
    kt = resid_mlp_target(TargetConfig(batch_size=cfg.batch_size, seed=cfg.seed, **_kw(args.target)))
    print(
        json.dumps({"target": kt.info, "spd": {k: v for k, v in vars(cfg).items()}, "seconds": time.time() - t0}),
        flush=True,
    )
    spd = SPD(kt.model, cfg)
    x_eval = kt.eval_inputs[: args.n_eval]

    def on_log(row: dict) -> None:
        if row["step"] % args.every == 0 or row["step"] == cfg.steps - 1:
            print(
                json.dumps(
                    {
                        **{k: round(v, 6) for k, v in row.items()},
                        **evaluate(spd, kt, x_eval),
                        "seconds": round(time.time() - t0, 1),
                    }
                ),
                flush=True,
            )

    train_spd(spd, kt.batch, log_every=100, on_log=on_log)
    print(json.dumps({"final": evaluate(spd, kt, kt.eval_inputs), "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()

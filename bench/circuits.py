"""AtP against exact activation patching at equal node count on SmolLM2 (IOI), plus the zoo table.

``python bench/circuits.py smollm2 [--examples 8]``: every head (its slice of o_proj's input) and every MLP of
SmolLM2-135M (30 × 9 + 30 = 300 nodes) scored by exact patching and by AtP on the same IOI batch, side by
side in one process (one thread); prints one JSON line with both wall times, the speed-up, the
forward/backward counts and AtP's agreement with exact over all 300 nodes.

``python bench/circuits.py zoo [--examples 200] [--tasks induction parens]``: every method on zoo:induction and zoo:parens through
``discover`` (the code ``mechscope circuit`` runs); one JSON line with, per method, agreement with exact,
faithfulness (mean ablation, 95% bootstrap CI), wall time and passes; every method keeps 12 nodes or edges
(ACDC: τ = 0.01), then EAP and EAP-IG again at ACDC's edge count.
"""

import argparse
import json
import sys
import time

import torch

from mechscope.circuits import agreement, atp_effects, exact_effects
from mechscope.circuits.discover import METHODS, DiscoverConfig, discover, hf_nodes
from mechscope.circuits.tasks import induction_task, ioi_task, parens_task
from mechscope.jsonout import plain


def smollm2(examples: int) -> dict:
    model, task = ioi_task(examples)
    nodes = list(hf_nodes(model).values())
    with torch.no_grad():
        model(task.clean)  # warm-up
    t = time.perf_counter()
    atp = atp_effects(model, nodes, task.clean, task.corrupt, task.metric)
    atp_s = time.perf_counter() - t
    t = time.perf_counter()
    exact = exact_effects(model, nodes, task.clean, task.corrupt, task.metric)
    exact_s = time.perf_counter() - t
    return {
        "bench": "circuits-smollm2",
        "task": "ioi",
        "examples": examples,
        "tokens": int(task.clean.shape[1]),
        "nodes": len(nodes),
        "clean_metric": exact.clean_metric,
        "corrupt_metric": exact.corrupt_metric,
        "atp_s": atp_s,
        "exact_s": exact_s,
        "speedup": exact_s / atp_s,
        "atp_passes": [atp.forwards, atp.backwards],
        "exact_passes": [exact.forwards, exact.backwards],
        "agreement_all_nodes": agreement(atp, exact),
        "top5_exact": exact.ranking()[:5],
        "top5_atp": atp.ranking()[:5],
    }


def zoo(examples: int, tasks: list[str]) -> dict:
    rows = []
    for build in [{"induction": induction_task, "parens": parens_task}[t] for t in tasks]:
        model, task = build(examples)
        n_acdc = None
        runs = [(m, 12) for m in METHODS] + [("eap", None), ("eap-ig", None)]  # the last two at ACDC's size
        for method, top in runs:
            cfg = DiscoverConfig(method=method, top=top or n_acdc, budget=40, threshold=0.01)
            t = time.perf_counter()
            r = discover(model, task, cfg)
            f, ag, c = r["faithfulness"], r["agreement_with_exact"], r["cost"]
            n_acdc = len(r["edges"]) if method == "acdc" else n_acdc
            rows.append(
                {
                    "task": task.name,
                    "method": method,
                    "top": cfg.top,
                    "edges": len(r["edges"]),
                    "nodes": [n["name"] for n in r["nodes"]],
                    "spearman": ag and ag["spearman"],
                    "auc_top": ag and ag["auc_top"],
                    "budget": ag and ag["budget"],
                    "recovered": f["recovered"],
                    "recovered_ci": f["recovered_ci"],
                    "loss_circuit": f["loss_circuit"],
                    "loss_full": f["loss_full"],
                    "loss_empty": f["loss_empty"],
                    "loss_rock": f["loss_rock"],
                    "worse_than_rock": f["worse_than_rock"],
                    "wall_s": c["wall_s"],
                    "forwards": c["forwards"],
                    "backwards": c["backwards"],
                    "scored": c["scored"],
                    "total_s": time.perf_counter() - t,
                }
            )
            print(json.dumps(plain(rows[-1])), file=sys.stderr, flush=True)
    return {"bench": "circuits-zoo", "examples": examples, "rows": rows}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["smollm2", "zoo"])
    p.add_argument("--examples", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=["induction", "parens"], choices=["induction", "parens"])
    a = p.parse_args()
    torch.set_num_threads(1)
    out = smollm2(a.examples or 8) if a.which == "smollm2" else zoo(a.examples or 200, a.tasks)
    print(json.dumps(plain(out)))

"""One attribution graph in mechscope and in circuit-tracer 0.5.0: time and peak memory, runs alternating.

Both tools get SmolLM2-135M-Instruct (the embedded float32 copy), the same prompt as the same token ids (BOS
first; BOS's latents and errors constant, its token node a node: mechscope's ``bos_mode="circuit-tracer"``), the same
30 random JumpReLU transcoders (one per MLP, ``mlp_in.L → mlp_out.L``, no skip term), the same batch size (targets
per backward pass) and the same logit nodes (at most 10, cumulative probability 0.95). The transcoders are drawn
by :func:`mechscope.graph.circuit_tracer_peer.prepare` (shared with tests/integration/test_graph_circuittracer.py).

Each run is a fresh process (peak memory = its maximum resident set, model and transcoders included) timed from the
loaded model to the finished adjacency: mechscope's record + node selection + attribution, circuit-tracer's
``attribute``. Runs alternate (m, c, c, m, m, c, …) so that a shared machine's load falls on both alike. Prints one
JSON line: the best and the median seconds of each tool and their ratios (mechscope / circuit-tracer; on a shared
machine the best of each is the least disturbed), the median peak RSS, the node counts
(the same graph should have the same active latents) and mechscope's exactness residual.

circuit-tracer lives in its own virtual environment (``.ci/setup-circuittracer``); its side is
``mechscope.graph.circuit_tracer_peer.WORKER``, run with that venv's python.

    OMP_NUM_THREADS=2 python bench/graph_vs_circuit_tracer.py [--runs 2] [--batch-size 32] [--active 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The capital of France is Paris, and the capital of Germany is"
CT_PYTHON = "/tmp/mechscope-peers/circuit-tracer/bin/python"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- set-up (mechscope's environment) -------------------------------------------------------------------


def prepare(work: Path, latents: int, active: int, seed: int) -> None:
    """The token ids, the transcoders in both tools' forms and a model folder circuit-tracer's transformers reads
    (:func:`mechscope.graph.circuit_tracer_peer.prepare`, the set-up the peer test uses too)."""
    from mechscope.graph.build import prompt_ids
    from mechscope.graph.circuit_tracer_peer import prepare as prepare_both
    from mechscope.models import load_model
    from mechscope.models.embedded import ensure_converted

    lm = load_model("smollm2")
    prepare_both(work, lm.model, ensure_converted(), prompt_ids(lm.tokenizer, PROMPT), latents, active, seed)


# ---- the two workers (one fresh process per run) ---------------------------------------------------------


def run_mechscope(work: Path, batch: int) -> dict:
    from safetensors.torch import load_file

    from mechscope.graph.attribute import attribute, check_exact, select_nodes
    from mechscope.graph.replacement import ReplacementModel, find_transcoders
    from mechscope.models import load_model

    model = load_model("smollm2").model
    tcs = find_transcoders(model, work / "mechscope")
    ids = load_file(str(work / "ids.safetensors"))["ids"]
    t0 = time.perf_counter()
    rm = ReplacementModel(model, tcs)
    rec = rm.record(ids)
    nodes = select_nodes(rec, 10, 0.95, -1, const_pos0=True, bos_token_node=True)
    att = attribute(rm, rec, nodes, batch)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_mb(),
        "latents": nodes.n_lat,
        "logits": nodes.n_logit,
        "max_relative_residual": check_exact(att, rec, rm)["max_relative_residual"],
    }


def run_circuit_tracer(work: Path, batch: int, python: str, env: dict) -> dict:
    """circuit-tracer's run: :data:`mechscope.graph.circuit_tracer_peer.WORKER` in its venv (``attribute`` timed alone)."""
    from safetensors.torch import load_file

    from mechscope.graph.circuit_tracer_peer import WORKER

    out = subprocess.run(
        [python, "-c", WORKER.read_text(), str(work), str(batch), "0.8", "0.98"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        sys.exit(f"circuit-tracer run failed:\n{out.stderr[-3000:]}")
    got = load_file(str(work / "out.safetensors"))
    return {
        "seconds": float(got["seconds"]),
        "peak_rss_mb": float(got["peak_rss_mb"]),
        "latents": int(got["active_features"].shape[0]),
        "logits": int(got["logit_tokens"].numel()),
    }


WORKERS = ("mechscope", "circuit-tracer")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="runs of each tool (alternating)")
    p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass, in both tools")
    p.add_argument("--latents", type=int, default=4096, help="latents per transcoder")
    p.add_argument("--active", type=int, default=4, help="latents firing per position and layer (sets the thresholds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--circuit-tracer-python", default=CT_PYTHON)
    p.add_argument("--worker", choices=["mechscope"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(run_mechscope(Path(a.work), a.batch_size)))
        return
    with tempfile.TemporaryDirectory(prefix="graph-vs-ct-") as tmp:
        work = Path(tmp)
        prepare(work, a.latents, a.active, a.seed)
        order = [
            t
            for r in range(a.runs)
            for t in (("mechscope", "circuit-tracer") if r % 2 == 0 else ("circuit-tracer", "mechscope"))
        ]
        got: dict[str, list[dict]] = {t: [] for t in WORKERS}
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
        for tool in order:
            if tool == "circuit-tracer":
                got[tool].append(run_circuit_tracer(work, a.batch_size, a.circuit_tracer_python, env))
            else:
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    tool,
                    "--work",
                    str(work),
                    "--batch-size",
                    str(a.batch_size),
                    "--threads",
                    str(a.threads),
                ]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"{tool} run failed:\n{out.stderr[-3000:]}")
                got[tool].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{tool}: {got[tool][-1]}", file=sys.stderr)

    def med(tool: str, key: str) -> float:
        return statistics.median(r[key] for r in got[tool])

    def best(tool: str) -> float:
        return min(r["seconds"] for r in got[tool])

    m, c = "mechscope", "circuit-tracer"
    print(
        json.dumps(
            {
                "prompt": PROMPT,
                "batch_size": a.batch_size,
                "latents_per_layer": a.latents,
                "runs_each": a.runs,
                "threads": a.threads,
                "order": order,
                "seconds_best": {t: round(best(t), 2) for t in WORKERS},
                "seconds_median": {t: round(med(t, "seconds"), 2) for t in WORKERS},
                "time_ratio_best": round(best(m) / best(c), 3),
                "time_ratio_median": round(med(m, "seconds") / med(c, "seconds"), 3),
                "peak_rss_mb": {t: round(med(t, "peak_rss_mb")) for t in WORKERS},
                "nodes": {t: {"latents": got[t][0]["latents"], "logits": got[t][0]["logits"]} for t in WORKERS},
                "mechscope_max_relative_residual": max(r["max_relative_residual"] for r in got[m]),
                "runs": got,
            }
        )
    )


if __name__ == "__main__":
    main()

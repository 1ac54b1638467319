"""Peak memory and time of one attribution graph on SmolLM2 against the prompt length (issue 25).

SmolLM2-135M-Instruct (the embedded float32 copy) with 30 random JumpReLU transcoders (one per MLP, no skip term),
drawn as bench/graph_vs_circuit_tracer.py draws them: W_enc, W_dec ~ N(0, 1/d), b_enc = 0, b_dec ~ N(0, 0.01²), one
threshold per layer, set here once on the MLP inputs of one 1,024-token context of the default corpus (the stdlib
docstrings; BOS first) so that about ``--active`` latents per position and layer fire, and kept for every length. The
prompt of length T is that context's first T tokens (BOS included, in the constant), the logit nodes at its last.

Each length runs in a fresh process (peak memory = its maximum resident set, model and transcoders included) with
``max_latents`` latent nodes at most and the memory cap ``--max-memory-gb`` (the replay batch is lowered to fit under
it, :func:`mechscope.graph.memory.plan_memory`): record, node selection, the memory plan, attribution, the exactness
check, pruning and scores — :func:`mechscope.graph.build.build_graph` without the prompt losses — then what
``mechscope graph`` writes: graph.json, the report's drawing and cards (no top contexts), ``adjacency.safetensors``
read back into the viewers' JSON. Prints one JSON line per length: peak RSS (MiB) before the report and at the end,
the estimate, the resident set after loading, seconds by phase, node counts, the replay batch and the exactness
residual. Time is wall-clock on whatever else the machine runs.

    OMP_NUM_THREADS=2 python bench/graph_memory.py [--lengths 16 64 256 1024] [--max-latents 32] [--max-memory-gb 12]
    python bench/graph_memory.py --plot RESULTS.jsonl docs/img/graph-memory.png     # the curve, from the JSON lines
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prepare(work: Path, length: int, latents: int, active: int, seed: int) -> None:
    """The 1,024-token context and the transcoders (saved as mechscope SAE folders under ``work``)."""
    import torch

    from mechscope.data.text import TextCorpusConfig, build_contexts
    from mechscope.models import load_model
    from mechscope.sae.io import save_sae
    from mechscope.sae.transcoder_jumprelu import JumpReLUTranscoderConfig, JumpReLUTranscoderSAE
    from mechscope.sites import Site, capture

    lm = load_model("smollm2")
    model = lm.model
    ids = build_contexts(lm.tokenizer, TextCorpusConfig(context_length=length, max_tokens=40_000)).train[0]
    torch.save(ids, work / "ids.pt")
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    sites = [Site(f"model.layers.{l}.mlp", "input") for l in range(L)]
    with torch.no_grad(), capture(model, sites) as got:
        model(input_ids=ids[None])
    g = torch.Generator().manual_seed(seed)
    for l in range(L):
        W_enc = torch.randn(d, latents, generator=g) / d**0.5
        W_dec = torch.randn(latents, d, generator=g) / d**0.5
        b_dec = torch.randn(d, generator=g) * 0.01
        z = got[str(sites[l])][0, 1:] @ W_enc  # [T - 1, latents], BOS left out
        theta = float(z.flatten().kthvalue(z.numel() - active * z.shape[0]).values)
        sae = JumpReLUTranscoderSAE(JumpReLUTranscoderConfig(d_in=d, latents=latents, d_out=d))
        with torch.no_grad():
            sae.W_enc.copy_(W_enc), sae.b_enc.zero_(), sae.W_dec.copy_(W_dec), sae.b_dec.copy_(b_dec)
            sae.threshold.fill_(theta)
        save_sae(sae, work / "tc" / f"L{l}", {"site": f"mlp_in.{l}", "target_site": f"mlp_out.{l}"})


def worker(work: Path, T: int, a: argparse.Namespace) -> dict:
    import torch

    from mechscope.graph.attribute import attribute, check_exact, select_nodes
    from mechscope.graph.config import GraphConfig
    from mechscope.graph.memory import plan_memory
    from mechscope.graph.prune import prune, scores
    from mechscope.graph.replacement import ReplacementModel, find_transcoders
    from mechscope.models import load_model

    lm = load_model("smollm2")
    model = lm.model
    tcs = find_transcoders(model, work / "tc")
    ids = torch.load(work / "ids.pt")[:T]
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    rm = ReplacementModel(model, tcs)
    rec = rm.record(ids)
    nodes = select_nodes(rec, 10, 0.95, -1, const_pos0=True)
    t1 = time.perf_counter()
    B, est = plan_memory(rm, rec, nodes, a.batch_size, a.max_latents, a.max_memory_gb)
    t2 = time.perf_counter()
    att = attribute(rm, rec, nodes, a.batch_size, max_latents=a.max_latents, replay_batch=B)
    t3 = time.perf_counter()
    check = check_exact(att, rec, rm)
    pr = prune(att.rows, att.nodes, 0.8, 0.98, targets=att.targets)
    sc = scores(att.rows, att.nodes, targets=att.targets)
    t4 = time.perf_counter()
    graph_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = report_and_save(work, lm.tokenizer, ids, GraphConfig(max_latents=a.max_latents), rec, att, pr, sc, check)
    t5 = time.perf_counter()
    return {
        "tokens": T,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_before_report_mb": round(graph_peak),
        "saved_mb": round(out["saved_bytes"] / 2**20, 1),
        "kept_edges": out["kept_edges"],
        "estimate_mb": round(est["peak"] / 2**20),
        "loaded_rss_mb": round(loaded),
        "estimate_parts_mb": {k: round(v / 2**20) for k, v in est.items()},
        "seconds": {
            "record": round(t1 - t0, 1),
            "plan": round(t2 - t1, 1),
            "attribution": round(t3 - t2, 1),
            "check_prune_scores": round(t4 - t3, 1),
            "report_save": round(t5 - t4, 1),
            "total": round(t5 - t0, 1),
        },
        "replay_batch": B,
        "active_latents": nodes.n_lat,
        "latent_nodes": att.nodes.n_lat,
        "nodes": att.nodes.size,
        "targets": int(att.targets.numel()),
        "kept_nodes": int(pr.node_mask.sum()),
        "replacement_score": round(sc["replacement_score"], 4),
        "max_relative_residual": check["max_relative_residual"],
    }


def report_and_save(work: Path, tok, ids, cfg, rec, att, pr, sc, check) -> dict:
    """What ``mechscope graph`` writes after pruning, as it writes it: graph.json, the report's drawing and cards,
    adjacency.safetensors, and the viewers' JSON from the file read back."""
    from mechscope.graph.build import GraphResult
    from mechscope.graph.html import graph_html, graph_json
    from mechscope.graph.saved import load_graph, save_graph, viewer_json

    n = att.nodes
    r = GraphResult(
        cfg,
        rec,
        att,
        pr,
        sc,
        check,
        {},
        [tok.decode([int(t)]) for t in ids],
        [tok.decode([int(t)]) for t in n.logit_tokens],
    )
    data = graph_json(r)
    html = graph_html(r)
    path = work / f"adjacency-{n.T}.safetensors"
    save_graph(path, r)
    viewer = viewer_json(load_graph(path), "bench")
    assert len(viewer["links"]) == len(data["edges"]) and "ag-svg" in html
    size = path.stat().st_size
    path.unlink()
    return {"saved_bytes": size, "kept_edges": len(data["edges"])}


def plot(results: Path, png: Path) -> None:
    """Peak RSS (measured and estimated) and seconds against the prompt length, from the JSON lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    T = [r["tokens"] for r in rows]
    fig, (ax, at) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax.plot(T, [r["peak_rss_mb"] / 1024 for r in rows], "o-", label="measured peak RSS")
    ax.plot(T, [r["estimate_mb"] / 1024 for r in rows], "s--", label="estimate")
    ax.plot(T, [r["loaded_rss_mb"] / 1024 for r in rows], "^:", label="model + transcoders loaded")
    ax.axhline(rows[0]["max_memory_gb"], color="grey", lw=0.8, label="cap (max_memory_gb)")
    ax.set(xscale="log", xlabel="prompt tokens T", ylabel="GiB", title=f"memory, max_latents={rows[0]['max_latents']}")
    ax.set_xticks(T, [str(t) for t in T])
    ax.legend(fontsize=7)
    at.plot(T, [r["seconds"]["total"] for r in rows], "o-")
    at.set(
        xscale="log",
        yscale="log",
        xlabel="prompt tokens T",
        ylabel="seconds (shared machine, under load)",
        title="wall time",
    )
    at.set_xticks(T, [str(t) for t in T])
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--lengths", type=int, nargs="+", default=[16, 64, 256, 1024], help="prompt lengths T (BOS included)"
    )
    p.add_argument("--max-latents", type=int, default=32, help="latent nodes at most (GraphConfig.max_latents)")
    p.add_argument("--max-memory-gb", type=float, default=12.0, help="memory cap (GraphConfig.max_memory_gb)")
    p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass, at most")
    p.add_argument("--latents", type=int, default=4096, help="latents per transcoder")
    p.add_argument("--active", type=int, default=4, help="latents firing per position and layer (sets the thresholds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--context",
        type=int,
        default=1024,
        help="length of the context the prompts are cut from and the thresholds set on (the same graphs whatever "
        "--lengths are run)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", nargs=2, metavar=("RESULTS", "PNG"), help="draw the curve from saved JSON lines and stop")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.plot:
        plot(Path(a.plot[0]), Path(a.plot[1]))
        return
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(worker(Path(a.work), a.worker, a)))
        return
    with tempfile.TemporaryDirectory(prefix="graph-memory-") as tmp:
        work = Path(tmp)
        prepare(work, max(a.context, *a.lengths), a.latents, a.active, a.seed)
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
        for T in a.lengths:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                str(T),
                "--work",
                str(work),
                "--max-latents",
                str(a.max_latents),
                "--max-memory-gb",
                str(a.max_memory_gb),
                "--batch-size",
                str(a.batch_size),
                "--threads",
                str(a.threads),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"T={T} failed:\n{out.stderr[-3000:]}")
            print(
                json.dumps(
                    {
                        **json.loads(out.stdout.strip().splitlines()[-1]),
                        "max_latents": a.max_latents,
                        "max_memory_gb": a.max_memory_gb,
                        "batch_size": a.batch_size,
                        "threads": a.threads,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

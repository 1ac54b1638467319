"""One attribution graph in mechscope and in circuit-tracer 0.5.0: time and peak memory, runs alternating.

Both tools get SmolLM2-135M-Instruct (the embedded float32 copy), the same prompt as the same token ids (BOS
first; both count BOS as a constant: mechscope's ``bos_constant``, circuit-tracer's zeroed position 0), the same
30 random JumpReLU transcoders (one per MLP, ``mlp_in.L → mlp_out.L``, no skip term), the same batch size (targets
per backward pass) and the same logit nodes (at most 10, cumulative probability 0.95). The transcoders are drawn
here: W_enc, W_dec ~ N(0, 1/d), b_enc = 0, b_dec ~ N(0, 0.01²) and one threshold per layer, set on the prompt's MLP
inputs so that about ``--active`` latents per position and layer fire.

Each run is a fresh process (peak memory = its maximum resident set, model and transcoders included) timed from the
loaded model to the finished adjacency: mechscope's record + node selection + attribution, circuit-tracer's
``attribute``. Runs alternate (m, c, c, m, m, c, …) so that a shared machine's load falls on both alike. Prints one
JSON line: the best and the median seconds of each tool and their ratios (mechscope / circuit-tracer; on a shared
machine the best of each is the least disturbed), the median peak RSS, the node counts
(the same graph should have the same active latents) and mechscope's exactness residual.

circuit-tracer lives in its own virtual environment (it needs transformers ≤ 4.57 and nnsight 0.6.3):

    python -m venv /tmp/mechscope-peers/circuit-tracer
    /tmp/mechscope-peers/circuit-tracer/bin/pip install torch==2.13.0      # first, then with it held:
    echo torch==2.13.0 > c.txt && PIP_CONSTRAINT=c.txt /tmp/mechscope-peers/circuit-tracer/bin/pip install \\
        circuit-tracer==0.5.0 nnsight==0.6.3 "transformers<=4.57.99"

Transformers 4.57 does not read a 5.x config's ``rope_parameters`` nor its tokenizer class name: the model folder is
copied to a temporary one (weights linked) whose config carries ``rope_theta`` at the top and whose tokenizer is a
``PreTrainedTokenizerFast``, as 4.57 expects.

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
    """The token ids, the transcoders in both tools' forms and a model folder circuit-tracer's transformers reads."""
    import torch
    from safetensors.torch import save_file

    from mechscope.graph.build import prompt_ids
    from mechscope.models import load_model
    from mechscope.models.embedded import ensure_converted
    from mechscope.sae.io import save_sae
    from mechscope.sae.transcoder_jumprelu import (
        JumpReLUTranscoderConfig,
        JumpReLUTranscoderSAE,
    )
    from mechscope.sites import Site, capture

    lm = load_model("smollm2")
    model, folder = lm.model, ensure_converted()
    ids = prompt_ids(lm.tokenizer, PROMPT)
    torch.save(ids, work / "ids.pt")
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    sites = [Site(f"model.layers.{l}.mlp", "input") for l in range(L)]
    with torch.no_grad(), capture(model, sites) as got:
        model(input_ids=ids[None])
    g = torch.Generator().manual_seed(seed)
    for l in range(L):
        W_enc = torch.randn(d, latents, generator=g) / d ** 0.5
        W_dec = torch.randn(latents, d, generator=g) / d ** 0.5
        b_dec = torch.randn(d, generator=g) * 0.01
        z = got[str(sites[l])][0, 1:] @ W_enc  # [T - 1, latents], BOS left out
        theta = float(z.flatten().kthvalue(z.numel() - active * z.shape[0]).values)
        sae = JumpReLUTranscoderSAE(JumpReLUTranscoderConfig(d_in=d, latents=latents, d_out=d))
        with torch.no_grad():
            sae.W_enc.copy_(W_enc), sae.b_enc.zero_(), sae.W_dec.copy_(W_dec), sae.b_dec.copy_(b_dec)
            sae.threshold.fill_(theta)
        save_sae(sae, work / "mechscope" / f"L{l}", {"site": f"mlp_in.{l}", "target_site": f"mlp_out.{l}"})
        save_file({"W_enc": W_enc.T.contiguous(), "W_dec": W_dec, "b_enc": torch.zeros(latents), "b_dec": b_dec,
                   "threshold": torch.full((latents,), theta)}, str(work / f"ct_L{l}.safetensors"))
    ct_model = work / "model"
    ct_model.mkdir()
    for f in folder.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json"):
            (ct_model / f.name).symlink_to(f)
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.pop("backend", None)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"  # 5.x names its fast tokenizers' class TokenizersBackend
    (ct_model / "tokenizer_config.json").write_text(json.dumps(tok))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
    cfg["rope_scaling"] = None
    (ct_model / "config.json").write_text(json.dumps(cfg))


# ---- the two workers (one fresh process per run) ---------------------------------------------------------

def run_mechscope(work: Path, batch: int) -> dict:
    import torch

    from mechscope.graph.attribute import attribute, check_exact, select_nodes
    from mechscope.graph.replacement import ReplacementModel, find_transcoders
    from mechscope.models import load_model

    model = load_model("smollm2").model
    tcs = find_transcoders(model, work / "mechscope")
    ids = torch.load(work / "ids.pt")
    t0 = time.perf_counter()
    rm = ReplacementModel(model, tcs)
    rec = rm.record(ids)
    nodes = select_nodes(rec, 10, 0.95, -1, const_pos0=True)
    att = attribute(rm, rec, nodes, batch)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _peak_mb(), "latents": nodes.n_lat, "logits": nodes.n_logit,
            "max_relative_residual": check_exact(att, rec, rm)["max_relative_residual"]}


def run_circuit_tracer(work: Path, batch: int) -> dict:
    import torch
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
    )
    from safetensors.torch import load_file

    cpu = torch.device("cpu")
    tcs = {}
    for f in sorted(work.glob("ct_L*.safetensors"), key=lambda p: int(p.stem[4:])):
        w = load_file(str(f))
        m, d = w["W_enc"].shape
        tc = SingleLayerTranscoder(d, m, JumpReLU(w["threshold"]), int(f.stem[4:]), device=cpu, dtype=torch.float32)
        with torch.no_grad():
            for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(tc, k).copy_(w[k])
        tcs[tc.layer_idx] = tc
    tset = TranscoderSet(tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
    model = ReplacementModel.from_pretrained_and_transcoders(str(work / "model"), tset, backend="nnsight", device=cpu,
                                                             dtype=torch.float32)
    ids = torch.load(work / "ids.pt")
    t0 = time.perf_counter()
    graph = attribute(ids, model, batch_size=batch, max_n_logits=10, desired_logit_prob=0.95)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _peak_mb(), "latents": graph.active_features.shape[0],
            "logits": len(graph.logit_targets)}


WORKERS = {"mechscope": run_mechscope, "circuit-tracer": run_circuit_tracer}
"""Tool name → its worker (run in that tool's environment)."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="runs of each tool (alternating)")
    p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass, in both tools")
    p.add_argument("--latents", type=int, default=4096, help="latents per transcoder")
    p.add_argument("--active", type=int, default=4, help="latents firing per position and layer (sets the thresholds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--circuit-tracer-python", default=CT_PYTHON)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch
        torch.set_num_threads(a.threads)
        print(json.dumps(WORKERS[a.worker](Path(a.work), a.batch_size)))
        return
    with tempfile.TemporaryDirectory(prefix="graph-vs-ct-") as tmp:
        work = Path(tmp)
        prepare(work, a.latents, a.active, a.seed)
        python = {"mechscope": sys.executable, "circuit-tracer": a.circuit_tracer_python}
        order = [t for r in range(a.runs) for t in (("mechscope", "circuit-tracer") if r % 2 == 0 else ("circuit-tracer", "mechscope"))]
        got: dict[str, list[dict]] = {t: [] for t in WORKERS}
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
        for tool in order:
            cmd = [python[tool], __file__, "--worker", tool, "--work", str(work), "--batch-size", str(a.batch_size),
                   "--threads", str(a.threads)]
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
    print(json.dumps({
        "prompt": PROMPT, "batch_size": a.batch_size, "latents_per_layer": a.latents, "runs_each": a.runs,
        "threads": a.threads, "order": order,
        "seconds_best": {t: round(best(t), 2) for t in WORKERS},
        "seconds_median": {t: round(med(t, "seconds"), 2) for t in WORKERS},
        "time_ratio_best": round(best(m) / best(c), 3),
        "time_ratio_median": round(med(m, "seconds") / med(c, "seconds"), 3),
        "peak_rss_mb": {t: round(med(t, "peak_rss_mb")) for t in WORKERS},
        "nodes": {t: {"latents": got[t][0]["latents"], "logits": got[t][0]["logits"]} for t in WORKERS},
        "mechscope_max_relative_residual": max(r["max_relative_residual"] for r in got[m]),
        "runs": got,
    }))


if __name__ == "__main__":
    main()

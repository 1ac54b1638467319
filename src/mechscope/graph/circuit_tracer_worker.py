"""circuit-tracer's side of :mod:`mechscope.graph.circuit_tracer_peer`, run by circuit-tracer's own python (it imports
only torch, safetensors and circuit_tracer, never mechscope):

    python -c "$(cat circuit_tracer_worker.py)" WORK BATCH NODE_THRESHOLD EDGE_THRESHOLD [VIEWER_SLUG]

(as its source, not by path: this folder first on sys.path would shadow the standard library's ``html``)

reads WORK/ids.safetensors, WORK/model and WORK/ct/L*/transcoder.safetensors, builds the graph with ``attribute``
(at most 10 logit nodes, cumulative probability 0.95, all latents), prunes it with ``prune_graph`` and writes
WORK/out.safetensors: adjacency [N, N], active_features [n, 3] (layer, position, latent), activation_values [n],
logit_tokens, logit_probs, node_mask [N], edge_mask [N, N], cumulative_scores [N], seconds (``attribute`` alone)
and peak_rss_mb (the peak resident set when ``attribute`` returns, before pruning). With VIEWER_SLUG it also writes
the viewer's JSON with ``create_graph_files`` into WORK/viewer.
"""

import resource
import sys
import time
from pathlib import Path

import torch
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.graph import prune_graph
from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet, load_relu_transcoder
from safetensors.torch import load_file, save_file


def main() -> None:
    work, batch = Path(sys.argv[1]), int(sys.argv[2])
    node_threshold, edge_threshold = float(sys.argv[3]), float(sys.argv[4])
    cpu = torch.device("cpu")
    files = sorted((work / "ct").glob("L*/transcoder.safetensors"), key=lambda p: int(p.parent.name[1:]))
    tcs = {
        l: load_relu_transcoder(str(f), l, device=cpu, lazy_encoder=False, lazy_decoder=False)
        for l, f in enumerate(files)
    }
    tset = TranscoderSet(
        tcs, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="mechscope-random"
    )
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(work / "model"), tset, backend="nnsight", device=cpu, dtype=torch.float32
    )
    ids = load_file(str(work / "ids.safetensors"))["ids"]
    t0 = time.perf_counter()
    graph = attribute(ids, model, batch_size=batch, max_n_logits=10, desired_logit_prob=0.95)
    seconds = time.perf_counter() - t0
    peak_mb = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # before pruning: the bench's memory is attribution's
    node_mask, edge_mask, cumulative = prune_graph(graph, node_threshold, edge_threshold)
    out = {
        "adjacency": graph.adjacency_matrix,
        "active_features": graph.active_features[graph.selected_features],
        "activation_values": graph.activation_values[graph.selected_features],
        "logit_tokens": graph.logit_token_ids,
        "logit_probs": graph.logit_probabilities,
        "node_mask": node_mask,
        "edge_mask": edge_mask,
        "cumulative_scores": cumulative,
        "seconds": torch.tensor(seconds, dtype=torch.float64),
        "peak_rss_mb": torch.tensor(peak_mb, dtype=torch.float64),
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in out.items()}, str(work / "out.safetensors"))
    if len(sys.argv) > 5:
        from circuit_tracer.utils.create_graph_files import create_graph_files

        create_graph_files(
            graph, sys.argv[5], str(work / "viewer"), node_threshold=node_threshold, edge_threshold=edge_threshold
        )


if __name__ == "__main__":
    main()

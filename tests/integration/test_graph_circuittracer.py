"""The same attribution graph in mechscope (``bos_mode="circuit-tracer"``) and in circuit-tracer 0.5.0, run from
its own venv (issue 26): SmolLM2 cut to its first 4 blocks, random JumpReLU transcoders written in circuit-tracer's
format (mechscope.graph.circuit_tracer_peer), one short prompt. The two graphs must have the same nodes, the same
adjacency edge by edge (float32 tolerance), the same pruned nodes and edges, and mechscope's viewer JSON must be
circuit-tracer's own (same fields, node ids and links).

The venv comes from ``.ci/setup-circuittracer``; the test skips without it, except in CI, where it fails.
"""

from __future__ import annotations

import json

import torch

from mechscope.graph.build import build_graph, prompt_ids
from mechscope.graph.circuit_tracer_peer import WORKER, circuit_tracer_order, keep_layers, prepare
from mechscope.graph.config import GraphConfig
from mechscope.graph.replacement import find_transcoders
from mechscope.graph.saved import load_graph, save_graph, viewer_json
from mechscope.models import load_model
from mechscope.models.embedded import ensure_converted
from mechscope.sae.formats import convert
from tests.helpers_peers import peer_python, require_peer, run_peer

PYTHON = peer_python("MECHSCOPE_CIRCUITTRACER_PYTHON", "circuit-tracer")
LAYERS, LATENTS, ACTIVE = 4, 512, 16
NODE_T, EDGE_T = 0.98, 0.98
"""Pruning thresholds: a node threshold above the default keeps some latents (random transcoders leave most of
the influence to error nodes)."""


def test_graph_equals_circuit_tracers_edge_by_edge_and_after_pruning(tmp_path):
    require_peer(PYTHON, "circuit-tracer", "setup-circuittracer", "MECHSCOPE_CIRCUITTRACER_PYTHON")
    lm = load_model("smollm2")
    model = keep_layers(lm.model, LAYERS)
    ids = prompt_ids(lm.tokenizer, "The capital of France is")
    assert int(ids[0]) == lm.tokenizer.bos_token_id
    prepare(tmp_path, model, ensure_converted(), ids, LATENTS, ACTIVE, seed=0, n_layers=LAYERS)
    theirs = run_peer(PYTHON, WORKER.read_text(), tmp_path, 32, NODE_T, EDGE_T, "smollm2-test", timeout=300)
    torch.set_grad_enabled(True)
    cfg = GraphConfig(bos_mode="circuit-tracer", node_threshold=NODE_T, edge_threshold=EDGE_T)
    r = build_graph(
        model,
        ids,
        find_transcoders(model, tmp_path / "mechscope"),
        cfg,
        decode=lambda t: lm.tokenizer.decode([t]),
        bos_id=lm.tokenizer.bos_token_id,
    )
    # the same transcoders as a circuit-tracer transcoder set (config.yaml + layer_i files): mechscope's graph reads
    # that format directly, with the same result
    convert(tmp_path / "mechscope", tmp_path / "ct-set", to="circuittracer-set")
    r_set = build_graph(
        model,
        ids,
        find_transcoders(model, tmp_path / "ct-set"),
        cfg,
        decode=lambda t: lm.tokenizer.decode([t]),
        bos_id=lm.tokenizer.bos_token_id,
    )
    assert torch.equal(r_set.att.adjacency, r.att.adjacency)
    n = r.nodes
    # the same nodes: latents (mapped by layer, position, latent), then L·T errors, T tokens and the same logits
    order = circuit_tracer_order(n, theirs["active_features"])  # refuses a latent mechscope does not have
    assert n.n_lat == theirs["active_features"].shape[0] > 20 and int((n.pos == 0).sum()) == 0
    assert torch.equal(order, torch.arange(n.size))  # in the same order, too
    assert torch.equal(n.logit_tokens, theirs["logit_tokens"].long())
    assert torch.allclose(n.act[order[: n.n_lat]].double(), theirs["activation_values"].double(), rtol=1e-5, atol=1e-5)
    # the same adjacency, edge by edge (circuit-tracer computes in float32)
    A, B = r.att.adjacency[order][:, order], theirs["adjacency"].double()
    scale = float(B.abs().max())
    gap = float((A - B).abs().max())
    print(f"max |A_mechscope − A_circuit-tracer| = {gap:.3g} (max |A| {scale:.3g}); {n.size} nodes")
    assert gap <= 1e-5 * scale, (gap, scale)
    bos_edges = B[:, n.token_index(0)].abs()  # BOS's token node keeps its edges: the mode's point
    assert float(bos_edges.max()) > 1e-2
    # the same pruned graph
    nodes_mine, edges_mine = r.pruned.node_mask[order], r.pruned.edge_mask[order][:, order]
    assert torch.equal(nodes_mine, theirs["node_mask"]) and torch.equal(edges_mine, theirs["edge_mask"])
    assert int(nodes_mine[: n.n_lat].sum()) > 0 and int(edges_mine.sum()) > 20
    # the viewer JSON written from mechscope's saved graph is circuit-tracer's own
    save_graph(tmp_path / "adjacency.safetensors", r, prompt=lm.tokenizer.decode(ids.tolist()))
    mine = viewer_json(load_graph(tmp_path / "adjacency.safetensors"), "smollm2-test", scan="mechscope-random")
    want = json.loads((tmp_path / "viewer" / "smollm2-test.json").read_text())
    assert set(mine) == set(want) and mine["metadata"] == want["metadata"] and mine["qParams"] == want["qParams"]
    assert [list(d) for d in mine["nodes"]] == [list(d) for d in want["nodes"]]  # fields, in order

    def plain(d):
        return {k: v for k, v in d.items() if k not in ("influence", "activation", "token_prob", "clerp")}

    assert [plain(d) for d in mine["nodes"]] == [plain(d) for d in want["nodes"]]
    for a, b in zip(mine["nodes"], want["nodes"]):
        for k in ("influence", "activation", "token_prob"):
            assert (a[k] is None) == (b[k] is None) and (a[k] is None or abs(a[k] - b[k]) <= 1e-4), (k, a, b)
    assert [(e["source"], e["target"]) for e in mine["links"]] == [(e["source"], e["target"]) for e in want["links"]]
    assert max(abs(a["weight"] - b["weight"]) for a, b in zip(mine["links"], want["links"])) <= 1e-5 * scale

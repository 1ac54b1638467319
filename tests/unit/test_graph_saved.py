"""A saved graph (mechscope.graph.saved): adjacency.safetensors carries every node's labels, is read back without
the model, and is written in the graph viewers' JSON (the schema's field names are checked against
circuit-tracer's own writer in tests/integration/test_graph_circuittracer.py)."""

from __future__ import annotations

import argparse

import pytest
import torch

from mechscope.errors import MechscopeError, UsageError
from mechscope.graph.build import build_graph
from mechscope.graph.config import GraphConfig
from mechscope.graph.saved import VIEWER_NODE_FIELDS, load_graph, save_graph, viewer_json
from tests.helpers_graph import random_transcoders
from tests.unit.test_graph import _zoo


def _result(bos_mode: str = "circuit-tracer"):
    model = _zoo(layer_norm=True, seed=3)
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=True, seed=3)
    ids = torch.tensor([0, 7, 1, 8, 2, 8, 1])
    cfg = GraphConfig(bos_mode=bos_mode, node_threshold=0.9, edge_threshold=0.95)  # type: ignore[arg-type]
    return build_graph(model, ids, tcs, cfg, decode=lambda t: f"<{t}>", bos_id=0, lm=False), ids


def test_saved_graph_round_trip_carries_every_node_label(tmp_path):
    r, ids = _result()
    n = r.nodes
    save_graph(tmp_path / "adjacency.safetensors", r, prompt="seven ids")
    g = load_graph(tmp_path / "adjacency.safetensors")
    assert torch.equal(g.adjacency, r.att.adjacency) and torch.equal(g.influence, r.pruned.influence)
    assert torch.equal(g.bias.isnan(), r.att.bias.isnan()) and torch.equal(g.bias.nan_to_num(), r.att.bias.nan_to_num())
    assert torch.equal(g.node_mask, r.pruned.node_mask) and torch.equal(g.edge_mask, r.pruned.edge_mask)
    assert [g.kind(i) for i in range(g.size)] == [n.kind(i) for i in range(n.size)]
    lat = slice(0, n.n_lat)
    assert torch.equal(g.node_layer[lat], n.layer) and torch.equal(g.node_pos[lat], n.pos)
    assert torch.equal(g.node_index[lat], n.latent) and torch.equal(g.node_activation[lat], n.act.double())
    e = n.error_index(1, 3)
    assert (int(g.node_layer[e]), int(g.node_pos[e]), int(g.node_index[e])) == (1, 3, -1)
    tok = slice(n.token_index(0), n.token_index(0) + n.T)
    assert torch.equal(g.node_index[tok], ids) and torch.equal(g.node_pos[tok], torch.arange(n.T))
    logit = slice(n.size - n.n_logit, n.size)
    assert torch.equal(g.node_index[logit], n.logit_tokens) and bool((g.node_pos[logit] == n.T - 1).all())
    assert torch.allclose(g.node_activation[logit], n.logit_probs.double())
    assert g.meta["tokens"] == [f"<{t}>" for t in ids.tolist()] and g.meta["bos_mode"] == "circuit-tracer"
    assert g.meta["prompt"] == "seven ids" and g.meta["n_layers"] == 2


def test_viewer_json_lists_the_pruned_graph_under_the_viewers_ids(tmp_path):
    r, ids = _result()
    n = r.nodes
    save_graph(tmp_path / "g.safetensors", r)
    v = viewer_json(load_graph(tmp_path / "g.safetensors"), "demo")
    assert set(v) == {"metadata", "qParams", "nodes", "links"} and v["metadata"]["slug"] == "demo"
    by_id = {d["node_id"]: d for d in v["nodes"]}
    assert len(by_id) == len(v["nodes"]) and all(tuple(d) == VIEWER_NODE_FIELDS for d in v["nodes"])
    edges = r.pruned.edge_mask.nonzero().tolist()
    assert len(v["links"]) == len(edges) > 0
    for link, (t, s) in zip(v["links"], edges):
        assert link["source"] in by_id and link["target"] in by_id
        assert link["weight"] == pytest.approx(float(r.att.adjacency[t, s]))
    kinds = {d["feature_type"] for d in v["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    assert f"E_{int(ids[0])}_0" in by_id  # circuit-tracer's BOS token node is kept
    top = int(n.logit_tokens[0])
    assert by_id[f"3_{top}_{n.T - 1}"]["is_target_logit"]  # logit layer = n_layers + 1
    some = int(torch.nonzero(r.pruned.node_mask[: n.n_lat]).flatten()[0])
    l, p, i = int(n.layer[some]), int(n.pos[some]), int(n.latent[some])
    assert by_id[f"{l}_{i}_{p}"]["feature"] == (l + i) * (l + i + 1) // 2 + i


def test_load_graph_refuses_a_file_without_labels(tmp_path):
    from safetensors.torch import save_file

    save_file({"adjacency": torch.zeros(2, 2)}, str(tmp_path / "old.safetensors"))
    with pytest.raises(MechscopeError, match="not a saved graph with node labels"):
        load_graph(tmp_path / "old.safetensors")


@pytest.mark.parametrize("flag", ["--bos-constant", "--no-bos-constant"])
def test_the_old_bos_flags_are_refused_with_a_pointer(flag):
    from mechscope.cli import graph as cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--prompt", "x", "--transcoders", "t", flag])
    with pytest.raises(UsageError, match=rf"^{flag} is gone: pass --bos-mode constant"):
        cli.run(args)

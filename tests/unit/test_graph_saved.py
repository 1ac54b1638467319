"""A saved graph (mechscope.graph.saved): adjacency.safetensors carries every node's labels, is read back without
the model, and is written in the graph viewers' JSON (the schema's field names are checked against
circuit-tracer's own writer in tests/integration/test_graph_circuittracer.py). It stores the target rows, not the
dense [N, N] matrix (issue 25); files of version 1 (dense) still load, to the same graph; the report and the saved
file are made without ever building the dense matrix."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors import safe_open

from mechscope.atomic import save_safetensors
from mechscope.errors import MechscopeError, UsageError
from mechscope.graph import dense
from mechscope.graph.build import build_graph
from mechscope.graph.config import GraphConfig
from mechscope.graph.saved import LABELS, META_KEY, VIEWER_NODE_FIELDS, load_graph, node_labels, save_graph, viewer_json
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


def _save_version_1(path, r) -> None:
    """The format before issue 25: the dense adjacency and edge mask, version 1 (written as its save_graph did)."""
    n = r.nodes
    labels = node_labels(n)
    labels["node_index"][n.n_lat + n.n_err : n.n_lat + n.n_err + n.T] = r.rec.ids.long()
    A = torch.zeros(n.size, n.size, dtype=torch.float64)
    A[r.att.targets] = r.att.rows
    mask = torch.zeros(n.size, n.size, dtype=torch.uint8)
    mask[r.pruned.targets] = r.pruned.edge_rows.to(torch.uint8)
    header = {"version": 1, "tokens": list(r.tokens), "logit_tokens": list(r.logit_text), "n_layers": n.n_layers}
    tensors = {"adjacency": A, "bias": r.att.bias, "value": r.att.value, "influence": r.pruned.influence}
    tensors |= {"node_mask": r.pruned.node_mask.to(torch.uint8), "edge_mask": mask, **labels}
    save_safetensors(path, tensors, metadata={META_KEY: json.dumps(header)})


def test_rows_and_old_dense_files_load_to_the_same_graph(tmp_path):
    r, _ = _result()
    n = r.nodes
    save_graph(tmp_path / "rows.safetensors", r)
    _save_version_1(tmp_path / "dense.safetensors", r)
    new, old = load_graph(tmp_path / "rows.safetensors"), load_graph(tmp_path / "dense.safetensors")
    # the new file holds rows [n_t, N], not [N, N]
    with safe_open(str(tmp_path / "rows.safetensors"), framework="pt") as f:
        assert "adjacency" not in f.keys() and "edge_mask" not in f.keys()
        assert f.get_slice("rows").get_shape() == [n.n_lat + n.n_logit, n.size] and n.n_lat + n.n_logit < n.size
    assert new.meta["version"] == 2 and old.meta["version"] == 1
    assert torch.equal(new.targets, old.targets) and torch.equal(new.targets, r.att.targets)
    assert float((new.rows - old.rows).abs().max()) <= 1e-12
    assert float((new.adjacency - old.adjacency).abs().max()) <= 1e-12
    assert float((new.influence - old.influence).abs().max()) <= 1e-12
    assert torch.equal(new.edges, old.edges) and new.edges.shape[0] > 0
    assert torch.equal(new.edge_mask, old.edge_mask) and torch.equal(new.edge_mask, r.pruned.edge_mask)
    assert torch.equal(new.edge_weights, old.edge_weights)
    assert torch.equal(new.edge_weights, r.att.adjacency[new.edges[:, 0], new.edges[:, 1]])
    assert torch.equal(new.node_mask, old.node_mask)
    assert viewer_json(new, "x")["links"] == viewer_json(old, "x")["links"]


def test_a_version_1_file_with_edges_into_an_error_node_is_refused(tmp_path):
    r, _ = _result()
    _save_version_1(tmp_path / "dense.safetensors", r)
    with safe_open(str(tmp_path / "dense.safetensors"), framework="pt") as f:
        t, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    t["adjacency"][r.nodes.error_index(0, 1), 0] = 1.0
    save_safetensors(tmp_path / "bad.safetensors", t, metadata=meta)
    with pytest.raises(MechscopeError, match="edges into error or token nodes"):
        load_graph(tmp_path / "bad.safetensors")


def test_load_graph_refuses_an_unknown_version_by_name(tmp_path):
    r, _ = _result()
    save_graph(tmp_path / "g.safetensors", r)
    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as f:
        t, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[META_KEY])
    save_safetensors(tmp_path / "v3.safetensors", t, metadata={META_KEY: json.dumps({**meta, "version": 3})})
    with pytest.raises(MechscopeError, match=r"a saved graph of version 3; this mechscope reads versions 1, 2"):
        load_graph(tmp_path / "v3.safetensors")
    assert set(LABELS) <= set(t)


def test_the_report_and_the_saved_graph_never_build_the_dense_matrix(tmp_path, monkeypatch):
    from mechscope.graph.html import graph_html, graph_json

    def refuse(*a, **k):
        raise AssertionError("the dense [N, N] builder was called")

    r, _ = _result()
    monkeypatch.setattr(dense, "build", refuse)
    with pytest.raises(AssertionError, match="dense"):  # the dense views do go through it
        _ = r.att.adjacency
    html, data = graph_html(r), graph_json(r)
    save_graph(tmp_path / "g.safetensors", r)
    g = load_graph(tmp_path / "g.safetensors")
    v = viewer_json(g, "demo")
    monkeypatch.undo()
    A = r.att.adjacency
    assert len(data["edges"]) == len(v["links"]) == int(r.pruned.edge_mask.sum()) > 0
    for edge in data["edges"]:
        assert edge["weight"] == float(A[edge["target"], edge["source"]])
    assert "ag-svg-card-" in html and html.count("<line") == min(r.cfg.draw_edges, len(data["edges"]))
    # a card's value line (the top logit node's, always drawn): its row sums to Σ edges
    t = int(r.att.targets[-r.nodes.n_logit])
    assert f"= {float(A[t].sum()):.4g} + {float(r.att.bias[t]):.4g}" in html


def test_the_dense_view_is_refused_past_its_cap_naming_it():
    rows, targets = torch.ones(2, 1000, dtype=torch.float64), torch.tensor([3, 7])
    assert torch.equal(dense.build(rows, targets, 1000)[[3, 7]], rows)
    with pytest.raises(UsageError, match=r"`max_gb` 0.001: the dense \[N, N\] adjacency of 1,000 nodes would take"):
        dense.build(rows, targets, 1000, max_gb=0.001)
    edges = dense.pairs(torch.tensor([[False, True, True], [True, False, False]]), torch.tensor([2, 0]))
    assert edges.tolist() == [[0, 0], [2, 1], [2, 2]]  # sorted by target, rows given out of order

"""The one graph drawing (:mod:`mechscope.report.graph_svg`): cells, weights and cards, and both its users, the
attribution graph (:mod:`mechscope.graph.html`) and the circuit report (:mod:`mechscope.circuits.svg`)."""

from __future__ import annotations

import re

import pytest
import torch

from mechscope.report.graph_svg import GraphEdge, GraphNode, cards_html, graph_svg
from tests.helpers_report import assert_offline
from tests.unit.test_report_kit import EVIL


def test_graph_svg_cells_weights_and_cards():
    nodes = [
        GraphNode("a", 0, 0, 5, "#fff", "A"),
        GraphNode("b", 1, 2, 5, "#fff", "B", label=EVIL),
        GraphNode("c", 1, 2, 5, "#fff", "C", shape="square", rank=1.0),
    ]
    edges = [GraphEdge("a", "b", 2.0, "a→b"), GraphEdge("a", "c", -1.0, "a→c"), GraphEdge("b", "c", None, "b→c")]
    svg = graph_svg(nodes, edges, svg_id="g", label="test", col_labels=["p0", "p1"], row_labels={0: "L0"})
    assert "<script>" not in svg and svg.count("<line") == 3 and svg.count("<rect") == 1
    widths = [float(w) for w in re.findall(r"stroke-width='([\d.]+)'", svg)]
    assert widths == pytest.approx([3.6, 2.0, 2.0])  # 0.4 + 3.2·|w|/max|w|; the unweighted edge 2.0
    assert "stroke='#2b6cb0'" in svg and "stroke='#c53030'" in svg and "stroke='#999'" in svg
    # c (higher rank) sits in the middle of the shared cell, b beside it; both on row 2, above a (row 0).
    cy = {m[0]: float(m[1]) for m in re.findall(r"data-id='(\w)'><(?:circle|rect)[^>]*?(?:cy|y)='([\d.]+)'", svg)}
    assert cy["a"] - cy["b"] == pytest.approx(2 * 26) and cy["b"] == pytest.approx(cy["c"] + 5)  # rect y is the top
    assert "cx='252.0'" in svg and "x='235.0'" in svg  # b: 60 + 120 + 60 + one slot of 12; c: the centre 240 − 5
    assert "id='g-card-a'" in cards_html("g", {"a": "<p>card</p>"})


def test_the_circuit_report_draws_with_the_graph_drawing(tmp_path):
    from test_circuits_edges import data, model_with_dead_heads, true_edges
    from test_circuits_faithfulness import task_for

    from mechscope.circuits.discover import DiscoverConfig, discover
    from mechscope.circuits.report import write_circuit_report
    from mechscope.circuits.residual import zoo_graph

    model, (clean, corrupt) = model_with_dead_heads(), data()
    r = discover(model, task_for(model, clean, corrupt), DiscoverConfig(method="acdc", threshold=1e-7, budget=4))
    page = write_circuit_report(tmp_path / "c.html", r, {"method": "acdc"}).read_text()
    assert_offline(page)
    svg = page[page.index("<svg id='circuit-svg' class='mg'") :]
    svg = svg[: svg.index("</svg>")]
    assert svg.count("<line") == len(r["edges"]) == len(true_edges(zoo_graph(model)))
    names = {x for ed in r["edges"] for x in (ed["writer"], ed["reader"])}
    assert set(re.findall(r"data-id='([^']+)'", svg)) == {n.split(".")[0] for n in names}  # readers drawn at their node
    for ed in r["edges"]:  # every edge joins its writer to its reader's node, with its effect on hover
        assert f"data-s='{ed['writer']}'" in svg and f"{ed['writer']} → {ed['reader']}: {ed['effect']:+.4g}" in svg


def test_the_attribution_graph_draws_with_the_graph_drawing():
    from mechscope.graph.build import build_graph
    from mechscope.graph.config import GraphConfig
    from mechscope.graph.html import SVG_ID, drawn_edges, drawn_nodes, graph_html
    from mechscope.zoo.transformer import TransformerShape, ZooTransformer
    from tests.helpers_graph import random_transcoders

    torch.manual_seed(0)
    model = (
        ZooTransformer(
            TransformerShape(
                vocab=12,
                n_out=12,
                n_ctx=8,
                d_model=16,
                n_heads=2,
                d_head=8,
                n_layers=2,
                d_mlp=32,
                layer_norm=True,
                causal=True,
            )
        )
        .eval()
        .requires_grad_(False)
    )
    tcs = random_transcoders(["blocks.0.mlp", "blocks.1.mlp"], 16, skip=False)
    r = build_graph(model, torch.tensor([2, 7, 1, 8, 2]), tcs, GraphConfig(logit_position=4), lm=False)
    drawn = drawn_nodes(r)
    extra = {
        drawn[0]: {
            "logits": {"up": [["<up>", 1.0]], "down": [["dn", -1.0]]},
            "contexts": [{"value": 2.0, "before": "a ", "token": "<t>", "after": " b"}],
        }
    }
    html = graph_html(r, extra)
    assert_offline(html)
    assert f"<svg id='{SVG_ID}' class='mg'" in html
    assert html.count("<line") == len(drawn_edges(r, set(drawn))) > 0
    assert set(re.findall(r"<g class='gn' data-id='(\d+)'", html)) == {str(i) for i in drawn}
    assert all(f"id='{SVG_ID}-card-{i}'" in html for i in drawn)  # every drawn node has its card
    card = html[html.index(f"id='{SVG_ID}-card-{drawn[0]}'") :]
    card = card[: card.index(f"id='{SVG_ID}-card-", 10)]
    assert "<mark>&lt;t&gt;</mark>" in card and "&lt;up&gt;" in card and "influence on the logits" in card
    n = r.nodes
    assert sum(f">L{l}</text>" in html for l in range(n.n_layers)) == n.n_layers and ">logits</text>" in html

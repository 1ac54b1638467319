"""The circuit drawn for the HTML report with :mod:`mechscope.report.graph_svg`: components in columns by forward
order (a column's components stacked and centred), edges drawn with width ∝ |effect| (blue: the edge's patch
lowers the metric, red: raises it; grey where a node method gives edges no effect of their own), node size ∝ the
node's |effect| (or the sum of |effect| of its edges). Hovering shows a node's or edge's name and score; a click
on a node dims every other edge.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mechscope.report.graph_svg import GraphEdge, GraphNode, GraphStyle, graph_svg

STYLE = GraphStyle(col_w=110, row_h=64, positive="#c03020", negative="#2060c0", width=(0.8, 7.0), unweighted=2.0)
"""Effects > 0 (the patch raises the metric) red, < 0 blue."""


def circuit_svg(result: dict[str, Any]) -> str:
    """An inline ``<svg>`` of ``result['edges']`` (a discover() result with a ``graph``)."""
    graph = result.get("graph")
    if not graph or not result.get("edges"):
        return "<p class='note'>No graph to draw (empty circuit or a model without a residual graph).</p>"
    order = {w["name"]: w["order"] for w in graph["writers"]}
    node_of = {r["name"]: r["node"] for r in graph["readers"]}
    order.update({r["node"]: r["order"] for r in graph["readers"]})
    weight: dict[str, float] = defaultdict(float)
    for n in result.get("nodes", []):
        if n.get("effect") is not None:
            weight[n["name"]] += abs(n["effect"])
    links = []
    for ed in result["edges"]:
        a, b = ed["writer"], node_of[ed["reader"]]
        eff = ed.get("effect")
        links.append((a, b, ed["reader"], eff))
        if eff is not None and not any(n.get("effect") is not None for n in result.get("nodes", [])):
            weight[a] += abs(eff)
            weight[b] += abs(eff)
    names = sorted({x for a, b, _, _ in links for x in (a, b)}, key=lambda n: (order[n], n))
    cols = {o: c for c, o in enumerate(sorted({order[n] for n in names}))}
    by_col = defaultdict(list)
    for n in names:
        by_col[order[n]].append(n)
    tallest = max(len(v) for v in by_col.values())
    nmax = max(list(weight.values()) + [1e-12])
    nodes = [
        GraphNode(
            id=n,
            col=cols[o],
            row=(tallest - len(members)) / 2 + (len(members) - 1 - j),
            radius=8 + 14 * weight.get(n, 0.0) / nmax,
            fill="#f4f0e0",
            title=f"{n}: {weight.get(n, 0.0):.4g}",
            label=n,
        )
        for o, members in by_col.items()
        for j, n in enumerate(members)
    ]
    edges = [
        GraphEdge(a, b, eff, f"{a} → {reader}" + ("" if eff is None else f": {eff:+.4g}"))
        for a, b, reader, eff in links
    ]
    return graph_svg(nodes, edges, svg_id="circuit-svg", label="circuit", style=STYLE)

"""The pruned attribution graph drawn for the HTML report, with :mod:`mechscope.report.graph_svg`.

Layout: one column per prompt position, one row per layer (tokens at the bottom, logits at the top); the
latent nodes (circles) and error nodes (squares) of one (layer, position) share its cell, most influential
in the middle. Edge width ∝ |direct effect|, blue where positive, red where negative. Clicking a node dims
every edge but its own and shows the node's card (:mod:`mechscope.report.card`) below the drawing: its
activation, its influence on the logits, its strongest inputs and outputs in the graph, its top output-logit
effects and (with a store) its top-activating contexts.
"""

from __future__ import annotations

from typing import Any

import torch

from mechscope.graph.build import GraphResult
from mechscope.report.card import CardContext, LatentCard, latent_card
from mechscope.report.graph_svg import GraphEdge, GraphNode, GraphStyle, cards_html, graph_svg
from mechscope.report.markup import e, table

SVG_ID = "ag-svg"
_FILL = {"latent": "#f6ad55", "token": "#68d391", "logit": "#9f7aea", "error": "#a0aec0"}


def _label(r: GraphResult, i: int) -> str:
    n = r.nodes
    kind = n.kind(i)
    if kind == "latent":
        return f"L{int(n.layer[i])}/{int(n.latent[i])} @{int(n.pos[i])}"
    if kind == "error":
        j = i - n.n_lat
        return f"error L{j // n.T} @{j % n.T}"
    if kind == "token":
        p = i - n.n_lat - n.n_err
        return f"token {r.tokens[p]!r} @{p}"
    return f"logit {r.logit_text[i - n.size + n.n_logit]!r}"


def _cell(r: GraphResult, i: int) -> tuple[int, int]:
    """(row, column): row 0 = tokens, 1..L = layers, L + 1 = logits."""
    n = r.nodes
    kind = n.kind(i)
    if kind == "latent":
        return int(n.layer[i]) + 1, int(n.pos[i])
    if kind == "error":
        j = i - n.n_lat
        return j // n.T + 1, j % n.T
    if kind == "token":
        return 0, i - n.n_lat - n.n_err
    return n.n_layers + 1, n.logit_pos % n.T


def drawn_nodes(r: GraphResult) -> list[int]:
    """The kept nodes to draw: tokens and logits, then the most influential others up to ``draw_nodes``."""
    n, keep, infl = r.nodes, r.pruned.node_mask, r.pruned.influence
    fixed = [i for i in range(n.n_lat + n.n_err, n.size)]
    others = [i for i in torch.nonzero(keep[: n.n_lat + n.n_err]).flatten().tolist()]
    others.sort(key=lambda i: -float(infl[i]))
    return others[: r.cfg.draw_nodes] + fixed


def drawn_edges(r: GraphResult, drawn: set[int]) -> list[tuple[int, int]]:
    """(target, source) of the kept edges between drawn nodes with the highest edge influence
    |A[t, s]| / Σ_s' |A[t, s']| · (influence_t + w_t), at most ``draw_edges`` of them. Read from the target rows and
    the kept edges' list: no [N, N] matrix."""
    from mechscope.graph.prune import logit_weights

    att = r.att
    pairs = [(t, s) for t, s in r.pruned.edges.tolist() if t in drawn and s in drawn]
    if len(pairs) <= r.cfg.draw_edges:
        return pairs
    edges = torch.tensor(pairs)
    row_sum = att.rows.abs().sum(1).clamp_min(1e-300)[att.where[edges[:, 0]]]
    weight = r.pruned.influence + logit_weights(r.nodes)
    score = att.at(edges).abs() / row_sum * weight[edges[:, 0]]
    keep = score.topk(r.cfg.draw_edges).indices
    return [pairs[int(i)] for i in keep]


def _card(r: GraphResult, i: int, extra: dict[int, dict[str, Any]]) -> str:
    n, att, infl = r.nodes, r.att, r.pruned.influence
    inputs = att.row(i)  # [N] A[i, :]
    rows = [("influence on the logits", f"{float(infl[i]):.4g}")]
    if n.kind(i) == "latent":
        rows.insert(0, ("activation", f"{float(n.act[i]):.4g}"))
    if not torch.isnan(att.value[i]):
        rows.append(
            (
                "value = Σ edges + constant",
                f"{float(att.value[i]):.4g} = {float(inputs.sum()):.4g} + {float(att.bias[i]):.4g}",
            )
        )

    def strongest(title: str, vec: torch.Tensor, node: torch.Tensor) -> str:
        """The largest |vec| entries, entry j labelled by node ``node[j]``."""
        top = vec.abs().topk(min(6, vec.numel()))
        pairs = [
            (_label(r, int(node[j])), f"{float(vec[j]):+.4g}") for v, j in zip(top.values, top.indices) if float(v) > 0
        ]
        return f"<b>{e(title)}</b>" + table(None, pairs, classes=("", "num")) if pairs else ""

    info = extra.get(i, {})
    logits = info.get("logits")
    contexts = None
    if info.get("contexts"):
        contexts = tuple(CardContext(c["value"], c["before"], c["token"], c["after"]) for c in info["contexts"])
    return latent_card(
        LatentCard(
            anchor=f"ag-node-{i}",
            title=_label(r, i),
            css_class="latent agcard",
            extra=(
                table(None, rows, row_headers=True)
                + strongest("strongest inputs (direct effects)", inputs, torch.arange(n.size))
                + strongest("strongest outputs", att.rows[:, i], att.targets)  # A[:, i]: only targets have inputs
            ),
            logits=(tuple(map(tuple, logits["up"])), tuple(map(tuple, logits["down"]))) if logits else None,
            contexts=contexts,
            contexts_title="top-activating contexts (store)",
            contexts_note=(
                "no store given: top-activating contexts not computed (pass --store)"
                if n.kind(i) == "latent" and not info.get("contexts")
                else ""
            ),
        )
    )


def graph_html(
    r: GraphResult, extra: dict[int, dict[str, Any]] | None = None, col_w: int = 120, row_h: int = 26
) -> str:
    """The drawing, the node cards and the legend. ``extra``: node → {"logits": …, "contexts": […]}."""
    n, infl = r.nodes, r.pruned.influence
    extra = extra or {}
    drawn = drawn_nodes(r)
    imax = max((float(infl[i]) for i in drawn), default=1.0) or 1.0
    nodes = []
    for i in drawn:
        kind = n.kind(i)
        row, col = _cell(r, i)
        j = i - (n.size - n.n_logit)  # the logit's rank (most probable first)
        nodes.append(
            GraphNode(
                id=str(i),
                col=col,
                row=row,
                rank=float(infl[i]),
                fill=_FILL[kind],
                shape="square" if kind == "error" else "circle",
                radius=3 + 5 * (float(infl[i]) / imax) ** 0.5 if kind in ("latent", "error") else 6.0,
                title=f"{_label(r, i)} · influence {float(infl[i]):.3g}",
                label=r.logit_text[j][:8] if kind == "logit" and j < 4 else "",
            )
        )
    edges = drawn_edges(r, set(drawn))
    weights = r.att.at(torch.tensor(edges, dtype=torch.long).reshape(-1, 2)).tolist()
    lines = [
        GraphEdge(str(s), str(t), w, f"{_label(r, s)} → {_label(r, t)}: {w:+.4g}") for (t, s), w in zip(edges, weights)
    ]
    rows: dict[float, str] = {**{l + 1: f"L{l}" for l in range(n.n_layers)}, n.n_layers + 1: "logits"}
    svg = graph_svg(
        nodes,
        lines,
        svg_id=SVG_ID,
        label="attribution graph",
        style=GraphStyle(col_w=col_w, row_h=row_h),
        col_labels=[t[:14] for t in r.tokens[: n.T]],
        row_labels=rows,
    )
    legend = (
        "<p class='note'>Circles: orange = transcoder latents, green = tokens (embeddings), purple = logits (most probable "
        f"first; hover for the token); grey squares = error nodes. Drawn: {len(drawn)} of {int(r.pruned.node_mask.sum())} kept "
        f"nodes, {len(edges)} of {int(r.pruned.edges.shape[0])} kept edges (highest edge influence). Click a node for its card; click the "
        "background to clear. Hover an edge for its direct effect.</p>"
    )
    return legend + svg + cards_html(SVG_ID, {str(i): _card(r, i, extra) for i in drawn})


def graph_json(r: GraphResult) -> dict[str, Any]:
    """The pruned graph as data: kept nodes (with labels, influence) and kept edges (source, target, weight)."""
    n, keep = r.nodes, r.pruned.node_mask
    nodes = []
    for i in torch.nonzero(keep).flatten().tolist():
        d = {"id": i, "kind": n.kind(i), "label": _label(r, i), "influence": float(r.pruned.influence[i])}
        if d["kind"] == "latent":
            d.update(layer=int(n.layer[i]), position=int(n.pos[i]), latent=int(n.latent[i]), activation=float(n.act[i]))
        nodes.append(d)
    kept = r.pruned.edges
    edges = [{"source": s, "target": t, "weight": w} for (t, s), w in zip(kept.tolist(), r.att.at(kept).tolist())]
    return {"summary": r.summary(), "nodes": nodes, "edges": edges}

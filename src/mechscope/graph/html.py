"""The pruned attribution graph drawn for the HTML report: an inline SVG with a little JavaScript.

Layout: one column per prompt position, one row per layer (tokens at the bottom, logits at the top); the
latent nodes (circles) and error nodes (squares) of one (layer, position) share its cell, most influential
in the middle. Edge width ∝ |direct effect|, blue where positive, red where negative. Clicking a node dims
every edge but its own and shows the node's card below the drawing: for a latent, its activation, its
influence on the logits, its strongest inputs and outputs in the graph, its top output-logit effects and
(with a store) its top-activating contexts.
"""

from __future__ import annotations

import html
from typing import Any

import torch

from mechscope.graph.build import GraphResult

e = html.escape

STYLE = """<style>
.ag{border:1px solid #ddd;background:#fff;max-width:100%;height:auto}
.ag line{stroke-opacity:.55}.ag.focus line{stroke-opacity:.05}.ag.focus line.on{stroke-opacity:.95}
.ag .gn{cursor:pointer}.ag .gn:hover circle,.ag .gn:hover rect{stroke:#000;stroke-width:2}
.ag .gn.sel circle,.ag .gn.sel rect{stroke:#d69e2e;stroke-width:3}
.ag text{font:10px sans-serif;fill:#333}.agcard{display:none;border:1px solid #ccc;padding:.5em 1em;margin-top:.5em}
.agcard.show{display:block}.agcard table{font-size:90%}.agcard mark{background:#fde68a}
</style>"""

SCRIPT = """<script>(function(){
const svg=document.getElementById('ag-svg');if(!svg)return;
svg.addEventListener('click',function(ev){const g=ev.target.closest('.gn');
 svg.querySelectorAll('.gn.sel').forEach(x=>x.classList.remove('sel'));
 document.querySelectorAll('.agcard.show').forEach(x=>x.classList.remove('show'));
 svg.querySelectorAll('line.on').forEach(x=>x.classList.remove('on'));
 if(!g){svg.classList.remove('focus');return;}
 const id=g.dataset.id;g.classList.add('sel');svg.classList.add('focus');
 svg.querySelectorAll('line[data-s="'+id+'"],line[data-t="'+id+'"]').forEach(x=>x.classList.add('on'));
 const c=document.getElementById('agcard-'+id);if(c){c.classList.add('show');}
});})();</script>"""


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
    |A[t, s]| / Σ_s' |A[t, s']| · (influence_t + w_t), at most ``draw_edges`` of them."""
    from mechscope.graph.prune import logit_weights

    A = r.att.adjacency
    pairs = [(t, s) for t, s in torch.nonzero(r.pruned.edge_mask).tolist() if t in drawn and s in drawn]
    if len(pairs) <= r.cfg.draw_edges:
        return pairs
    t_idx = torch.tensor([t for t, _ in pairs])
    s_idx = torch.tensor([s for _, s in pairs])
    row = A.abs().sum(1).clamp_min(1e-300)
    weight = r.pruned.influence + logit_weights(r.nodes)
    score = A[t_idx, s_idx].abs() / row[t_idx] * weight[t_idx]
    keep = score.topk(r.cfg.draw_edges).indices
    return [pairs[int(i)] for i in keep]


def _card(r: GraphResult, i: int, extra: dict[int, dict[str, Any]]) -> str:
    n, A, infl = r.nodes, r.att.adjacency, r.pruned.influence
    rows = [("influence on the logits", f"{float(infl[i]):.4g}")]
    if n.kind(i) == "latent":
        rows.insert(0, ("activation", f"{float(n.act[i]):.4g}"))
    if not torch.isnan(r.att.value[i]):
        rows.append(("value = Σ edges + constant", f"{float(r.att.value[i]):.4g} = {float(A[i].sum()):.4g} + {float(r.att.bias[i]):.4g}"))
    def strongest(vec: torch.Tensor) -> str:
        top = vec.abs().topk(min(6, vec.numel()))
        return "".join(f"<tr><td>{e(_label(r, int(j)))}</td><td class='num'>{float(vec[j]):+.4g}</td></tr>"
                       for v, j in zip(top.values, top.indices) if float(v) > 0)
    ins, outs = strongest(A[i]), strongest(A[:, i])
    body = "".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in rows)
    parts = [f"<h3>{e(_label(r, i))}</h3><table>{body}</table>"]
    if ins:
        parts.append(f"<b>strongest inputs (direct effects)</b><table>{ins}</table>")
    if outs:
        parts.append(f"<b>strongest outputs</b><table>{outs}</table>")
    info = extra.get(i, {})
    if "logits" in info:
        up = " ".join(f"<code title='{v:+.3f}'>{e(t)}</code>" for t, v in info["logits"]["up"])
        down = " ".join(f"<code title='{v:+.3f}'>{e(t)}</code>" for t, v in info["logits"]["down"])
        parts.append(f"<div><b>raises</b> {up}</div><div><b>lowers</b> {down}</div>")
    if info.get("contexts"):
        lines = "".join(f"<div><span class='num'>{c['value']:.3g}</span> {e(c['before'])}<mark>{e(c['token'])}</mark>{e(c['after'])}</div>"
                        for c in info["contexts"])
        parts.append(f"<b>top-activating contexts (store)</b>{lines}")
    elif n.kind(i) == "latent":
        parts.append("<div class='note'>no store given: top-activating contexts not computed (pass --store)</div>")
    return f"<div class='agcard' id='agcard-{i}'>{''.join(parts)}</div>"


def graph_html(r: GraphResult, extra: dict[int, dict[str, Any]] | None = None, col_w: int = 120, row_h: int = 26) -> str:
    """The SVG, the node cards and the script. ``extra``: node → {"logits": …, "contexts": […]}."""
    n, A, keep_e = r.nodes, r.att.adjacency, r.pruned.edge_mask
    extra = extra or {}
    drawn = drawn_nodes(r)
    ds = set(drawn)
    by_cell: dict[tuple[int, int], list[int]] = {}
    for i in drawn:
        by_cell.setdefault(_cell(r, i), []).append(i)
    W, H = 60 + col_w * n.T, 40 + row_h * (n.n_layers + 2)
    pos: dict[int, tuple[float, float]] = {}
    infl = r.pruned.influence
    for (row, col), members in by_cell.items():
        members.sort(key=lambda i: -float(infl[i]))
        order = sorted(range(len(members)), key=lambda j: (j % 2, j))  # most influential in the middle
        step = min(12.0, (col_w - 12) / max(len(members), 1))
        for rank, j in enumerate(order):
            off = (rank - (len(members) - 1) / 2) * step
            pos[members[j]] = (60 + col * col_w + col_w / 2 + off, H - 20 - row * row_h)
    edges = drawn_edges(r, ds)
    wmax = max((abs(float(A[t, s])) for t, s in edges), default=1.0) or 1.0
    lines = "".join(
        f"<line x1='{pos[s][0]:.1f}' y1='{pos[s][1]:.1f}' x2='{pos[t][0]:.1f}' y2='{pos[t][1]:.1f}' data-s='{s}' data-t='{t}' "
        f"stroke='{'#2b6cb0' if float(A[t, s]) > 0 else '#c53030'}' stroke-width='{0.4 + 3.2 * abs(float(A[t, s])) / wmax:.2f}'>"
        f"<title>{e(_label(r, s))} → {e(_label(r, t))}: {float(A[t, s]):+.4g}</title></line>" for t, s in edges)
    imax = max((float(infl[i]) for i in drawn), default=1.0) or 1.0
    shapes = []
    for i in drawn:
        x, y = pos[i]
        kind = n.kind(i)
        rad = 3 + 5 * (float(infl[i]) / imax) ** 0.5
        title = f"<title>{e(_label(r, i))} · influence {float(infl[i]):.3g}</title>"
        if kind == "error":
            shape = f"<rect x='{x - rad:.1f}' y='{y - rad:.1f}' width='{2 * rad:.1f}' height='{2 * rad:.1f}' fill='#a0aec0' stroke='#4a5568'/>"
        else:
            fill = {"latent": "#f6ad55", "token": "#68d391", "logit": "#9f7aea"}[kind]
            shape = f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{rad if kind == 'latent' else 6:.1f}' fill='{fill}' stroke='#4a5568'/>"
        shapes.append(f"<g class='gn' data-id='{i}'>{shape}{title}</g>")
    labels = "".join(f"<text x='{60 + p * col_w + col_w / 2:.0f}' y='{H - 4}' text-anchor='middle'>{e(r.tokens[p][:14])}</text>"
                     for p in range(n.T))
    labels += "".join(f"<text x='4' y='{H - 20 - (l + 1) * row_h + 3}'>L{l}</text>" for l in range(n.n_layers))
    labels += f"<text x='4' y='{H - 20 - (n.n_layers + 1) * row_h + 3}'>logits</text>"
    labels += "".join(f"<text x='{pos[i][0]:.0f}' y='{pos[i][1] - 9 - 9 * (j % 2):.0f}' text-anchor='middle'>{e(r.logit_text[j][:8])}</text>"
                      for j, i in enumerate(range(n.size - n.n_logit, n.size)) if i in pos and j < 4)
    svg = (f"<svg id='ag-svg' class='ag' viewBox='0 0 {W} {H}' width='{W}' height='{H}' role='img' "
           f"aria-label='attribution graph'>{lines}{''.join(shapes)}{labels}</svg>")
    cards = "".join(_card(r, i, extra) for i in drawn)
    legend = ("<p class='note'>Circles: orange = transcoder latents, green = tokens (embeddings), purple = logits (most probable "
              f"first; hover for the token); grey squares = error nodes. Drawn: {len(drawn)} of {int(r.pruned.node_mask.sum())} kept "
              f"nodes, {len(edges)} of {int(keep_e.sum())} kept edges (highest edge influence). Click a node for its card; click the "
              "background to clear. Hover an edge for its direct effect.</p>")
    return STYLE + legend + svg + cards + SCRIPT


def graph_json(r: GraphResult) -> dict[str, Any]:
    """The pruned graph as data: kept nodes (with labels, influence) and kept edges (source, target, weight)."""
    n, keep = r.nodes, r.pruned.node_mask
    nodes = []
    for i in torch.nonzero(keep).flatten().tolist():
        d = {"id": i, "kind": n.kind(i), "label": _label(r, i), "influence": float(r.pruned.influence[i])}
        if d["kind"] == "latent":
            d.update(layer=int(n.layer[i]), position=int(n.pos[i]), latent=int(n.latent[i]), activation=float(n.act[i]))
        nodes.append(d)
    edges = [{"source": int(s), "target": int(t), "weight": float(r.att.adjacency[t, s])}
             for t, s in torch.nonzero(r.pruned.edge_mask).tolist()]
    return {"summary": r.summary(), "nodes": nodes, "edges": edges}


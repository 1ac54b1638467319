"""The one graph drawing: nodes in (column, row) cells, edges drawn by weight, as an inline SVG.

Layout: column c spans x ∈ [60 + c·col_w, 60 + (c + 1)·col_w]; row r sits at y = H − bottom − r·row_h (row 0 at
the bottom; rows may be fractional, to centre a short column), with margins of the largest radius plus room for
the column labels (bottom) and two staggered node labels (top). Nodes sharing a cell are spread across it, the
highest ``rank`` in the middle and the others alternately right and left of it. Edge width = lo + span·|w| / max|w|
over the drawn edges, coloured by the sign of w; an edge without a weight is grey, of width ``unweighted``.
Hover: a node's or edge's ``title``. With the report's ``graph.js``, a click on a node dims every other edge and
shows the element with id ``<svg_id>-card-<node id>`` (see :func:`cards_html`).

Used by the attribution graph (columns: prompt positions, rows: layers) and the circuit drawing (columns:
forward order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mechscope.report.markup import e


@dataclass(frozen=True)
class GraphNode:
    """One node of a drawing."""

    id: str
    """Unique within the drawing; edges name their ends by it."""
    col: int
    row: float
    radius: float
    fill: str
    title: str
    """Hover text."""
    shape: Literal["circle", "square"] = "circle"
    label: str = ""
    """Text drawn above the node (labels in one cell are staggered in two heights)."""
    rank: float = 0.0
    """Within a cell, higher ranks sit nearer the middle."""


@dataclass(frozen=True)
class GraphEdge:
    """One edge: ``source`` → ``target`` (node ids) with a signed weight (None: drawn grey, no weight)."""

    source: str
    target: str
    weight: float | None
    title: str


@dataclass(frozen=True)
class GraphStyle:
    """How weights and cells become pixels and colours."""

    col_w: int = 120
    row_h: int = 26
    positive: str = "#2b6cb0"
    """Colour of an edge with weight > 0."""
    negative: str = "#c53030"
    """Colour of an edge with weight ≤ 0."""
    width: tuple[float, float] = (0.4, 3.2)
    """(lo, span): edge width = lo + span·|w| / max|w|."""
    unweighted: float = 2.0
    """Width of an edge without a weight."""


def _slots(n: int) -> list[int]:
    """Cell slots for members sorted by descending rank: 0, +1, −1, +2, −2, … (0 is the middle)."""
    return [(j + 1) // 2 * (1 if j % 2 else -1) for j in range(n)]


def _layout(nodes: Sequence[GraphNode], style: GraphStyle, y0: float) -> dict[str, tuple[float, float]]:
    """Node id → (x, y); row 0 at y = y0."""
    by_cell: dict[tuple[int, float], list[GraphNode]] = {}
    for nd in nodes:
        by_cell.setdefault((nd.col, nd.row), []).append(nd)
    pos = {}
    for (col, row), members in by_cell.items():
        members.sort(key=lambda nd: -nd.rank)
        step = min(12.0, (style.col_w - 12) / len(members))
        for nd, slot in zip(members, _slots(len(members))):
            pos[nd.id] = (60 + col * style.col_w + style.col_w / 2 + slot * step, y0 - row * style.row_h)
    return pos


def graph_svg(
    nodes: Sequence[GraphNode],
    edges: Sequence[GraphEdge],
    *,
    svg_id: str,
    label: str,
    style: GraphStyle = GraphStyle(),
    col_labels: Sequence[str] = (),
    row_labels: Mapping[float, str] | None = None,
) -> str:
    """An inline ``<svg class='mg' id=svg_id>`` of ``nodes`` and the ``edges`` between them (``label``: its
    accessible name). ``col_labels[c]`` is written under column c, ``row_labels[r]`` left of row r."""
    if not nodes:
        raise ValueError("graph_svg: nodes is empty; draw nothing rather than an empty graph")
    n_cols = max(max(nd.col for nd in nodes) + 1, len(col_labels))
    n_rows = math.ceil(max(nd.row for nd in nodes)) + 1
    pad = max(nd.radius for nd in nodes)
    bottom, top = pad + 16, pad + 24
    W, H = 60 + style.col_w * n_cols, top + style.row_h * (n_rows - 1) + bottom
    pos = _layout(nodes, style, H - bottom)
    wmax = max((abs(ed.weight) for ed in edges if ed.weight is not None), default=0.0) or 1.0
    lines = []
    for ed in edges:
        (x1, y1), (x2, y2) = pos[ed.source], pos[ed.target]
        if ed.weight is None:
            colour, width = "#999", style.unweighted
        else:
            colour = style.positive if ed.weight > 0 else style.negative
            width = style.width[0] + style.width[1] * abs(ed.weight) / wmax
        lines.append(
            f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' data-s='{e(ed.source)}' "
            f"data-t='{e(ed.target)}' stroke='{colour}' stroke-width='{width:.2f}'><title>{e(ed.title)}</title></line>"
        )
    shapes, labels = [], []
    stagger: dict[tuple[int, float], int] = {}
    for nd in nodes:
        x, y, r = *pos[nd.id], nd.radius
        if nd.shape == "square":
            shape = f"<rect x='{x - r:.1f}' y='{y - r:.1f}' width='{2 * r:.1f}' height='{2 * r:.1f}' fill='{nd.fill}' stroke='#4a5568'/>"
        else:
            shape = f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}' fill='{nd.fill}' stroke='#4a5568'/>"
        shapes.append(f"<g class='gn' data-id='{e(nd.id)}'>{shape}<title>{e(nd.title)}</title></g>")
        if nd.label:
            k = stagger.get((nd.col, nd.row), 0)
            stagger[(nd.col, nd.row)] = k + 1
            labels.append(
                f"<text x='{x:.0f}' y='{y - r - 3 - 9 * (k % 2):.0f}' text-anchor='middle'>{e(nd.label)}</text>"
            )
    labels += [
        f"<text x='{60 + c * style.col_w + style.col_w / 2:.0f}' y='{H - 4}' text-anchor='middle'>{e(t)}</text>"
        for c, t in enumerate(col_labels)
    ]
    labels += [
        f"<text x='4' y='{H - bottom - r * style.row_h + 3:.0f}'>{e(t)}</text>" for r, t in (row_labels or {}).items()
    ]
    return (
        f"<svg id='{e(svg_id)}' class='mg' viewBox='0 0 {W} {H}' width='{W}' height='{H}' role='img' "
        f"aria-label='{e(label)}'>{''.join(lines)}{''.join(shapes)}{''.join(labels)}</svg>"
    )


def cards_html(svg_id: str, cards: Mapping[str, str]) -> str:
    """The cards a click on a node shows: node id → card markup, each wrapped in a hidden ``<div>`` with the
    id the drawing's script looks for."""
    return (
        "<div class='gcards'>"
        + "".join(f"<div id='{e(svg_id)}-card-{e(i)}'>{c}</div>" for i, c in cards.items())
        + "</div>"
    )

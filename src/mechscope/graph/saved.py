"""A graph on disk: ``adjacency.safetensors`` carries every node's labels, so it is read without re-running the
model (:func:`load_graph`), and written in the JSON that circuit-tracer's and Neuronpedia's graph viewers read
(:func:`viewer_json`; issue 26).

Tensors (N nodes in the order of :mod:`mechscope.graph.attribute`: latents, errors, tokens, logits; n_t targets, the
nodes with inputs: latents and logits; E kept edges), version 2:

    rows [n_t, N] float64      A[t, s] for the targets t (rows of the dense matrix; the others, errors' and tokens',
                               are zero), so the file grows as n_t·N, linearly in the prompt with ``max_latents`` fixed
    targets [n_t] int64        the node number of each row (ascending)
    edges [E, 2] int64         (target, source) of each edge kept by pruning, sorted by target then source
    bias, value [N] float64    each target's constant c_t and replay value (NaN for non-targets)
    influence [N] float64      influence on the logits (unpruned graph)
    node_mask [N] uint8        kept by pruning
    node_kind [N] uint8        0 latent, 1 error, 2 token, 3 logit (:data:`KINDS`)
    node_layer [N] int64       layer of a latent or error node; −1 for a token, L (the number of layers) for a logit
    node_pos [N] int64         position (a logit node: the logit position, counted from 0)
    node_index [N] int64       a latent's index in its transcoder; a token's or logit's token id; −1 for an error
    node_activation [N] f64    a latent's activation a; a logit node's probability; NaN for errors and tokens

Version 1 (still read) held the dense ``adjacency`` [N, N] float64 and ``edge_mask`` [N, N] uint8 instead of
``rows``, ``targets`` and ``edges``. In the header's metadata, under ``mechscope_graph``, a JSON object: ``version``,
``tokens`` (the prompt's tokens as text), ``logit_tokens`` (the logit nodes' tokens as text), ``n_layers``,
``bos_mode`` (what BOS was: ``Nodes.const_pos0``/``bos_token_node`` as constant | circuit-tracer | position),
``node_threshold``, ``edge_threshold`` and whatever the writer adds (the CLI: model, transcoders, prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mechscope.atomic import save_safetensors
from mechscope.errors import MechscopeError
from mechscope.graph import dense

KINDS = ("latent", "error", "token", "logit")
"""node_kind code → kind."""
META_KEY = "mechscope_graph"
VERSION = 2
READS = (1, 2)
"""The format versions :func:`load_graph` reads."""
LABELS = ("node_kind", "node_layer", "node_pos", "node_index", "node_activation")
VIEWER_NODE_FIELDS = (
    "node_id",
    "feature",
    "layer",
    "ctx_idx",
    "feature_type",
    "token_prob",
    "is_target_logit",
    "run_idx",
    "reverse_ctx_idx",
    "jsNodeId",
    "clerp",
    "influence",
    "activation",
)
"""A viewer node's fields, in the order circuit-tracer 0.5.0 writes them."""


@dataclass(frozen=True, eq=False)
class SavedGraph:
    """One graph as :func:`load_graph` reads it (tensors as described in the module docstring; masks as bool)."""

    rows: Tensor
    targets: Tensor
    edges: Tensor
    bias: Tensor
    value: Tensor
    influence: Tensor
    node_mask: Tensor
    node_kind: Tensor
    node_layer: Tensor
    node_pos: Tensor
    node_index: Tensor
    node_activation: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    """The header's JSON object (tokens, logit_tokens, n_layers, bos_mode, thresholds, …)."""

    def kind(self, node: int) -> str:
        return KINDS[int(self.node_kind[node])]

    @property
    def size(self) -> int:
        return int(self.node_kind.numel())

    @cached_property
    def edge_weights(self) -> Tensor:
        """[E] A[t, s] of each kept edge (t, s) of :attr:`edges`."""
        return dense.entries(self.rows, self.targets, self.size, self.edges)

    @cached_property
    def adjacency(self) -> Tensor:
        """[N, N] float64, the dense matrix, built on first use under the cap of :func:`mechscope.graph.dense.build`."""
        return dense.build(self.rows, self.targets, self.size)

    @cached_property
    def edge_mask(self) -> Tensor:
        """[N, N] bool, the kept edges, built on first use under the cap of :func:`mechscope.graph.dense.build`."""
        mask = torch.zeros(self.targets.numel(), self.size, dtype=torch.bool)
        mask[dense.row_index(self.targets, self.size)[self.edges[:, 0]], self.edges[:, 1]] = True
        return dense.build(mask, self.targets, self.size, "edge mask")


def node_labels(nodes: Any) -> dict[str, Tensor]:
    """The label tensors of a :class:`~mechscope.graph.attribute.Nodes` (module docstring)."""
    n = nodes
    lat, err, tok, lg = n.n_lat, n.n_err, n.T, n.n_logit
    L = n.n_layers
    err_layer = torch.arange(L).repeat_interleave(n.T)
    err_pos = torch.arange(n.T).repeat(L)
    logit_pos = n.logit_pos % n.T
    kind = torch.cat([torch.full((lat,), 0), torch.full((err,), 1), torch.full((tok,), 2), torch.full((lg,), 3)])
    nan = float("nan")
    return {
        "node_kind": kind.to(torch.uint8),
        "node_layer": torch.cat([n.layer.long(), err_layer, torch.full((tok,), -1), torch.full((lg,), L)]),
        "node_pos": torch.cat([n.pos.long(), err_pos, torch.arange(tok), torch.full((lg,), logit_pos)]),
        "node_index": torch.cat(
            [n.latent.long(), torch.full((err,), -1), torch.zeros(tok, dtype=torch.long), n.logit_tokens.long()]
        ),
        "node_activation": torch.cat(
            [n.act.double(), torch.full((err + tok,), nan, dtype=torch.float64), n.logit_probs.double()]
        ),
    }


def bos_mode(nodes: Any) -> str:
    """What BOS was in the graph of ``nodes``: constant | circuit-tracer | position."""
    return ("circuit-tracer" if nodes.bos_token_node else "constant") if nodes.const_pos0 else "position"


def save_graph(path: str | Path, result: Any, **meta: Any) -> None:
    """Write a :class:`~mechscope.graph.build.GraphResult` to ``path`` (module docstring); ``meta``: more entries of
    the header's JSON object (plain values)."""
    n, att, pr = result.nodes, result.att, result.pruned
    labels = node_labels(n)
    labels["node_index"][n.n_lat + n.n_err : n.n_lat + n.n_err + n.T] = result.rec.ids.long().cpu()
    header = {
        "version": VERSION,
        "tokens": list(result.tokens),
        "logit_tokens": list(result.logit_text),
        "n_layers": n.n_layers,
        "bos_mode": bos_mode(n),
        "node_threshold": result.cfg.node_threshold,
        "edge_threshold": result.cfg.edge_threshold,
        **meta,
    }
    save_safetensors(
        path,
        {
            "rows": att.rows,
            "targets": att.targets,
            "edges": pr.edges,
            "bias": att.bias,
            "value": att.value,
            "influence": pr.influence,
            "node_mask": pr.node_mask.to(torch.uint8),
            **labels,
        },
        metadata={META_KEY: json.dumps(header)},
    )


_COMMON = ("bias", "value", "influence", "node_mask", *LABELS)
_FORMATS = {1: ("adjacency", "edge_mask", *_COMMON), 2: ("rows", "targets", "edges", *_COMMON)}
"""version → the tensors a file of that version holds."""


def _from_dense(path: Path, t: dict[str, Tensor]) -> dict[str, Tensor]:
    """A version 1 file's dense ``adjacency`` and ``edge_mask`` as version 2's ``rows``, ``targets`` and ``edges``
    (the targets: its latent and logit nodes; a non-zero row or kept edge elsewhere is refused)."""
    A, mask = t.pop("adjacency"), t.pop("edge_mask").bool()
    targets = ((t["node_kind"] == 0) | (t["node_kind"] == 3)).nonzero(as_tuple=True)[0]
    others = torch.ones(A.shape[0], dtype=torch.bool)
    others[targets] = False
    if bool(A[others].any()) or bool(mask[others].any()):
        raise MechscopeError(f"{path}: a version 1 graph with edges into error or token nodes; it is not a graph")
    return {**t, "rows": A[targets], "targets": targets, "edges": dense.pairs(mask[targets], targets)}


def load_graph(path: str | Path) -> SavedGraph:
    """Read a graph :func:`save_graph` wrote (version 2, or version 1's dense matrices, read as rows). A file without
    the node labels (written before them, or not a graph), or of a version this mechscope does not know, is refused
    by name."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise MechscopeError(f"{path}: not a readable safetensors file ({err})") from None
    meta = json.loads(header) if header is not None else {}
    version = meta.get("version", 1)
    if version not in READS:
        raise MechscopeError(
            f"{path}: a saved graph of version {version!r}; this mechscope reads versions "
            f"{', '.join(map(str, READS))} (a newer mechscope wrote it? upgrade, or re-run `mechscope graph`)"
        )
    missing = [k for k in _FORMATS[version] if k not in tensors]
    if header is None or missing:
        raise MechscopeError(
            f"{path}: not a saved graph with node labels (missing {', '.join(missing) or META_KEY}); "
            "re-run `mechscope graph` to write one"
        )
    if version == 1:
        tensors = _from_dense(path, tensors)
    tensors["node_mask"] = tensors["node_mask"].bool()
    return SavedGraph(**{k: tensors[k] for k in SavedGraph.__dataclass_fields__ if k != "meta"}, meta=meta)


def _cantor(x: int, y: int) -> int:
    """Cantor's pairing of two non-negative integers: the viewers' feature number of (layer, latent)."""
    return (x + y) * (x + y + 1) // 2 + y


def _viewer_node(g: SavedGraph, i: int, cumulative: float) -> dict[str, Any]:
    """Node ``i`` in the viewers' schema (:data:`VIEWER_NODE_FIELDS`)."""
    d = _viewer_fields(g, i, cumulative)
    return {k: d[k] for k in VIEWER_NODE_FIELDS}


def _viewer_fields(g: SavedGraph, i: int, cumulative: float) -> dict[str, Any]:
    kind, layer, pos, ix = g.kind(i), int(g.node_layer[i]), int(g.node_pos[i]), int(g.node_index[i])
    base = {
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "clerp": "",
        "influence": cumulative,
        "activation": None,
    }
    if kind == "latent":  # the viewers know per-layer transcoders' latents by this type name too
        return {
            **base,
            "node_id": f"{layer}_{ix}_{pos}",
            "feature": _cantor(layer, ix),
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": "cross layer transcoder",
            "jsNodeId": f"{layer}_{ix}-0",
            "activation": float(g.node_activation[i]),
        }
    if kind == "error":
        return {
            **base,
            "node_id": f"0_{layer}_{pos}",
            "feature": -1,
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": "mlp reconstruction error",
            "jsNodeId": f"{layer}_{pos}-0",
        }
    if kind == "token":
        return {
            **base,
            "node_id": f"E_{ix}_{pos}",
            "feature": pos,
            "layer": "E",
            "ctx_idx": pos,
            "feature_type": "embedding",
            "jsNodeId": f"E_{ix}-{pos}",
        }
    j = i - (g.size - int((g.node_kind == 3).sum()))  # its rank among the logit nodes (most probable first)
    p = float(g.node_activation[i])
    text = g.meta["logit_tokens"][j]
    return {
        **base,
        "node_id": f"{layer + 1}_{ix}_{pos}",
        "feature": ix,
        "layer": str(layer + 1),
        "ctx_idx": pos,
        "feature_type": "logit",
        "token_prob": p,
        "is_target_logit": j == 0,
        "jsNodeId": f"L_{ix}-{pos}",
        "clerp": f'Output "{text}" (p={p:.3f})',
        "influence": None,
    }


def viewer_json(g: SavedGraph, slug: str, scan: str = "mechscope") -> dict[str, Any]:
    """The pruned graph in the JSON of circuit-tracer's and Neuronpedia's graph viewers (circuit-tracer 0.5.0's
    ``create_graph_files`` schema: metadata, qParams, nodes, links). Nodes: the kept ones that have a kept edge,
    and every kept token and logit, in node order; ``influence`` is the node's cumulative share of the total
    influence when nodes are sorted by influence (the viewers' reading), none for logits. Links: every kept edge
    (source → target, weight A[t, s]), targets in node order."""
    order = g.influence.sort(descending=True)
    cumulative = torch.empty_like(g.influence)
    cumulative[order.indices] = order.values.cumsum(0) / order.values.sum()
    kept = g.node_mask.nonzero().flatten().tolist()
    nodes = {i: _viewer_node(g, i, float(cumulative[i])) for i in kept}
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
        for (t, s), w in zip(g.edges.tolist(), g.edge_weights.tolist())
        if s in nodes and t in nodes
    ]
    linked = {e["source"] for e in links} | {e["target"] for e in links}
    used = [v for v in nodes.values() if v["node_id"] in linked or v["feature_type"] in ("embedding", "logit")]
    tokens = list(g.meta["tokens"])
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": tokens,
        "prompt": g.meta.get("prompt", "".join(tokens)),
        "node_threshold": g.meta.get("node_threshold"),
        "schema_version": 1,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}

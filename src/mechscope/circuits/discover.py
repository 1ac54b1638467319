"""One circuit-discovery run: score nodes or edges with a method, pick the circuit, check the scores against
a sampled budget of exact patches, and measure the circuit's faithfulness.

Methods (:data:`METHODS`): ``exact``, ``atp``, ``atp*`` score *nodes*; ``eap``, ``eap-ig``, ``acdc`` score
*edges* of the residual graph (:func:`~mechscope.circuits.residual.model_graph`: zoo transformers and Hugging Face
models of the families it does not refuse). Nodes are each head's write (``L1H0``), its query, key and value
(``L1H0.q`` …; where AtP*'s attention fix applies) and each MLP; on a Hugging Face model a head is its slice
of the attention output projection's input, at its family's head width, and its query, key and value nodes
(its slices of the separate projections, :func:`hf_nodes` with ``qkv``) are scored by ``atp*`` only, which
refuses families with a fused projection by name.

The circuit: node methods keep the ``top`` nodes by |score|; edge methods keep the ``top`` edges by |score|
(``acdc``: the edges it keeps at the threshold). Edges whose reader's component no longer reaches the logits
are dropped. A node circuit on a zoo model becomes edges (every edge from the embedding or a kept writer into
a kept input: a head's q/k/v input is kept when that node is) so that both are scored by the same
edge-level faithfulness; on other models node faithfulness ablates the nodes outside the circuit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from mechscope.circuits.atpstar import atp_star_effects
from mechscope.circuits.edges import acdc, eap_effects, exact_edge_effects
from mechscope.circuits.faithfulness import edge_faithfulness, node_faithfulness
from mechscope.circuits.patching import Component, Effects, agreement, atp_effects, exact_effects
from mechscope.circuits.residual import Edge, ResidualGraph, model_graph, zoo_graph
from mechscope.circuits.tasks import CircuitTask
from mechscope.config import check_ranges, in_range
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.models.families import block_path, family_of, heads, is_zoo, n_blocks
from mechscope.sites import alias_templates, parse_site

if TYPE_CHECKING:
    from mechscope.zoo.transformer import Block, ZooTransformer


def zoo_nodes(model: nn.Module) -> dict[str, Component]:
    """label → node for a zoo transformer: each head's write and its q, k, v; each MLP."""
    out: dict[str, Component] = {}
    for i, block in enumerate(cast("Sequence[Block]", cast("ZooTransformer", model).blocks)):
        for h in range(len(block.attn.heads)):
            head = f"blocks.{i}.attn.heads.{h}"
            out[f"L{i}H{h}"] = Component(f"{head}.result")
            for x in "qkv":
                out[f"L{i}H{h}.{x}"] = Component(f"{head}.{x}")
        if block.mlp is not None:
            out[f"MLP{i}"] = Component(f"blocks.{i}.mlp")
    return out


def hf_nodes(model: nn.Module, layers: list[int] | None = None, qkv: bool = False) -> dict[str, Component]:
    """label → node for a Hugging Face model of a family in :mod:`mechscope.models.families`: head h of layer L
    is the slice [h·e, (h+1)·e) of the attention output projection's input (the ``z.L`` site, e = the family's
    head_dim); MLP L is the MLP's write to the residual stream (the ``mlp_out.L`` site). With ``qkv`` (families
    with separate projections only), also each head's slice of the query, key and value projections' outputs:
    ``L1H0.q``; a key or value head shared by several query heads (grouped-query attention) is ``L1KV0.k``."""
    try:
        family = family_of(model)
        h = heads(model)
    except UsageError as err:
        raise UsageError(f"cannot list the heads of a {type(model).__name__}: {err}") from None
    if family.out_proj is None:
        raise UsageError(f"a {family.name} model's heads are separate modules; list them with zoo_nodes")
    if qkv and not family.qkv:
        raise UsageError(
            f"{family.name} models compute every head's query, key and value in one fused projection, so there "
            "are no per-head query/key nodes, which AtP*'s attention fix needs; use atp on this model"
        )
    templates, base = alias_templates(family), block_path(model, family)

    def site(kind: str, i: int) -> str:
        return str(parse_site(templates[kind].format(L=f"{base}.{i}")))

    shared = "KV" if h.n_kv_heads < h.n_heads else "H"
    out: dict[str, Component] = {}
    for i in layers if layers is not None else range(n_blocks(model)):
        for head in range(h.n_heads):
            out[f"L{i}H{head}"] = Component(site("z", i), *h.span(head))
        if qkv:
            out.update({f"L{i}H{head}.q": Component(site("q", i), *h.span(head)) for head in range(h.n_heads)})
            out.update(
                {f"L{i}{shared}{g}.{x}": Component(site(x, i), *h.span(g)) for x in "kv" for g in range(h.n_kv_heads)}
            )
        out[f"MLP{i}"] = Component(site("mlp_out", i))
    return out


def model_nodes(model: nn.Module, qkv: bool = False) -> dict[str, Component]:
    """:func:`zoo_nodes` on a zoo transformer, else :func:`hf_nodes` (with ``qkv``)."""
    return zoo_nodes(model) if is_zoo(model) else hf_nodes(model, qkv=qkv)


NODE_METHODS: dict[str, Callable[..., Effects]] = {
    "exact": exact_effects,
    "atp": atp_effects,
    "atp*": atp_star_effects,
}
EDGE_METHODS = ("eap", "eap-ig", "acdc")
METHODS = tuple(NODE_METHODS) + EDGE_METHODS


@dataclass(frozen=True)
class DiscoverConfig:
    """How one circuit is found and checked."""

    method: Literal["exact", "atp", "atp*", "eap", "eap-ig", "acdc"] = "atp"
    """exact | atp | atp* | eap | eap-ig | acdc."""
    top: int = 10
    """Nodes (node methods) or edges (eap, eap-ig) kept in the circuit; at most the nodes or edges scored
    (a larger value is refused). Unused by acdc."""
    threshold: float = field(
        default=0.01, metadata=in_range(0, 100, why="a KL threshold past 100 nats drops every edge")
    )
    """ACDC's KL threshold τ (nats), in [0, 100]."""
    ig_steps: int = 5
    """EAP-IG integration steps K."""
    budget: int = 20
    """Exact patches (nodes or edges, sampled) that the approximate scores are checked against, at most (every
    node or edge when there are fewer; agreement_with_exact.budget says how many were patched); 0: no check,
    agreement_with_exact is then null."""
    ablation: Literal["mean", "resample", "corrupt"] = "mean"
    """How what lies outside the circuit is ablated for faithfulness: mean | resample | corrupt."""
    seed: int = 0
    """Seed of the budget's sample and of the bootstrap."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.top < 1 or self.budget < 0 or self.threshold < 0 or self.ig_steps < 1:
            raise UsageError(
                f"need top ≥ 1, budget ≥ 0, threshold ≥ 0, ig_steps ≥ 1; got {self.top}, {self.budget}, {self.threshold}, {self.ig_steps}"
            )
        if self.ablation not in ("mean", "resample", "corrupt"):
            raise UsageError(f"unknown ablation {self.ablation!r}; choose mean, resample or corrupt")


def _reaching(graph: ResidualGraph, edges: list[Edge]) -> list[Edge]:
    """``edges`` whose reader's component still reaches the logits through ``edges``."""
    alive = {"logits"}
    for r in sorted(graph.readers, key=lambda r: -r.order):
        for e in edges:
            if e.reader == r.name and r.node in alive:
                alive.add(e.writer)
    return [e for e in edges if graph.reader(e.reader).node in alive]


def node_circuit_edges(graph: ResidualGraph, kept: set[str]) -> list[Edge]:
    """The edges of a node circuit (labels from :func:`zoo_nodes`), see the module docstring."""

    def reader_kept(name: str) -> bool:
        node = graph.reader(name).node
        return name == "logits" or (name in kept if "." in name and not name.endswith(".in") else node in kept)

    edges = [e for e in graph.edges if (e.writer == "embed" or e.writer in kept) and reader_kept(e.reader)]
    return _reaching(graph, edges)


def _subset(eff: Effects, idx: list[int]) -> Effects:
    return Effects(
        tuple(eff.nodes[i] for i in idx),
        eff.effects[idx],
        eff.clean_metric,
        eff.corrupt_metric,
        eff.forwards,
        eff.backwards,
        eff.signed,
    )


def _budget(n: int, cfg: DiscoverConfig) -> list[int]:
    if cfg.budget >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.budget].tolist())


def _check_top(cfg: DiscoverConfig, n: int, what: str) -> None:
    """Refuse a circuit larger than the graph: ``top`` > n would silently keep all n (the whole model)."""
    if cfg.top > n:
        raise UsageError(
            f"`top` {cfg.top}: {cfg.method} scores {n} {what} on this model and task; give `top` between 1 and {n}"
        )


def discover(
    model: nn.Module,
    task: CircuitTask,
    cfg: DiscoverConfig,
    nodes: dict[str, Component] | None = None,
    ablate: dict[str, Component] | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    """Run ``cfg.method`` on ``task`` and return the JSON-ready result (keys: ``nodes``, ``edges``,
    ``faithfulness``, ``agreement_with_exact``, ``scores``, ``cost`` …).

    ``world``: the torchrun ranks that share the exact patches, the independent work of a run (``exact``'s one
    forward per node, and the budget of exact patches the other methods are checked against): patch i on rank
    i mod N, gathered in order, so every rank returns the result of one process. The rest runs on every rank.

    ``nodes`` (label → node) replaces the model's own heads and MLPs, e.g. SAE latents and error terms from
    :func:`~mechscope.circuits.latents.latent_circuit_nodes`; the circuit is then a node circuit on every model
    and faithfulness ablates every node of ``ablate`` (default ``nodes``) outside it."""
    clean, corrupt, metric = task.clean, task.corrupt, task.metric
    out: dict[str, Any] = {
        "task": task.name,
        "method": cfg.method,
        "metric": task.metric_name,
        "config": vars(cfg).copy(),
    }
    given = nodes is not None
    if given and cfg.method not in NODE_METHODS:
        raise UsageError(
            f"{cfg.method} scores edges of the residual graph, not SAE latents; use `method` exact, atp or atp*"
        )
    if cfg.method in NODE_METHODS:
        labelled = model_nodes(model, qkv=cfg.method == "atp*") if nodes is None else nodes
        labels, node_list = list(labelled), list(labelled.values())
        if not labelled:
            raise UsageError("the graph has no nodes: name at least one site")
        _check_top(cfg, len(labels), "nodes")
        t0 = time.perf_counter()
        methods: dict[str, Callable[..., Effects]] = {**NODE_METHODS, "exact": partial(exact_effects, world=world)}
        eff = methods[cfg.method](model, node_list, clean, corrupt, metric)
        wall = time.perf_counter() - t0
        order = eff.effects.abs().argsort(descending=True).tolist()
        kept = {labels[i] for i in order[: cfg.top]}
        out["scores"] = [{"name": labels[i], "site": node_list[i].name, "effect": float(eff.effects[i])} for i in order]
        out["nodes"] = [s for s in out["scores"] if s["name"] in kept]
        if is_zoo(model) and not given:
            graph = zoo_graph(model)
            circuit = node_circuit_edges(graph, kept)
            out["edges"] = [{"writer": e.writer, "reader": e.reader, "effect": None} for e in circuit]
            out["faithfulness"] = edge_faithfulness(model, graph, circuit, task, cfg.ablation, seed=cfg.seed)
            out["graph"] = _graph_json(graph)
        else:
            out["edges"] = []
            pool = list((ablate or labelled).values())
            out["faithfulness"] = node_faithfulness(
                model, pool, [labelled[k] for k in kept], task, cfg.ablation, seed=cfg.seed
            )
        if cfg.method != "exact" and cfg.budget > 0:
            idx = _budget(len(node_list), cfg)
            exact = exact_effects(model, [node_list[i] for i in idx], clean, corrupt, metric, world=world)
            out["agreement_with_exact"] = {
                **agreement(_subset(eff, idx), exact),
                "budget": len(idx),
                "exact_forwards": exact.forwards,
            }
        else:
            out["agreement_with_exact"] = None
    else:
        graph = model_graph(model)
        if cfg.method != "acdc":  # ACDC keeps what its threshold keeps; --top does not apply
            _check_top(cfg, len(graph.edges), "edges")
        t0 = time.perf_counter()
        if cfg.method == "acdc":
            res = acdc(model, graph, clean, corrupt, task.kl_positions, cfg.threshold)
            eff, circuit = res.scores, list(res.kept)
            out["acdc_divergence"] = res.divergence
        else:
            eff = eap_effects(
                model, graph, clean, corrupt, metric, ig_steps=cfg.ig_steps if cfg.method == "eap-ig" else 0
            )
            order = eff.effects.abs().argsort(descending=True).tolist()
            circuit = [graph.edges[i] for i in sorted(order[: cfg.top])]
        wall = time.perf_counter() - t0
        circuit = _reaching(graph, circuit)
        score = {e: float(s) for e, s in zip(graph.edges, eff.effects)}
        out["scores"] = [{"writer": e.writer, "reader": e.reader, "effect": score[e]} for e in graph.edges]
        out["edges"] = [{"writer": e.writer, "reader": e.reader, "effect": score[e]} for e in circuit]
        names = sorted({e.writer for e in circuit} | {graph.reader(e.reader).node for e in circuit})
        out["nodes"] = [{"name": n, "effect": None} for n in names]
        out["faithfulness"] = edge_faithfulness(model, graph, circuit, task, cfg.ablation, seed=cfg.seed)
        out["agreement_with_exact"] = None
        if cfg.budget > 0:
            idx = _budget(len(graph.edges), cfg)
            exact = exact_edge_effects(model, graph, clean, corrupt, metric, [graph.edges[i] for i in idx], world=world)
            out["agreement_with_exact"] = {
                **agreement(_subset(eff, idx), exact),
                "budget": len(idx),
                "exact_forwards": exact.forwards,
            }
        out["graph"] = _graph_json(graph)
    out["clean_metric"], out["corrupt_metric"] = eff.clean_metric, eff.corrupt_metric
    out["cost"] = {"forwards": eff.forwards, "backwards": eff.backwards, "wall_s": wall, "scored": len(eff.effects)}
    return out


def _graph_json(graph: ResidualGraph) -> dict[str, Any]:
    return {
        "writers": [
            {"name": w.name, "site": w.site, "order": w.order, **({"span": list(w.span)} if w.span else {})}
            for w in graph.writers
        ],
        "readers": [{"name": r.name, "site": r.site, "order": r.order, "node": r.node} for r in graph.readers],
    }

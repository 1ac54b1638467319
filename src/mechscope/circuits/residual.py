"""The graph of residual-stream writers and readers, and forward passes with chosen edges patched.

Shapes: B examples, T positions, d residual width.

A *writer* adds its output to the residual stream (the token embedding, each head's ``result``, each MLP).
A *reader* reads the residual stream through a norm (each head's query, key and value input, each MLP's
input, the logits). Every writer upstream of a reader gives an edge u → v. Since the stream is a sum,

    input_v = norm_v( Σ_{u → v} a_u  + the rest )                  (the rest: position embedding, biases)

and patching the edge u → v alone means  input_v = norm_v(resid_v − a_u + ã_u)  with ã_u the writer's value
from another source (the corrupted input, a mean, another example), every other reader untouched. Writers
are read in the *current* forward pass, so upstream changes propagate as they would in the model.

The position embedding and the biases are identical in the clean and corrupted runs and are not writers
(an edge from them always has effect 0).

Two builders, one graph type (:func:`model_graph` picks):

- :func:`zoo_graph`, a :class:`~mechscope.zoo.transformer.ZooTransformer`: its per-head ``q_in``/``k_in``/``v_in``
  sites make one head's input patchable without touching its neighbours'.
- :func:`hf_graph`, a Hugging Face model of a family in :mod:`mechscope.models.families`: the embedding's writer
  is the stream entering block 0 (token embedding, plus GPT-2's position embedding, which is the same in
  every run); head h of layer L writes its slice of z through its columns of the output projection
  (:func:`~mechscope.circuits.hf.head_write`; the projection's bias is part of the rest); each MLP writes its
  output; each head's query, key and value input is read one by one through transformers' attention
  function (:func:`~mechscope.circuits.hf.head_inputs`: head h alone computes its query, key or value from
  norm(resid_v − a_u + ã_u)). In a parallel block (GPT-NeoX with ``use_parallel_residual``, Phi) attention
  and the MLP read the same stream, so no edge joins a layer's heads to its MLP.

  Refused by name: families that normalise attention's output as a whole before adding it (Gemma 2/3,
  OLMo 2: h = x + p1(Σ_h head_h)). There a head's write is not a term of the stream — p1 of a sum is not
  the sum of the p1s — so "the stream minus one head's write" has no exact meaning; node methods (exact
  patching, AtP) still run on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from mechscope.circuits.hf import HeadInput, head_inputs, head_write
from mechscope.errors import UsageError
from mechscope.models.families import block_path, family_of, heads, is_parallel
from mechscope.sites import PatchFn, alias_templates, capture, parse_site, patch

if TYPE_CHECKING:
    from mechscope.zoo.transformer import Block, ZooTransformer


@dataclass(frozen=True)
class Writer:
    """A component that adds its output to the residual stream."""

    name: str
    """Short name: ``embed``, ``L1H0``, ``MLP0``."""
    site: str
    """The site holding its write, [B, T, d]."""
    order: int
    """Position in the forward pass (a writer feeds readers of larger order)."""
    span: tuple[int, int] | None = None
    """Hugging Face heads: the head's slice [start, stop) of ``site`` (z); its write is that slice through
    :attr:`proj` (None: the site's value is the write)."""
    proj: str | None = None
    """Hugging Face heads: module path of the attention output projection."""


@dataclass(frozen=True)
class Reader:
    """A component input that reads the residual stream through a norm."""

    name: str
    """Short name: ``L1H0.k``, ``MLP0.in``, ``logits``."""
    site: str
    """The site of the normed input (patched), [B, T, d]; for a Hugging Face head, the attention module (whose
    input every head reads; the head's own input is given through :func:`~mechscope.circuits.hf.head_inputs`)."""
    norm: str
    """Module path of the norm applied to the residual stream (an ``nn.Identity`` when there is none)."""
    order: int
    """Position in the forward pass."""
    node: str
    """The node (component) this input belongs to: ``L1H0``, ``MLP0``, ``logits``."""
    head: int | None = None
    """Hugging Face heads: the query head whose input this is (None: the whole ``site`` is this input)."""
    part: str | None = None
    """Hugging Face heads: ``q``, ``k`` or ``v``."""


@dataclass(frozen=True)
class Edge:
    writer: str
    reader: str

    @property
    def name(self) -> str:
        return f"{self.writer}->{self.reader}"


@dataclass(frozen=True)
class ResidualGraph:
    writers: tuple[Writer, ...]
    readers: tuple[Reader, ...]

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every writer → later reader, readers in forward order."""
        return tuple(Edge(w.name, r.name) for r in self.readers for w in self.writers if w.order < r.order)

    def writer(self, name: str) -> Writer:
        return self._by_name[name]  # type: ignore[return-value]

    def reader(self, name: str) -> Reader:
        return self._by_name[name]  # type: ignore[return-value]

    @cached_property
    def _by_name(self) -> dict[str, Writer | Reader]:
        every: tuple[Writer | Reader, ...] = (*self.writers, *self.readers)
        return {x.name: x for x in every}


def zoo_graph(model: nn.Module) -> ResidualGraph:
    """The writers and readers of a :class:`~mechscope.zoo.transformer.ZooTransformer`."""
    blocks = (
        cast("Sequence[Block]", cast("ZooTransformer", model).blocks) if family_of(model).name == "zoo" else None
    )  # never duck-typed: TransformerLens has blocks too
    if blocks is None or not hasattr(model, "ln_final"):
        raise UsageError(
            f"edge methods need a zoo transformer (blocks with per-head q_in/k_in/v_in sites); got {type(model).__name__}"
        )
    writers, readers = [Writer("embed", "embed", 0)], []
    for i, block in enumerate(blocks):
        for h in range(len(block.attn.heads)):
            head = f"blocks.{i}.attn.heads.{h}"
            writers.append(Writer(f"L{i}H{h}", f"{head}.result", 2 * i + 1))
            readers += [
                Reader(f"L{i}H{h}.{x}", f"{head}.{x}_in", f"blocks.{i}.ln1", 2 * i + 1, f"L{i}H{h}") for x in "qkv"
            ]
        if block.mlp is not None:
            writers.append(Writer(f"MLP{i}", f"blocks.{i}.mlp", 2 * i + 2))
            readers.append(Reader(f"MLP{i}.in", f"blocks.{i}.mlp:input", f"blocks.{i}.ln2", 2 * i + 2, f"MLP{i}"))
    readers.append(Reader("logits", "ln_final", "ln_final", 2 * len(blocks) + 1, "logits"))
    return ResidualGraph(tuple(writers), tuple(readers))


def hf_graph(model: nn.Module) -> ResidualGraph:
    """The writers and readers of a Hugging Face model of a family in :mod:`mechscope.models.families` (see the
    module docstring; families with a post-attention norm are refused)."""
    f = family_of(model)
    if f.per_head:
        raise UsageError("a zoo transformer's graph is zoo_graph(model); hf_graph is for Hugging Face models")
    if f.attn_post_norm or f.mlp_post_norm:
        raise UsageError(
            f"edge methods need each head's write to be a term of the residual stream, but {f.name} models "
            f"normalise attention's output as a whole ({f.attn_post_norm or f.mlp_post_norm}) before adding it, "
            "so one head's write cannot be taken out exactly; use a node method (exact, atp) on this model"
        )
    h, base, parallel = heads(model), block_path(model, f), is_parallel(model)
    templates = alias_templates(f)

    def site(kind: str, L: str) -> str:
        return str(parse_site(templates[kind].format(L=L)))

    names = dict(model.named_modules())
    if f.final_norm not in names:
        raise UsageError(
            f"edge methods read the logits through {f.final_norm!r}, which this {type(model).__name__} lacks; "
            "load the model with its causal-LM class (e.g. AutoModelForCausalLM)"
        )
    writers, readers = [Writer("embed", f"{base}.0:input", 0)], []
    n_layers = len(cast(nn.ModuleList, names[base]))
    for i in range(n_layers):
        L = f"{base}.{i}"
        mlp_order = 2 * i + 1 if parallel else 2 * i + 2
        for hd in range(h.n_heads):
            writers.append(Writer(f"L{i}H{hd}", site("z", L), 2 * i + 1, h.span(hd), f"{L}.{f.out_proj}"))
            readers += [
                Reader(f"L{i}H{hd}.{x}", f"{L}.{f.attn}", f"{L}.{f.attn_norm}", 2 * i + 1, f"L{i}H{hd}", hd, x)
                for x in "qkv"
            ]
        writers.append(Writer(f"MLP{i}", site("mlp_out", L), mlp_order))
        readers.append(Reader(f"MLP{i}.in", site("mlp_in", L), f"{L}.{f.mlp_norm}", mlp_order, f"MLP{i}"))
    readers.append(Reader("logits", f.final_norm, f.final_norm, 2 * n_layers + 1, "logits"))
    return ResidualGraph(tuple(writers), tuple(readers))


def model_graph(model: nn.Module) -> ResidualGraph:
    """:func:`zoo_graph` for a zoo transformer, :func:`hf_graph` for a Hugging Face model."""
    return zoo_graph(model) if family_of(model).per_head else hf_graph(model)


def write_of(model: nn.Module, w: Writer, act: Tensor) -> Tensor:
    """Writer ``w``'s write [B, T, d] from the activation at its site."""
    return act if w.span is None else head_write(model.get_submodule(w.proj), act, w.span)  # type: ignore[arg-type]


def _sum_of_writes(model: nn.Module, writers: Sequence[Writer], acts: Mapping[str, Tensor]) -> Tensor:
    """Σ of the writers' writes [B, T, d]; the heads of one layer go through their projection together (z with
    every other head's slice zeroed)."""
    total: Tensor | int = 0
    heads: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for w in writers:
        if w.span is None:
            total = total + acts[w.site]
        else:
            heads.setdefault((w.site, w.proj), []).append(w.span)  # type: ignore[arg-type]
    for (site, proj), spans in heads.items():
        z = acts[site]
        keep = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)
        for a, b in spans:
            keep[a:b] = 1
        total = total + head_write(model.get_submodule(proj), z * keep, (0, z.shape[-1]))
    return total  # type: ignore[return-value]


@torch.no_grad()
def writer_values(model: nn.Module, graph: ResidualGraph, tokens: Tensor) -> dict[str, Tensor]:
    """Every writer's output on ``tokens``: name → [B, T, d]."""
    with capture(model, sorted({w.site for w in graph.writers})) as acts:
        model(tokens)
    return {w.name: write_of(model, w, acts[w.site]) for w in graph.writers}


@contextlib.contextmanager
def edges_patched(
    model: nn.Module, graph: ResidualGraph, patched: Sequence[Edge], source: Mapping[str, Tensor], leaves: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Inside, forwards run with each edge u → v in ``patched`` carrying ``source[u]`` instead of u's own output
    (``source[u]`` broadcastable to [B, T, d]). With ``leaves``, every reader's residual gets a zero leaf
    (``requires_grad``) before its norm, for ∂m/∂(the residual reader v sees); yields ``reader → leaf``."""
    by_reader: dict[str, list[str]] = {}
    for e in patched:
        by_reader.setdefault(e.reader, []).append(e.writer)
    hooked = [r for r in graph.readers if leaves or r.name in by_reader]
    norm_inputs = sorted({f"{r.norm}:input" for r in hooked})
    out_leaves: dict[str, Tensor] = {}
    with contextlib.ExitStack() as stack:
        cur = stack.enter_context(capture(model, sorted({w.site for w in graph.writers}) + norm_inputs, detach=False))

        def normed(r: Reader) -> Tensor:
            resid = cur[f"{r.norm}:input"]
            if r.name in by_reader:
                ws = [graph.writer(u) for u in by_reader[r.name]]
                resid = resid - _sum_of_writes(model, ws, cur) + sum(source[w.name] for w in ws)
            if leaves:
                out_leaves[r.name] = torch.zeros_like(resid, requires_grad=True)
                resid = resid + out_leaves[r.name]
            # .forward, not __call__: the norm's own hooks (the capture of its input) must not see this call
            return model.get_submodule(r.norm).forward(resid)

        def normed_for(r: Reader) -> PatchFn:
            return lambda _act: normed(r)

        for r in hooked:
            if r.head is None:
                stack.enter_context(patch(model, r.site, normed_for(r)))
        by_input = {HeadInput(r.site, r.head, r.part): r for r in hooked if r.head is not None}  # type: ignore[arg-type]
        if by_input:

            def read(i: HeadInput) -> tuple[object, Callable[[], Tensor]]:
                r = by_input[i]  # readers with the same patched writers read the same x' (not so with leaves)
                return (None if leaves else (r.norm, frozenset(by_reader.get(r.name, ())))), lambda: normed(r)

            stack.enter_context(head_inputs(model, list(by_input), read))
        yield out_leaves

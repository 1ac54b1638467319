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

Built for :class:`~mechscope.zoo.transformer.ZooTransformer` (:func:`zoo_graph`): its per-head
``q_in``/``k_in``/``v_in`` sites make one head's input patchable without touching its neighbours'.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.models.families import family_of
from mechscope.sites import capture, patch


@dataclass(frozen=True)
class Writer:
    """A component that adds its output to the residual stream."""

    name: str
    """Short name: ``embed``, ``L1H0``, ``MLP0``."""
    site: str
    """The site holding its write, [B, T, d]."""
    order: int
    """Position in the forward pass (a writer feeds readers of larger order)."""


@dataclass(frozen=True)
class Reader:
    """A component input that reads the residual stream through a norm."""

    name: str
    """Short name: ``L1H0.k``, ``MLP0.in``, ``logits``."""
    site: str
    """The site of the normed input (patched), [B, T, d]."""
    norm: str
    """Module path of the norm applied to the residual stream (an ``nn.Identity`` when there is none)."""
    order: int
    """Position in the forward pass."""
    node: str
    """The node (component) this input belongs to: ``L1H0``, ``MLP0``, ``logits``."""


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

    @property
    def edges(self) -> tuple[Edge, ...]:
        """Every writer → later reader, readers in forward order."""
        return tuple(Edge(w.name, r.name) for r in self.readers for w in self.writers if w.order < r.order)

    def writer(self, name: str) -> Writer:
        return next(w for w in self.writers if w.name == name)

    def reader(self, name: str) -> Reader:
        return next(r for r in self.readers if r.name == name)


def zoo_graph(model: nn.Module) -> ResidualGraph:
    """The writers and readers of a :class:`~mechscope.zoo.transformer.ZooTransformer`."""
    blocks = model.blocks if family_of(model).name == "zoo" else None  # never duck-typed: TransformerLens has blocks too
    if blocks is None or not hasattr(model, "ln_final"):
        raise UsageError(f"edge methods need a zoo transformer (blocks with per-head q_in/k_in/v_in sites); got {type(model).__name__}")
    writers, readers = [Writer("embed", "embed", 0)], []
    for i, block in enumerate(blocks):
        for h in range(len(block.attn.heads)):
            head = f"blocks.{i}.attn.heads.{h}"
            writers.append(Writer(f"L{i}H{h}", f"{head}.result", 2 * i + 1))
            readers += [Reader(f"L{i}H{h}.{x}", f"{head}.{x}_in", f"blocks.{i}.ln1", 2 * i + 1, f"L{i}H{h}") for x in "qkv"]
        if block.mlp is not None:
            writers.append(Writer(f"MLP{i}", f"blocks.{i}.mlp", 2 * i + 2))
            readers.append(Reader(f"MLP{i}.in", f"blocks.{i}.mlp:input", f"blocks.{i}.ln2", 2 * i + 2, f"MLP{i}"))
    readers.append(Reader("logits", "ln_final", "ln_final", 2 * len(blocks) + 1, "logits"))
    return ResidualGraph(tuple(writers), tuple(readers))


@torch.no_grad()
def writer_values(model: nn.Module, graph: ResidualGraph, tokens: Tensor) -> dict[str, Tensor]:
    """Every writer's output on ``tokens``: name → [B, T, d]."""
    with capture(model, [w.site for w in graph.writers]) as acts:
        model(tokens)
    return {w.name: acts[w.site] for w in graph.writers}


@contextlib.contextmanager
def edges_patched(model: nn.Module, graph: ResidualGraph, patched: Sequence[Edge], source: Mapping[str, Tensor],
                  leaves: bool = False) -> Iterator[dict[str, Tensor]]:
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
        cur = stack.enter_context(capture(model, [w.site for w in graph.writers] + norm_inputs, detach=False))

        def rewrite(act: Tensor, r: Reader) -> Tensor:
            resid = cur[f"{r.norm}:input"]
            for u in by_reader.get(r.name, ()):
                resid = resid - cur[graph.writer(u).site] + source[u]
            if leaves:
                out_leaves[r.name] = torch.zeros_like(resid, requires_grad=True)
                resid = resid + out_leaves[r.name]
            # .forward, not __call__: the norm's own hooks (the capture of its input) must not see this call
            return model.get_submodule(r.norm).forward(resid)
        for r in hooked:
            stack.enter_context(patch(model, r.site, lambda a, r=r: rewrite(a, r)))
        yield out_leaves

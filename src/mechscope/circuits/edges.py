"""Edge effects on the residual graph: exact edge patching, EAP, EAP-IG (Hanna et al. 2024), and ACDC
(Conmy et al. 2023).

Shapes: B examples, T positions, d residual width, E edges, K integration steps. a_u is writer u's output
[B, T, d], ã_u its corrupted value; g_v = ∂m/∂(the residual reader v reads, before its norm) [B, T, d].

- **exact**: Δ(u→v) = m(clean with only u → v carrying ã_u) − m(clean). One forward per edge.
- **EAP**:   Δ̂(u→v) = Σ (ã_u − a_u) · g_v |clean. One clean forward + backward, one corrupted forward.
- **EAP-IG**: Δ̂(u→v) = Σ (ã_u − a_u) · (1/K) Σ_{k=1..K} g_v |z̃ + (k/K)(z − z̃), the gradients averaged along
  the straight line from the corrupted token embeddings z̃ to the clean ones z (integrated gradients on the
  input, as Hanna et al.); K = 5 by default (their choice). K forwards + backwards, one corrupted forward.
- **ACDC**: edges are visited from the logits backwards (readers in reverse forward order); each is removed
  (made to carry ã_u) for good when the divergence D = mean KL(p_full ‖ p_circuit) at the scored positions
  grows by less than τ. All examples go through one forward per tried edge (batched). Departure: a reader
  whose component has lost every outgoing edge has its incoming edges removed without a forward (their
  effect is exactly 0 then, so the result is the same, cheaper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mechscope.circuits.patching import Effects, Metric, _check_metric
from mechscope.circuits.residual import Edge, ResidualGraph, edges_patched, writer_values
from mechscope.circuits.tasks import logits_of
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.sites import patch


def _check(graph: ResidualGraph, clean: Tensor, corrupt: Tensor) -> None:
    if not graph.edges:
        raise UsageError("the graph has no edges: the model needs at least one writer before a reader")
    if clean.shape != corrupt.shape:
        raise UsageError(
            f"clean inputs {tuple(clean.shape)} and corrupted inputs {tuple(corrupt.shape)} differ in shape; "
            "positions must align for patching, so pad or cut them to the same length"
        )


@torch.no_grad()
def exact_edge_effects(
    model: nn.Module,
    graph: ResidualGraph,
    clean: Tensor,
    corrupt: Tensor,
    metric: Metric,
    edges: Sequence[Edge] | None = None,
    world: World | None = None,
) -> Effects:
    """Δ(u→v) for ``edges`` (default: all) by patching each edge alone. ``world``: the torchrun ranks that share the
    patches (edge i on rank i mod N), as :func:`~mechscope.circuits.patching.exact_effects`."""
    _check(graph, clean, corrupt)
    edges = tuple(graph.edges if edges is None else edges)
    corrupt_w = writer_values(model, graph, corrupt)
    base, m_corrupt = metric(model(clean)), metric(model(corrupt))
    _check_metric(base, m_corrupt)

    def effect(i: int) -> Tensor:
        with edges_patched(model, graph, [edges[i]], corrupt_w):
            return (metric(model(clean)) - base).detach().cpu()

    effects = (world or World()).map(effect, len(edges), "the gather of every rank's exact edge patches")
    return Effects(edges, torch.stack(effects).float(), float(base), float(m_corrupt), len(edges) + 3, 0)


def _reader_grads(
    model: nn.Module, graph: ResidualGraph, clean: Tensor, metric: Metric, embed: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """(metric, g_v for every reader) at ``clean``, with the token embeddings replaced by ``embed`` if given."""
    with torch.enable_grad(), edges_patched(model, graph, [], {}, leaves=True) as leaves:
        if embed is None:
            m = metric(model(clean))
        else:
            with patch(model, graph.writer("embed").site, "replace", embed):
                m = metric(model(clean))
        if not m.requires_grad:
            raise UsageError(
                "the metric does not depend on the model's output (no gradient reaches it); "
                "compute it from the logits the model returns"
            )
        names = list(leaves)
        grads = torch.autograd.grad(m, [leaves[n] for n in names], allow_unused=True)
    return m.detach(), {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names, grads)}


def _scores(
    graph: ResidualGraph,
    edges: Sequence[Edge],
    clean_w: dict[str, Tensor],
    corrupt_w: dict[str, Tensor],
    grads: dict[str, Tensor],
) -> Tensor:
    """Σ (ã_u − a_u) · g_v per edge: one matrix-vector product per reader over every writer's flattened change."""
    names = [w.name for w in graph.writers]
    diff = torch.stack([(corrupt_w[n] - clean_w[n]).expand_as(clean_w[n]).reshape(-1) for n in names])  # [W, B·T·d]
    row = {n: i for i, n in enumerate(names)}
    per_reader = {r: diff @ grads[r].reshape(-1).to(diff.dtype) for r in {e.reader for e in edges}}
    return torch.stack([per_reader[e.reader][row[e.writer]] for e in edges]).float()


def eap_effects(
    model: nn.Module, graph: ResidualGraph, clean: Tensor, corrupt: Tensor, metric: Metric, ig_steps: int = 0
) -> Effects:
    """EAP (``ig_steps=0``) or EAP-IG with ``ig_steps`` = K points on the corrupted → clean embedding line."""
    _check(graph, clean, corrupt)
    if ig_steps < 0:
        raise UsageError(f"ig_steps must be ≥ 0, got {ig_steps}")
    clean_w, corrupt_w = writer_values(model, graph, clean), writer_values(model, graph, corrupt)
    with torch.no_grad():
        m_corrupt = metric(model(corrupt))
    if ig_steps == 0:
        m, grads = _reader_grads(model, graph, clean, metric)
        _check_metric(m, m_corrupt)
        return Effects(
            graph.edges, _scores(graph, graph.edges, clean_w, corrupt_w, grads), float(m), float(m_corrupt), 4, 1
        )
    z, z_tilde = clean_w["embed"], corrupt_w["embed"]
    total: dict[str, Tensor] = {}
    for k in range(1, ig_steps + 1):
        m, grads = _reader_grads(model, graph, clean, metric, embed=z_tilde + (k / ig_steps) * (z - z_tilde))
        for n, g in grads.items():
            total[n] = total.get(n, 0) + g / ig_steps
    _check_metric(m, m_corrupt)  # the last step is the clean input
    return Effects(
        graph.edges,
        _scores(graph, graph.edges, clean_w, corrupt_w, total),
        float(m),
        float(m_corrupt),
        ig_steps + 3,
        ig_steps,
    )


def mean_kl(full_logits: Tensor, logits: Tensor, positions: Tensor) -> Tensor:
    """Mean over scored (example, position) pairs of KL(p_full ‖ p); ``positions`` [B, T] bool. In float64: ACDC
    compares growths of D against small thresholds, and float32 rounding of a sum over the vocabulary is
    larger than the KL of a small change (it made edges with real effects look free at τ = 0)."""
    lp_full, lp = full_logits[positions].double().log_softmax(-1), logits[positions].double().log_softmax(-1)
    return (lp_full.exp() * (lp_full - lp)).sum(-1).mean()


@dataclass(frozen=True)
class ACDCResult:
    kept: tuple[Edge, ...]
    """The circuit's edges."""
    scores: Effects
    """Per edge (graph order): the growth of D when it was tried (0 for edges removed without a forward);
    ``signed=False``."""
    divergence: float
    """D of the final circuit."""
    threshold: float


@torch.no_grad()
def acdc(
    model: nn.Module, graph: ResidualGraph, clean: Tensor, corrupt: Tensor, positions: Tensor, threshold: float
) -> ACDCResult:
    """Greedy edge pruning by the KL threshold τ = ``threshold`` (see the module docstring)."""
    _check(graph, clean, corrupt)
    if threshold < 0:
        raise UsageError(f"the ACDC threshold must be ≥ 0, got {threshold}")
    if positions.shape != clean.shape or positions.dtype != torch.bool or not positions.any():
        raise UsageError(
            f"ACDC positions must be a boolean [B, T] mask {tuple(clean.shape)} with at least one position"
        )
    corrupt_w = writer_values(model, graph, corrupt)
    full = logits_of(model(clean))
    removed: list[Edge] = []
    score = {e: 0.0 for e in graph.edges}
    incoming: dict[str, list[Edge]] = {}
    outgoing: dict[str, int] = {}  # writer → its edges not (yet) removed
    for e in graph.edges:
        incoming.setdefault(e.reader, []).append(e)
        outgoing[e.writer] = outgoing.get(e.writer, 0) + 1
    d_now, forwards = 0.0, 2
    for r in sorted(graph.readers, key=lambda r: -r.order):
        if r.node != "logits" and not outgoing.get(r.node):  # nothing downstream reads this component any more
            removed += incoming.get(r.name, [])
            for e in incoming.get(r.name, []):
                outgoing[e.writer] -= 1
            continue
        for e in incoming.get(r.name, []):
            with edges_patched(model, graph, removed + [e], corrupt_w):
                d_new = float(mean_kl(full, logits_of(model(clean)), positions))
            forwards += 1
            score[e] = d_new - d_now
            if d_new - d_now < threshold:
                removed.append(e)
                outgoing[e.writer] -= 1
                d_now = d_new
    gone = set(removed)
    kept = tuple(e for e in graph.edges if e not in gone)
    eff = Effects(graph.edges, torch.tensor([score[e] for e in graph.edges]), 0.0, 0.0, forwards, 0, signed=False)
    return ACDCResult(kept, eff, d_now, threshold)

"""Faithfulness of a circuit: the task loss of the circuit alone, beside the full model, the empty circuit
and the rock, with bootstrap intervals over examples.

Shapes: B examples, T positions, d residual width.

*Circuit alone*: every edge (or node) outside the circuit carries an ablated value instead of its own:

- ``mean``      the writer's mean output over the task's eval inputs, per position, [1, T, d]
- ``resample``  the writer's output on another eval input: example i reads example (i + o_i) mod E with
                o_i drawn uniformly from 1..E−1 (seeded; never itself, drawn with replacement)
- ``corrupt``   the writer's output on the eval input's corrupted partner (what the patching effects used)

The eval inputs are the clean inputs, except for a classifier task (parens) where they are the clean and
the corrupted inputs together, each scored on its own label.

With L the mean per-example loss on the clean answers (nats),

    recovered = (L_empty − L_circuit) / (L_empty − L_full)

(1 = the circuit does everything the model does, 0 = no better than ablating every edge), by
:func:`mechscope.evals.metrics.loss_recovered`: when the gap L_empty − L_full is within two standard errors of
zero (over the examples' paired losses) ``recovered`` is NaN, its interval too, and ``recovered_note`` says why.
The interval is the 2.5–97.5 percentile of 1000 bootstrap resamples of the examples (paired: the same resample
for every loss; a resample whose own gap is too small to divide by is left out). A circuit whose loss is above the rock's explains nothing, whatever it recovers
(``worse_than_rock``). Resample ablation draws once; the interval covers examples, not that draw.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mechscope.circuits.patching import Component
from mechscope.circuits.residual import Edge, ResidualGraph, edges_patched, writer_values
from mechscope.circuits.tasks import CircuitTask
from mechscope.errors import UsageError
from mechscope.evals import metrics as M
from mechscope.sites import capture, patch

Ablation = Literal["mean", "resample", "corrupt"]
ABLATIONS = ("mean", "resample", "corrupt")


def _ablated(values: dict[str, Tensor], corrupt: dict[str, Tensor], how: str, seed: int = 0) -> dict[str, Tensor]:
    if how == "mean":
        return {k: v.mean(0, keepdim=True) for k, v in values.items()}
    if how == "resample":
        E = next(iter(values.values())).shape[0]
        if E < 2:
            raise UsageError("resample ablation needs at least 2 examples")
        other = (torch.arange(E) + torch.randint(1, E, (E,), generator=torch.Generator().manual_seed(seed))) % E
        return {k: v[other] for k, v in values.items()}
    if how == "corrupt":
        return corrupt
    raise UsageError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")


def _summary(
    task: CircuitTask, full: Tensor, circuit: Tensor, empty: Tensor, how: str, n_boot: int, seed: int
) -> dict[str, Any]:
    rock = task.rock().double()
    losses = {"full": full.double(), "circuit": circuit.double(), "empty": empty.double(), "rock": rock}
    B = full.shape[0]
    idx = torch.randint(0, B, (n_boot, B), generator=torch.Generator().manual_seed(seed))
    boot = {k: v[idx].mean(1) for k, v in losses.items()}  # [n_boot]

    def rec(m: dict[str, Tensor], gap_se: float = math.nan) -> M.Recovered:
        return M.loss_recovered(
            clean=float(m["full"]), ablated=float(m["empty"]), spliced=float(m["circuit"]), gap_se=gap_se
        )

    ci = lambda t: [float(t.nanquantile(0.025)), float(t.nanquantile(0.975))]  # noqa: E731
    means = {k: v.mean() for k, v in losses.items()}
    out: dict[str, Any] = {"ablation": how, "examples": B}
    for k in losses:
        out[f"loss_{k}"] = float(means[k])
        out[f"loss_{k}_ci"] = ci(boot[k])
    point = rec(means, M.clustered_stderr(losses["empty"] - losses["full"], torch.ones(B)))
    out["recovered"] = point.value
    if point.reason is None:
        out["recovered_ci"] = ci(
            torch.tensor([rec({k: v[i] for k, v in boot.items()}).value for i in range(n_boot)], dtype=torch.float64)
        )
    else:
        out["recovered_ci"] = [math.nan, math.nan]
    out["recovered_note"] = point.reason
    out["worse_than_rock"] = bool(means["circuit"] > means["rock"])
    return out


@torch.no_grad()
def edge_faithfulness(
    model: nn.Module,
    graph: ResidualGraph,
    kept: Sequence[Edge],
    task: CircuitTask,
    ablation: str = "mean",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Faithfulness of the edge circuit ``kept`` on the residual graph (every other edge ablated)."""
    x, pairs, _ = task.evaluation
    values = writer_values(model, graph, x)
    source = _ablated(values, writer_values(model, graph, pairs) if ablation == "corrupt" else {}, ablation, seed)
    kept_set = set(kept)
    out_full = model(x)
    with edges_patched(model, graph, [e for e in graph.edges if e not in kept_set], source):
        out_circuit = model(x)
    with edges_patched(model, graph, list(graph.edges), source):
        out_empty = model(x)
    res = _summary(task, task.loss(out_full), task.loss(out_circuit), task.loss(out_empty), ablation, n_boot, seed)
    return {**res, "edges_kept": len(kept_set), "edges_total": len(graph.edges)}


@torch.no_grad()
def node_faithfulness(
    model: nn.Module,
    nodes: Sequence[Component],
    kept: Sequence[Component],
    task: CircuitTask,
    ablation: str = "mean",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Faithfulness of the node circuit ``kept`` ⊆ ``nodes``: every other node takes its ablated value at its
    site (all at once; a model without a residual graph, e.g. SmolLM2, is scored this way)."""
    if not nodes:
        raise UsageError("the graph has no nodes: name at least one site")
    sites = sorted({n.site for n in nodes})
    x, pairs, _ = task.evaluation
    with capture(model, sites) as acts:
        out_full = model(x)
    clean_acts = dict(acts)
    corrupt_acts: dict[str, Tensor] = {}
    if ablation == "corrupt":
        with capture(model, sites) as acts:
            model(pairs)
        corrupt_acts = dict(acts)
    source = _ablated(clean_acts, corrupt_acts, ablation, seed)
    kept_set = set(kept)

    def run(ablated: list[Component]) -> Any:
        by_site: dict[str, list[Component]] = {}
        for n in ablated:
            by_site.setdefault(n.site, []).append(n)

        def fn(site: str) -> Callable[[Tensor], Tensor]:
            width = source[site].shape[-1]
            mask = torch.zeros(width, dtype=torch.bool)  # [d] the coordinates of the site's ablated nodes
            for n in by_site[site]:
                mask[slice(n.start, n.stop)] = True

            def f(act: Tensor) -> Tensor:  # one select for all of a site's nodes (thousands of SAE latents)
                return torch.where(mask.to(act.device), source[site].expand_as(act).to(act.dtype), act)

            return f

        with contextlib.ExitStack() as stack:
            for s in by_site:
                stack.enter_context(patch(model, s, fn(s)))
            return model(x)

    out_circuit = run([n for n in nodes if n not in kept_set])
    out_empty = run(list(nodes))
    res = _summary(task, task.loss(out_full), task.loss(out_circuit), task.loss(out_empty), ablation, n_boot, seed)
    return {**res, "nodes_kept": len(kept_set), "nodes_total": len(nodes)}

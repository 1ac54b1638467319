"""Node effects between a clean and a corrupted input: exact activation patching, and attribution
patching (AtP, Nanda 2023; Kramár et al. 2024) checked against it.

Shapes: B examples, T positions, d a site's width, N nodes.

A *node* is a site, or a slice [start, stop) of a site's last dimension (one head's part of a
projection's input). The metric m maps the model's output to a scalar (mean over examples), e.g. the
logit difference or the log-probability of the right answer.

- **exact (noising)** effect of node i: Δᵢ = m(model(clean) with aᵢ ← aᵢ(corrupt)) − m(model(clean)).
  One forward per node (all B examples at once) plus one clean and one corrupted forward.
- **AtP**: the first-order estimate Δ̂ᵢ = Σ (aᵢ(corrupt) − aᵢ(clean)) · ∂m/∂aᵢ |clean, summed over every
  position and coordinate of the node; one clean forward + backward and one corrupted forward for all
  nodes together.

AtP is exact when m is linear in the node's activation along the path to the output; a saturated
softmax or a nonlinearity in between makes it wrong, which is why every AtP run here can be scored
against exact patching (:func:`agreement`). The AtP* corrections (the attention-saturation fix and
GradDrop) are in :mod:`mechscope.circuits.atpstar`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from torch import Tensor, nn

from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.sites import capture, patch

Metric = Callable[[Tensor], Tensor]
"""The model's output → a scalar tensor (differentiable for AtP)."""


@dataclass(frozen=True)
class Component:
    """One component: a site, or the slice [start, stop) of the site's last dimension."""

    site: str
    """The site the node lives at (see :mod:`mechscope.sites`)."""
    start: int | None = None
    """First coordinate of the node's slice of the last dimension (None: the whole site)."""
    stop: int | None = None
    """One past the last coordinate of the slice."""

    @property
    def name(self) -> str:
        return self.site if self.start is None else f"{self.site}[{self.start}:{self.stop}]"

    def part(self, act: Tensor) -> Tensor:
        """The node's part of the site's activation [..., d] → [..., stop − start] (or the whole)."""
        return act if self.start is None else act[..., self.start : self.stop]

    def replaced(self, act: Tensor, new: Tensor) -> Tensor:
        """``act`` with the node's part set from ``new`` (an activation of the same site)."""
        if self.start is None:
            return new
        out = act.clone()
        out[..., self.start : self.stop] = new[..., self.start : self.stop]
        return out


class Named(Protocol):
    """What :class:`Effects` scores: a node (:class:`Component`) or an edge of the residual graph."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Effects:
    """Per-node effects of one method, with what they cost."""

    nodes: tuple[Named, ...]
    effects: Tensor
    """[N] change of the metric when the node takes its corrupted value (exact or estimated)."""
    clean_metric: float
    corrupt_metric: float
    forwards: int
    """Forward passes used (each over all B examples)."""
    backwards: int
    """Backward passes used."""
    signed: bool = True
    """False when the method scores only |effect| (AtP* with GradDrop); :func:`agreement` then compares magnitudes."""

    def ranking(self) -> list[tuple[str, float]]:
        """(node name, effect) by decreasing |effect|."""
        order = self.effects.abs().argsort(descending=True)
        return [(self.nodes[i].name, float(self.effects[i])) for i in order]


def _check(nodes: Sequence[Component], clean: Tensor, corrupt: Tensor) -> None:
    if not nodes:
        raise UsageError("the graph has no nodes: name at least one site")
    if clean.shape != corrupt.shape:
        raise UsageError(
            f"clean inputs {tuple(clean.shape)} and corrupted inputs {tuple(corrupt.shape)} differ in shape; "
            "positions must align for patching, so pad or cut them to the same length"
        )


@contextlib.contextmanager
def grad_leaves(model: nn.Module, sites: list[str]) -> Iterator[dict[str, Tensor]]:
    """Inside, each forward adds a zero leaf (``requires_grad``) to every site's activation and records it, so
    ∂m/∂leaf is ∂m/∂(the site's activation) with every path through it intact, even when nothing upstream
    of the site requires grad. Yields ``site → leaf`` (the last forward's)."""
    leaves: dict[str, Tensor] = {}

    def add(act: Tensor, site: str) -> Tensor:
        leaves[site] = torch.zeros_like(act, requires_grad=True)
        return act + leaves[site]

    with contextlib.ExitStack() as stack:
        for s in sites:
            stack.enter_context(patch(model, s, partial(add, site=s)))
        yield leaves


def _site_values(
    model: nn.Module, sites: list[str], inputs: Tensor, detach: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    with capture(model, sites, detach=detach) as acts:
        out = model(inputs)
    return out, {s: acts[s] for s in sites}


@torch.no_grad()
def exact_effects(
    model: nn.Module,
    nodes: Sequence[Component],
    clean: Tensor,
    corrupt: Tensor,
    metric: Metric,
    world: World | None = None,
) -> Effects:
    """Δᵢ for every node by patching its corrupted value into the clean run (one forward per node). ``world``: the
    torchrun ranks that share the patches (node i on rank i mod N, :meth:`~mechscope.distributed.World.map`); every
    rank returns what one process computes, forward passes counted as one process counts them."""
    _check(nodes, clean, corrupt)
    sites = sorted({n.site for n in nodes})
    clean_out = model(clean)
    corrupt_out, corrupt_acts = _site_values(model, sites, corrupt)
    base = metric(clean_out)
    _check_metric(base, metric(corrupt_out))

    def effect(i: int) -> Tensor:
        node = nodes[i]
        with patch(model, node.site, partial(node.replaced, new=corrupt_acts[node.site])):
            return (metric(model(clean)) - base).detach().cpu()

    effects = (world or World()).map(effect, len(nodes), "the gather of every rank's exact patches")
    return Effects(
        tuple(nodes), torch.stack(effects).float(), float(base), float(metric(corrupt_out)), len(nodes) + 2, 0
    )


def atp_effects(
    model: nn.Module, nodes: Sequence[Component], clean: Tensor, corrupt: Tensor, metric: Metric
) -> Effects:
    """Δ̂ᵢ = Σ (aᵢ(corrupt) − aᵢ(clean)) · ∂m/∂aᵢ for every node, from one clean forward + backward and one
    corrupted forward."""
    _check(nodes, clean, corrupt)
    sites = sorted({n.site for n in nodes})
    with torch.no_grad():
        corrupt_out, corrupt_acts = _site_values(model, sites, corrupt)
    with torch.enable_grad(), grad_leaves(model, sites) as leaves:
        clean_out, clean_acts = _site_values(model, sites, clean, detach=False)
        m = metric(clean_out)
        if not m.requires_grad:
            raise UsageError(
                "the metric does not depend on the model's output (no gradient reaches it); "
                "compute it from the logits the model returns"
            )
        grads = dict(zip(sites, torch.autograd.grad(m, [leaves[s] for s in sites], allow_unused=True)))
    _check_metric(m.detach(), metric(corrupt_out))
    effects = []
    for node in nodes:
        g = grads[node.site]
        if g is None:  # the site does not reach the metric: its effect is exactly zero
            effects.append(torch.zeros(()))
            continue
        delta = node.part(corrupt_acts[node.site]) - node.part(clean_acts[node.site].detach())
        effects.append((delta * node.part(g)).sum())
    return Effects(
        tuple(nodes), torch.stack(effects).detach().float(), float(m.detach()), float(metric(corrupt_out)), 2, 1
    )


def _check_metric(clean: Tensor, corrupt: Tensor) -> None:
    if clean.ndim != 0:
        raise UsageError(f"the metric must return a scalar (mean over examples), got shape {tuple(clean.shape)}")
    if not torch.isfinite(clean) or not torch.isfinite(corrupt):
        raise UsageError(f"the metric is not finite (clean {float(clean)}, corrupted {float(corrupt)})")


def agreement(approx: Effects, exact: Effects, top: float = 0.2) -> dict[str, float]:
    """How well ``approx`` ranks nodes like ``exact`` (same nodes): Spearman's ρ of the effects, and the AUC of
    |approx| at recovering the top ``top`` fraction of nodes by |exact| (at least one node).

    ρ = 1 and AUC = 1 mean the cheap method orders the nodes exactly as patching does; AUC 0.5 is chance.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    if [n.name for n in approx.nodes] != [n.name for n in exact.nodes]:
        raise ValueError("agreement needs the same nodes in the same order")
    a, e = approx.effects.double(), exact.effects.double()
    if not approx.signed:  # a magnitude-only score is ranked against |exact|
        e = e.abs()
    n_top = max(1, round(top * len(e)))
    positive = torch.zeros(len(e), dtype=torch.bool)
    positive[e.abs().argsort(descending=True)[:n_top]] = True
    out = {
        "spearman": float(spearmanr(a.numpy(), e.numpy()).statistic) if len(e) > 1 else float("nan"),
        "top_fraction": top,
        "n_top": n_top,
    }
    out["auc_top"] = float(roc_auc_score(positive.numpy(), a.abs().numpy())) if 0 < n_top < len(e) else float("nan")
    out["max_abs_error"] = float((a - e).abs().max())
    return out

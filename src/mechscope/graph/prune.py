"""Influence, pruning and the two fidelity scores of an attribution graph (Ameisen et al. 2025, §"Pruning"
and §"Evaluating attribution graphs").

Shapes: N nodes in the order of :mod:`mechscope.graph.attribute` (latents, errors, tokens, logits). Every function
takes A either as the dense [N, N] matrix or as its target rows [n_t, N] with ``targets`` [n_t] their node numbers
(the other rows, of error and token nodes, are zero: they have no inputs). The rows keep memory linear in the prompt
length (n_t × N), where the dense matrix is quadratic; the results are the same.

    Â = |A| with each row divided by its sum (a target's incoming weights sum to 1; rows without inputs stay 0)
    B = Â + Â² + Â³ + … = (I − Â)⁻¹ − I          total influence along paths of every length
    influence = w B,                              w = the logit nodes' probabilities, 0 elsewhere   [N]

Â is nilpotent (edges only go forward in layer order), so the series is finite; it is summed by repeated
products until it vanishes (no matrix inverse, no conditioning problem).

Pruning: nodes are sorted by influence and the fewest that reach ``node_threshold`` of the total are kept
(tokens and logits always; BOS's token node only when it is a node, not with ``Nodes.const_pos0`` alone); the
graph restricted to them is re-normalised, each edge scored by Â[t, s]·(influence_t + w_t), and the fewest edges
reaching ``edge_threshold`` of the total edge score kept. Latent and error nodes left with no outgoing edge, and
latents left with no incoming edge, are dropped (repeated until nothing changes).

Scores (on the unpruned graph):

    replacement  = Σ_token influence / (Σ_token influence + Σ_error influence)
                   the share of the tokens'-and-errors' influence on the logits that starts at a token, i.e.
                   reaches the output without passing into an error node's place in the graph
    completeness = Σ_n (1 − Σ_{s error} Â[n, s]) (influence_n + w_n) / Σ_n (influence_n + w_n)
                   the share of every node's inputs that comes from non-error nodes, weighted by that node's
                   influence on the logits (a partial credit version of the replacement score)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from mechscope.graph import dense
from mechscope.graph.attribute import Nodes


def normalise_rows(A: Tensor) -> Tensor:
    """|A| with rows scaled to sum to 1 (all-zero rows stay zero: 0 / tiny = 0). [R, N] → [R, N], one copy."""
    M = A.abs()
    return M.div_(M.sum(1, keepdim=True).clamp_min(1e-300))


def _targets(A: Tensor, targets: Tensor | None) -> Tensor:
    """The node number of each row of ``A`` (every node for a dense [N, N] matrix)."""
    return torch.arange(A.shape[0]) if targets is None else targets


def influence(A_hat: Tensor, weights: Tensor, max_len: int = 10_000, targets: Tensor | None = None) -> Tensor:
    """w (Â + Â² + …): every node's total influence on the weighted targets. [N].
    With ``targets``, A_hat holds only those rows (the only non-zero ones): term @ Â = term[targets] @ Â[targets]."""
    rows = _targets(A_hat, targets)
    term = weights[rows] @ A_hat
    total = term.clone()
    for _ in range(max_len):
        term = term[rows] @ A_hat
        if not bool(term.abs().max() > 0):
            return total
        total += term
    raise RuntimeError("influence did not converge: the graph has a cycle (edges must go forward in layer order)")


def logit_weights(nodes: Nodes) -> Tensor:
    """[N] the logit nodes' probabilities, 0 elsewhere."""
    w = torch.zeros(nodes.size, dtype=torch.float64)
    w[nodes.size - nodes.n_logit :] = nodes.logit_probs.double()
    return w


def _cutoff(scores: Tensor, share: float) -> float:
    """The smallest score among the fewest largest scores that reach ``share`` of the total."""
    s = scores.flatten().sort(descending=True).values
    total = float(s.sum())
    if total <= 0:
        return float("inf")
    cum = s.cumsum(0) / total
    i = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), s.numel() - 1)
    return float(s[i])


@dataclass(frozen=True, eq=False)
class Pruned:
    node_mask: Tensor
    """[N] bool, nodes kept."""
    edge_rows: Tensor
    """[n_t, N] bool, edges kept into each target (row r: node ``targets[r]``)."""
    influence: Tensor
    """[N] each node's influence on the logits (unpruned graph)."""
    targets: Tensor
    """[n_t] the node number of each row of :attr:`edge_rows`."""

    @cached_property
    def edges(self) -> Tensor:
        """[E, 2] (target, source) of every kept edge, sorted by target then source."""
        return dense.pairs(self.edge_rows, self.targets)

    @cached_property
    def edge_mask(self) -> Tensor:
        """[N, N] bool, edges kept (rows: targets), built once on first use under the cap of
        :func:`mechscope.graph.dense.build`: N² bytes. Nothing in mechscope needs it (:attr:`edges` lists them)."""
        return dense.build(self.edge_rows, self.targets, self.node_mask.numel(), "edge mask")


def prune(
    A: Tensor, nodes: Nodes, node_threshold: float, edge_threshold: float, targets: Tensor | None = None
) -> Pruned:
    """Keep the nodes and edges that carry ``node_threshold`` / ``edge_threshold`` of the influence.
    A: [N, N], or its target rows [n_t, N] with ``targets``."""
    rows = _targets(A, targets)
    w = logit_weights(nodes)
    infl = influence(normalise_rows(A), w, targets=targets)
    fixed = torch.zeros(nodes.size, dtype=torch.bool)
    fixed[nodes.n_lat + nodes.n_err :] = True  # tokens and logits
    if nodes.const_pos0 and not nodes.bos_token_node:
        fixed[nodes.token_index(0)] = False  # BOS is part of the constant: it has no edges to keep
    keep = (infl >= _cutoff(infl, node_threshold)) | fixed
    A_hat = normalise_rows(A * keep[rows, None] * keep[None, :])
    edge_score = A_hat.mul_((influence(A_hat, w, targets=targets) + w)[rows, None])  # A_hat is not used again
    del A_hat
    edges = (edge_score >= _cutoff(edge_score[edge_score > 0], edge_threshold)) & (edge_score > 0)
    del edge_score
    inner = torch.zeros(nodes.size, dtype=torch.bool)
    inner[: nodes.n_lat + nodes.n_err] = True
    latent = torch.zeros(nodes.size, dtype=torch.bool)
    latent[: nodes.n_lat] = True
    while True:
        edges &= keep[rows, None] & keep[None, :]
        has_input = torch.zeros(nodes.size, dtype=torch.bool)
        has_input[rows] = edges.any(1)
        new = keep & ~(inner & ~edges.any(0)) & ~(latent & ~has_input)
        if bool((new == keep).all()):
            break
        keep = new
    return Pruned(keep, edges, infl, rows)


def scores(A: Tensor, nodes: Nodes, targets: Tensor | None = None) -> dict[str, float]:
    """Replacement and completeness scores of the (unpruned) graph; formulas in the module docstring.
    A: [N, N], or its target rows [n_t, N] with ``targets``."""
    rows = _targets(A, targets)
    w = logit_weights(nodes)
    A_hat = normalise_rows(A)
    infl = influence(A_hat, w, targets=targets)
    err = slice(nodes.n_lat, nodes.n_lat + nodes.n_err)
    tok = slice(nodes.n_lat + nodes.n_err, nodes.n_lat + nodes.n_err + nodes.T)
    t, e = float(infl[tok].sum()), float(infl[err].sum())
    out_w = infl + w
    non_error = torch.ones(nodes.size, dtype=A_hat.dtype)  # a node without inputs has no error share
    non_error[rows] = 1 - A_hat[:, err].sum(1)
    return {
        "replacement_score": t / (t + e) if t + e > 0 else float("nan"),
        "completeness_score": float((non_error * out_w).sum() / out_w.sum()),
        "error_influence_share": e / float(infl[: nodes.size - nodes.n_logit].sum()),
    }

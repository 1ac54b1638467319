"""Influence, pruning and the two fidelity scores of an attribution graph (Ameisen et al. 2025, §"Pruning"
and §"Evaluating attribution graphs").

Shapes: N nodes in the order of :mod:`mechscope.graph.attribute` (latents, errors, tokens, logits).

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

import torch
from torch import Tensor

from mechscope.graph.attribute import Nodes


def normalise_rows(A: Tensor) -> Tensor:
    """|A| with rows scaled to sum to 1 (all-zero rows stay zero). [N, N] → [N, N]."""
    M = A.abs()
    s = M.sum(1, keepdim=True)
    return torch.where(s > 0, M / s.clamp_min(1e-300), M)


def influence(A_hat: Tensor, weights: Tensor, max_len: int = 10_000) -> Tensor:
    """w (Â + Â² + …): every node's total influence on the weighted targets. [N]."""
    term = weights @ A_hat
    total = term.clone()
    for _ in range(max_len):
        term = term @ A_hat
        if not bool(term.abs().max() > 0):
            return total
        total += term
    raise RuntimeError("influence did not converge: the graph has a cycle (edges must go forward in layer order)")


def logit_weights(nodes: Nodes) -> Tensor:
    """[N] the logit nodes' probabilities, 0 elsewhere."""
    w = torch.zeros(nodes.size, dtype=torch.float64)
    w[nodes.size - nodes.n_logit:] = nodes.logit_probs.double()
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
    edge_mask: Tensor
    """[N, N] bool, edges kept (rows: targets)."""
    influence: Tensor
    """[N] each node's influence on the logits (unpruned graph)."""


def prune(A: Tensor, nodes: Nodes, node_threshold: float, edge_threshold: float) -> Pruned:
    """Keep the nodes and edges that carry ``node_threshold`` / ``edge_threshold`` of the influence."""
    w = logit_weights(nodes)
    infl = influence(normalise_rows(A), w)
    fixed = torch.zeros(nodes.size, dtype=torch.bool)
    fixed[nodes.n_lat + nodes.n_err:] = True  # tokens and logits
    if nodes.const_pos0 and not nodes.bos_token_node:
        fixed[nodes.token_index(0)] = False  # BOS is part of the constant: it has no edges to keep
    keep = (infl >= _cutoff(infl, node_threshold)) | fixed
    A_kept = A * keep[:, None] * keep[None, :]
    A_hat = normalise_rows(A_kept)
    edge_score = A_hat * (influence(A_hat, w) + w)[:, None]
    edges = (edge_score >= _cutoff(edge_score[edge_score > 0], edge_threshold)) & (edge_score > 0)
    inner = torch.zeros(nodes.size, dtype=torch.bool)
    inner[: nodes.n_lat + nodes.n_err] = True
    latent = torch.zeros(nodes.size, dtype=torch.bool)
    latent[: nodes.n_lat] = True
    while True:
        edges &= keep[:, None] & keep[None, :]
        new = keep & ~(inner & ~edges.any(0)) & ~(latent & ~edges.any(1))
        if bool((new == keep).all()):
            break
        keep = new
    return Pruned(keep, edges, infl)


def scores(A: Tensor, nodes: Nodes) -> dict[str, float]:
    """Replacement and completeness scores of the (unpruned) graph; formulas in the module docstring."""
    w = logit_weights(nodes)
    A_hat = normalise_rows(A)
    infl = influence(A_hat, w)
    err = slice(nodes.n_lat, nodes.n_lat + nodes.n_err)
    tok = slice(nodes.n_lat + nodes.n_err, nodes.n_lat + nodes.n_err + nodes.T)
    t, e = float(infl[tok].sum()), float(infl[err].sum())
    out_w = infl + w
    non_error = 1 - A_hat[:, err].sum(1)
    return {"replacement_score": t / (t + e) if t + e > 0 else float("nan"),
            "completeness_score": float((non_error * out_w).sum() / out_w.sum()),
            "error_influence_share": e / float(infl[: nodes.size - nodes.n_logit].sum())}

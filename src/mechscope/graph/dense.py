"""A graph's direct effects are kept as target rows; the dense [N, N] view is built from them only when asked.

Shapes: N nodes in the order of :mod:`mechscope.graph.attribute`; n_t targets (the nodes with inputs: latents and
logits), ``targets`` [n_t] their node numbers (ascending), ``rows`` [n_t, N] row r holding A[targets[r], :]. Every
other row of the dense matrix (error and token nodes) is zero. The rows are 8·n_t·N bytes, linear in the prompt
length with ``max_latents`` fixed; the dense view is 8·N² (quadratic: 8 GB at N = 32,000), so :func:`build` refuses
past :data:`MAX_GB`. Kept edges are listed as pairs [E, 2] (target, source) (:func:`pairs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.errors import UsageError

MAX_GB = 4.0
"""The cap, in GiB, on a dense [N, N] view (:func:`build`); raise it (``mechscope.graph.dense.MAX_GB``) to build
larger ones, or read the target rows instead."""


def row_index(targets: Tensor, size: int) -> Tensor:
    """[N] the row of each node in the target rows, −1 for a node that is not a target."""
    where = torch.full((size,), -1, dtype=torch.long)
    where[targets] = torch.arange(targets.numel())
    return where


def build(rows: Tensor, targets: Tensor, size: int, what: str = "adjacency", max_gb: float | None = None) -> Tensor:
    """[N, N] (N = ``size``) with ``rows[r]`` at row ``targets[r]`` and zeros elsewhere, in ``rows``' dtype. Refuses,
    naming the cap, when it would take more than ``max_gb`` GiB (default :data:`MAX_GB`)."""
    if rows.shape[0] == size and bool((targets == torch.arange(size)).all()):
        return rows  # already dense
    cap = MAX_GB if max_gb is None else max_gb
    need = size * size * rows.element_size()
    if need > cap * 2**30:
        raise UsageError(
            f"`max_gb` {cap:g}: the dense [N, N] {what} of {size:,} nodes would take {need / 2**30:.1f} GiB; read its "
            "target rows (`rows`, `targets`) instead, or raise the cap (mechscope.graph.dense.MAX_GB)"
        )
    out = torch.zeros(size, size, dtype=rows.dtype)
    out[targets] = rows
    return out


def pairs(edge_rows: Tensor, targets: Tensor) -> Tensor:
    """[E, 2] (target, source) of the True entries of ``edge_rows`` [n_t, N], sorted by target then source (the
    order of the dense mask's ``nonzero()``)."""
    r, s = edge_rows.nonzero(as_tuple=True)
    out = torch.stack([targets[r], s], 1)
    if out.shape[0] and not bool((targets[1:] > targets[:-1]).all()):  # rows not in node order
        out = out[(out[:, 0] * edge_rows.shape[1] + out[:, 1]).argsort()]
    return out


def entries(rows: Tensor, targets: Tensor, size: int, edges: Tensor) -> Tensor:
    """[E] A[t, s] for each pair (t, s) of ``edges`` [E, 2] (0 where t is not a target: its row is zero)."""
    where = row_index(targets, size)[edges[:, 0]]
    vals = rows[where.clamp_min(0), edges[:, 1]]
    return torch.where(where >= 0, vals, torch.zeros_like(vals))

"""Sparse forward/backward for SAEs whose rows keep at most k latents (TopK, BatchTopK, Matryoshka, AuxK).

Shapes: B rows, d width, n latents, k kept latents per row.

Only the encoder's forward matmul ``pre = (x − b_dec) W_enc + b_enc`` ([B, d] @ [d, n]) is dense; it
runs under no_grad, and the caller picks (acts, idx) from it (top-k, or top-k among dead latents).
Everything else touches only the B·k chosen (row, latent) pairs:

- decoder forward:  x̂_b = Σ_j acts[b, j] W_dec[idx[b, j]]                       (embedding-bag)
- decoder backward: ∂acts[b, j] = ⟨g_b, W_dec[idx[b, j]]⟩,  ∂W_dec[i] = Σ_{(b,j): idx=i} acts[b, j] g_b
- encoder backward: with h[b, j] = ∂acts[b, j]·1[acts[b, j] > 0] (ReLU),
  ∂b_enc[i] = Σ_{(b,j): idx=i} h[b, j],   ∂W_enc[:, i] = Σ_{(b,j): idx=i} h[b, j] (x_b − b_dec),
  ∂b_dec = −W_enc ∂b_enc   (the sum over rows of ∂(x − b_dec), folded into one mat-vec).

The per-latent sums are one sparse [n, B] @ dense [B, d] product (CSR), built once per batch from
the sorted indices and shared by the decoder and encoder backward. That is 4·B·k·d FLOPs beside the
2·B·d·n of the dense matmul, which is why a step costs little more than that matmul.

Ragged codes (BatchTopK keeps a different number of latents per row): the same kernels take the E kept
entries flat, acts, idx : [E], with the row of each entry (``row_of`` : [E], non-decreasing) and the
embedding-bag offsets of the rows (:func:`ragged_bags`), so a row costs what it keeps and no entry is
padding. (Padding every row to the batch's largest count costs the largest count, not the mean: on the
benchmark's data BatchTopK rows keep 32 latents on average but up to 150–220.)

Grouped decode (Matryoshka's nested prefixes): with bags, the decoder sums each row's entries per group
instead of per row, P[g, b] = Σ_{e: bag(e) = (g, b)} acts[e] W_dec[idx[e]] : [G, B, d], in the same one
embedding-bag pass over the entries; its backward is the same two kernels with the bag (b, g) in place
of the row b: ∂acts[e] = ⟨∂P[bag(e)], W_dec[idx[e]]⟩ and ∂W_dec[i] = Σ_{e: idx[e]=i} acts[e] ∂P[bag(e)].
(Group-major bags keep each group's [B, d] block contiguous for the per-level loss passes.)
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd import Function


class Pattern(NamedTuple):
    """Where the non-zeros of [B, n] codes sit, sorted by latent (the CSR layout of the [n, B] transpose)."""

    idx: Tensor
    """[B, k] (or ragged [E]) latent index of each kept code."""
    order: Tensor
    """[B·k] permutation that sorts idx.flatten() by latent."""
    rows: Tensor
    """[B·k] row b of each sorted non-zero."""
    crow: Tensor
    """[n + 1] CSR row pointers over latents."""
    n: int


def make_pattern(idx: Tensor, n: int, row_of: Tensor | None = None) -> Pattern:
    """The transposed CSR layout of codes with indices idx: [B, k], or ragged idx: [E] with the row of each
    entry row_of: [E]."""
    flat = idx.reshape(-1)
    # Latent indices fit in int32 (n < 2³¹), whose stable sort is several times faster than int64's; same order.
    order = torch.argsort(flat.to(torch.int32) if n < 2**31 else flat, stable=True)
    rows = torch.div(order, idx.shape[1], rounding_mode="floor") if row_of is None else row_of[order]
    crow = torch.zeros(n + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=n).cumsum(0)
    return Pattern(idx, order, rows, crow, n)


def scatter_rows(pattern: Pattern, values: Tensor, dense: Tensor, cols: Tensor | None = None) -> Tensor:
    """Σ over (b, j) with idx[b, j] = i of values[b, j] · dense[col(b, j)], for every latent i. → [n, d].

    values: [B, k]; dense: [C, d]; col(b, j) = b (C = B) unless ``cols`` ([B·k], in idx.flatten() order)
    names another row of dense for each entry (a bag of a grouped decode). A CSR [n, C] @ [C, d] product.
    """
    C = dense.shape[0]
    vals = values.reshape(-1)[pattern.order].to(dense.dtype)
    col_idx = pattern.rows if cols is None else cols[pattern.order]
    with warnings.catch_warnings():  # the CSR constructor warns on every call that CSR support is "beta"
        warnings.simplefilter("ignore")
        S = torch.sparse_csr_tensor(pattern.crow, col_idx, vals, (pattern.n, C), check_invariants=False)
    return S @ dense


class Bags(NamedTuple):
    """Which output row (bag) each of the B·k entries is summed into, entries of a bag contiguous in
    idx.flatten() order (the embedding-bag layout). Without bags, codes are [B, k] and bag = row."""

    offsets: Tensor
    """[C] index in idx.flatten() where each bag starts (non-decreasing; equal for an empty bag)."""
    of_entry: Tensor
    """[B·k] bag of each entry, non-decreasing."""


def _bags_of(of_entry: Tensor, count: int) -> Bags:
    sizes = torch.bincount(of_entry, minlength=count)
    return Bags(sizes.cumsum(0) - sizes, of_entry)


def ragged_bags(row_of: Tensor, B: int) -> Bags:
    """One bag per row for ragged entries whose rows row_of: [E] are non-decreasing (rows may be empty)."""
    return _bags_of(row_of, B)


def range_bags(idx: Tensor, row_of: Tensor, B: int, bounds: Tensor) -> tuple[Bags, Tensor]:
    """Bags (g, b) = row b's entries whose latent lies in group g = [w_{g−1}, w_g) (w_0 = 0), for bounds
    w_1 < … < w_G = n : [G], and the permutation ``perm`` : [E] that makes each bag contiguous (entries
    taken in the order idx[perm], row_of[perm]). Ragged idx, row_of: [E]. Bag (g, b) is output row g·B + b,
    so the decode reshapes to [G, B, d] with each group's rows contiguous; a group with no entry in a row
    is an empty bag (its output row is 0)."""
    G = bounds.numel()
    group = torch.bucketize(idx, bounds[:-1], right=True)  # [E]: g with w_g ≤ idx < w_{g+1} (0-based)
    key = group * B + row_of
    perm = torch.argsort(key.to(torch.int32) if B * G < 2**31 else key, stable=True)
    return _bags_of(key[perm], B * G), perm


def gather_dots(idx: Tensor, W: Tensor, g: Tensor, bags: Bags | None = None) -> Tensor:
    """out[e] = ⟨g[bag(e)], W[idx[e]]⟩ without materialising W[idx]; idx: [B, k] with bag = row by default, or
    ragged [E] with ``bags``. W: [n, d], g: [C, d] → idx's shape."""
    if bags is None:
        B, k = idx.shape
        bags = Bags(
            torch.arange(0, B * k, k, device=idx.device), torch.arange(B, device=idx.device).repeat_interleave(k)
        )
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        g, W, idx.reshape(-1), bags.offsets, bags.of_entry, 0, -1
    ).reshape(idx.shape)


class SparseDecode(Function):
    """out[c] = Σ_{(b,j) in bag c} acts[b, j] W_dec[idx[b, j]] (no bias; bag = row unless ``bags`` is given);
    gradients for acts and W_dec only at the B·k entries."""

    @staticmethod
    def forward(ctx, acts: Tensor, W_dec: Tensor, pattern: Pattern, bags: Bags | None = None) -> Tensor:
        if bags is None:
            B, k = acts.shape
        offsets = bags.offsets if bags is not None else torch.arange(0, B * k, k, device=acts.device)
        out = torch.nn.functional.embedding_bag(
            pattern.idx.reshape(-1), W_dec, offsets, mode="sum", per_sample_weights=acts.reshape(-1)
        )
        ctx.save_for_backward(acts, W_dec)
        ctx.pattern, ctx.bags = pattern, bags
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        acts, W_dec = ctx.saved_tensors
        p: Pattern = ctx.pattern
        g = g.contiguous()
        grad_acts = gather_dots(p.idx, W_dec, g, ctx.bags) if ctx.needs_input_grad[0] else None
        cols = None if ctx.bags is None else ctx.bags.of_entry  # None: the pattern's own rows, bag = row
        grad_W = scatter_rows(p, acts, g, cols) if ctx.needs_input_grad[1] else None
        return grad_acts, grad_W, None, None


class SparseEncodeGrad(Function):
    """Attach the encoder's sparse gradient to codes picked under no_grad.

    Returns ``acts`` unchanged ([B, k], already ReLU'd values of the chosen pre-activations); its
    backward sends gradients to W_enc, b_enc and b_dec through only the chosen entries.
    ``x_c`` = x − b_dec: [B, d].
    """

    @staticmethod
    def forward(
        ctx, acts: Tensor, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pattern: Pattern
    ) -> Tensor:
        ctx.save_for_backward(acts, x_c, W_enc)
        ctx.pattern = pattern
        return acts.clone()

    @staticmethod
    def backward(ctx, grad_acts: Tensor):
        acts, x_c, W_enc = ctx.saved_tensors
        p: Pattern = ctx.pattern
        h = grad_acts * (acts > 0)  # ReLU: no gradient through latents whose value was clipped to 0
        grad_b_enc = torch.zeros(p.n, dtype=h.dtype, device=h.device).index_add_(0, p.idx.reshape(-1), h.reshape(-1))
        grad_W_enc = scatter_rows(p, h, x_c).t() if ctx.needs_input_grad[2] else None
        grad_b_dec = -(W_enc @ grad_b_enc) if ctx.needs_input_grad[4] else None
        return None, None, grad_W_enc, grad_b_enc if ctx.needs_input_grad[3] else None, grad_b_dec, None


def sparse_latents(
    acts: Tensor,
    idx: Tensor,
    x_c: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    W_dec: Tensor,
    bags: Bags | None = None,
    row_of: Tensor | None = None,
) -> Tensor:
    """Decode codes (acts, idx) picked from dense pre-activations, with sparse gradients to every weight.

    acts, idx: [B, k]; x_c = x − b_dec: [B, d] (detached). Returns Σ_j acts W_dec[idx] : [B, d], no bias.
    Ragged codes: acts, idx : [E] with their rows ``row_of`` : [E] and ``bags`` (:func:`ragged_bags`: [B, d]
    out; :func:`range_bags`, entries permuted as it says: one sum per (group, row), [G·B, d]).
    """
    if (bags is None) != (row_of is None):
        raise ValueError("ragged codes need both bags and row_of")
    pattern = make_pattern(idx, W_dec.shape[0], row_of)
    acts = SparseEncodeGrad.apply(acts, x_c, W_enc, b_enc, b_dec, pattern)
    return SparseDecode.apply(acts, W_dec, pattern, bags)

"""Sparse forward/backward for SAEs whose rows keep k latents (TopK, and the AuxK loss).

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
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd import Function



class Pattern(NamedTuple):
    """Where the B·k non-zeros of [B, n] codes sit, sorted by latent (the CSR layout of the [n, B] transpose)."""

    idx: Tensor
    """[B, k] latent index of each kept code."""
    order: Tensor
    """[B·k] permutation that sorts idx.flatten() by latent."""
    rows: Tensor
    """[B·k] row b of each sorted non-zero."""
    crow: Tensor
    """[n + 1] CSR row pointers over latents."""
    n: int


def make_pattern(idx: Tensor, n: int) -> Pattern:
    """The transposed CSR layout of codes with indices idx: [B, k]."""
    B, k = idx.shape
    flat = idx.reshape(-1)
    # Latent indices fit in int32 (n < 2³¹), whose stable sort is several times faster than int64's; same order.
    order = torch.argsort(flat.to(torch.int32) if n < 2**31 else flat, stable=True)
    rows = torch.div(order, k, rounding_mode="floor")
    crow = torch.zeros(n + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=n).cumsum(0)
    return Pattern(idx, order, rows, crow, n)


def scatter_rows(pattern: Pattern, values: Tensor, dense: Tensor) -> Tensor:
    """Σ over (b, j) with idx[b, j] = i of values[b, j] · dense[b], for every latent i. → [n, d].

    values: [B, k]; dense: [B, d]. A CSR [n, B] @ [B, d] product.
    """
    B = dense.shape[0]
    vals = values.reshape(-1)[pattern.order].to(dense.dtype)
    with warnings.catch_warnings():  # the CSR constructor warns on every call that CSR support is "beta"
        warnings.simplefilter("ignore")
        S = torch.sparse_csr_tensor(pattern.crow, pattern.rows, vals, (pattern.n, B), check_invariants=False)
    return S @ dense


def gather_dots(idx: Tensor, W: Tensor, g: Tensor) -> Tensor:
    """out[b, j] = ⟨g_b, W[idx[b, j]]⟩ without materialising W[idx]. idx: [B, k], W: [n, d], g: [B, d] → [B, k]."""
    B, k = idx.shape
    offsets = torch.arange(0, B * k, k, device=idx.device)
    rows = torch.arange(B, device=idx.device).repeat_interleave(k)
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        g, W, idx.reshape(-1), offsets, rows, 0, -1
    ).reshape(B, k)


class SparseDecode(Function):
    """x̂_b = Σ_j acts[b, j] W_dec[idx[b, j]] (no bias); gradients for acts and W_dec only at the k entries."""

    @staticmethod
    def forward(ctx, acts: Tensor, W_dec: Tensor, pattern: Pattern) -> Tensor:  # type: ignore[override]
        B, k = acts.shape
        offsets = torch.arange(0, B * k, k, device=acts.device)
        out = torch.nn.functional.embedding_bag(
            pattern.idx.reshape(-1), W_dec, offsets, mode="sum", per_sample_weights=acts.reshape(-1)
        )
        ctx.save_for_backward(acts, W_dec)
        ctx.pattern = pattern
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        acts, W_dec = ctx.saved_tensors
        p: Pattern = ctx.pattern
        g = g.contiguous()
        grad_acts = gather_dots(p.idx, W_dec, g) if ctx.needs_input_grad[0] else None
        grad_W = scatter_rows(p, acts, g) if ctx.needs_input_grad[1] else None
        return grad_acts, grad_W, None


class SparseEncodeGrad(Function):
    """Attach the encoder's sparse gradient to codes picked under no_grad.

    Returns ``acts`` unchanged ([B, k], already ReLU'd values of the chosen pre-activations); its
    backward sends gradients to W_enc, b_enc and b_dec through only the chosen entries.
    ``x_c`` = x − b_dec: [B, d].
    """

    @staticmethod
    def forward(ctx, acts: Tensor, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, pattern: Pattern) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(acts, x_c, W_enc)
        ctx.pattern = pattern
        return acts.clone()

    @staticmethod
    def backward(ctx, grad_acts: Tensor):  # type: ignore[override]
        acts, x_c, W_enc = ctx.saved_tensors
        p: Pattern = ctx.pattern
        h = grad_acts * (acts > 0)  # ReLU: no gradient through latents whose value was clipped to 0
        grad_b_enc = torch.zeros(p.n, dtype=h.dtype, device=h.device).index_add_(0, p.idx.reshape(-1), h.reshape(-1))
        grad_W_enc = scatter_rows(p, h, x_c).t() if ctx.needs_input_grad[2] else None
        grad_b_dec = -(W_enc @ grad_b_enc) if ctx.needs_input_grad[4] else None
        return None, None, grad_W_enc, grad_b_enc if ctx.needs_input_grad[3] else None, grad_b_dec, None


def sparse_latents(
    acts: Tensor, idx: Tensor, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, W_dec: Tensor
) -> Tensor:
    """Decode codes (acts, idx) picked from dense pre-activations, with sparse gradients to every weight.

    acts, idx: [B, k]; x_c = x − b_dec: [B, d] (detached). Returns Σ_j acts W_dec[idx] : [B, d], no bias.
    """
    pattern = make_pattern(idx, W_dec.shape[0])
    acts = SparseEncodeGrad.apply(acts, x_c, W_enc, b_enc, b_dec, pattern)
    return SparseDecode.apply(acts, W_dec, pattern)

"""Cross-layer transcoder (Ameisen et al. 2025): the latents of layer l read that layer's MLP input and write
to the MLP output of every layer l' ≥ l.

Shapes: B rows, L layers, d_i / d_o the width of each layer's MLP input / output, m latents per layer
(n = L·m in all), k kept per layer and row. Rows are the L inputs then the L outputs side by side, as the
store serves a tuple of sites: [x_0 | … | x_{L−1} | y_0 | … | y_{L−1}] (``split_rows`` cuts them).

    pre_l  = x_l W_enc^l + b_enc^l                         W_enc^l: [d_i, m]   (block-diagonal W_enc [L·d_i, n])
    a_l    = ReLU(TopK_k(pre_l))                            k per layer
    ŷ_l'   = Σ_{l ≤ l'} a_l W_dec^{l→l'} + b_dec^{l'}       W_dec^{l→l'}: [m, d_o] (block upper-triangular W_dec [n, L·d_o])
    loss   = mean_rows Σ_l' ‖y_l' − ŷ_l'‖²

Stored as one SAE of width n: W_enc [L·d_i, n] and W_dec [n, L·d_o] with the blocks that must be zero held
at zero by fixed masks (applied in every product, so their gradient is zero and Adam never moves them).
Latent index j belongs to layer j // m.

Where this departs from the paper, and why:

- TopK per layer (k per layer and row) instead of JumpReLU with a tanh sparsity penalty: L0 is set by k
  with no coefficient to search, as for mechscope's other transcoders.
- Each latent's whole decoder row (all its target layers together) is kept at unit norm by the trainer,
  as for the crosscoder; Ameisen et al. penalise the sum of the per-layer decoder norms instead.
- No AuxK (dead latents are counted but not revived): the auxiliary loss would need the per-layer TopK.
- One input scale for all layers' inputs and one for all outputs (the trainer's paired scaling).

SAELens has no cross-layer transcoder format: saving in SAELens layout is refused.

Sharded over ranks (the trainer's ``shard_layers``; model parallelism for a CLT no device can hold): a shard
holds the latents of a contiguous block of layers ``held`` = [a, b), n_r = (b − a)·m of them: W_enc's columns
[L·d_i, n_r], b_enc [n_r], W_dec's rows [n_r, L·d_o] (and JumpReLU's θ [n_r]), so ~1/R of the parameters, and the
whole b_dec [L·d_o] (replicated). Every rank reads the same rows and computes

    ŷ = Σ_r codes_r W_dec_r + b_dec             (the sum over ranks: ``partial_sum``, one all-reduce)

so ŷ, and the loss, are the same on every rank; the gradient of ŷ passes back to each rank's partial sum unchanged
(:meth:`mechscope.distributed.World.sum_partials` says why). Everything else is local: a latent's TopK (within
its layer), its decoder row's unit norm and its θ live on one rank. Its initial weights are the slice of the whole
CLT's (the same draws, in chunks: :func:`normal_slice`), and :func:`join_shards` puts the shards' tensors back
into the one CLT a single process trains, for every reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from mechscope.sae.base import ForwardOutput, SAEConfig, SparseAutoencoder, SparseCodes, reconstruction_loss, register
from mechscope.sae.transcoder import fold_paired_scale_, split_paired_rows


def check_layer_blocks(cfg: Any) -> None:
    """Refuse a cross-layer config whose d_in, d_out or latents do not split into ``cfg.layers`` equal blocks."""
    L, d_in, d_out, n = cfg.layers, cfg.d_in, cfg.d_out, cfg.latents
    if L < 1 or d_in % L or n % L or (d_out or d_in) % L:
        raise ValueError(f"d_in={d_in}, d_out={d_out} and latents={n} must split into layers={L} equal blocks")


LATENT_AXIS = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "threshold": 0}
"""The axis of each per-latent tensor of a CLT along which a shard holds its latents (b_dec is not per latent)."""


def normal_slice(
    generator: torch.Generator | None, rows: int, cols: int, keep_rows: range, keep_cols: range, chunk: int = 2**22
) -> Tensor:
    """``torch.randn(rows, cols, generator=generator)[keep_rows, keep_cols]`` (the same numbers, and the same
    generator state after), drawn ~``chunk`` values at a time so that only a chunk and the slice are ever held.

    CPU normal draws fill 16 values at a time (and redraw the last 16 of a draw whose size is not a multiple of
    16), so every chunk but the last holds a multiple of 16 values and the last at least 16: then the chunks draw
    exactly what one draw of the whole would."""
    step = max(16, chunk // max(cols, 1) // 16 * 16)
    starts = list(range(0, rows, step))
    if len(starts) > 1 and (rows - starts[-1]) * cols < 16:
        starts.pop()  # a last chunk under 16 values would be drawn otherwise: join it to the one before
    out = []
    for a, b in zip(starts, [*starts[1:], rows]):
        block = torch.randn(b - a, cols, generator=generator)
        lo, hi = max(a, keep_rows.start), min(b, keep_rows.stop)
        if lo < hi:
            out.append(block[lo - a : hi - a, keep_cols.start : keep_cols.stop])
    return torch.cat(out)


def join_shards(parts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The state dict of the whole CLT from its shards' state dicts in rank (layer) order: each per-latent tensor
    concatenated along its latent axis (:data:`LATENT_AXIS`), b_dec (the same on every rank) from the first."""
    return {k: torch.cat([p[k] for p in parts], LATENT_AXIS[k]) if k in LATENT_AXIS else v for k, v in parts[0].items()}


@dataclass(frozen=True)
class CLTConfig(SAEConfig):
    """A TopK cross-layer transcoder over ``layers`` MLPs (d_in = layers × input width, latents = layers × m)."""

    layers: int = 1
    """Number L of layers (MLPs); rows hold their inputs, then their outputs, in layer order (1 = a per-layer TopK transcoder)."""
    k: int = 32
    """Latents kept per layer and row."""
    d_out: int = 0
    """Total width of the targets, L × the output width (taken from the store); 0 = d_in."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layer_blocks(self)
        if not 0 < self.k <= self.latents // self.layers:
            raise ValueError(f"k={self.k} must be in 1..latents per layer ({self.latents // self.layers})")


@register
class CrossLayerTranscoderSAE(SparseAutoencoder):
    arch = "clt"
    saelens_name = "mechscope_clt"  # no SAELens architecture: export refused
    config_cls = CLTConfig
    cfg: CLTConfig
    paired: ClassVar[bool] = True
    enc_mask: Tensor
    """[L·d_i, n] 1 on the allowed blocks of W_enc (block-diagonal), a non-persistent buffer."""
    dec_mask: Tensor
    """[n, L·d_o] 1 on the allowed blocks of W_dec (block upper-triangular), a non-persistent buffer."""

    held: range
    """The layers whose latents this module holds: all of them, or a shard's block (module docstring)."""
    partial_sum: Callable[[Tensor], Tensor] | None
    """A shard's sum of the ranks' partial outputs (:meth:`World.sum_partials`); None for the whole CLT."""

    def __init__(
        self,
        cfg: CLTConfig,
        generator: torch.Generator | None = None,
        *,
        held: range | None = None,
        partial_sum: Callable[[Tensor], Tensor] | None = None,
    ):
        L, m = cfg.layers, cfg.latents // cfg.layers
        held = range(L) if held is None else held
        if not (0 <= held.start < held.stop <= L and held.step == 1):
            raise ValueError(f"held={held}: a shard holds a non-empty contiguous block of the layers 0..{L - 1}")
        object.__setattr__(self, "held", held)  # before nn.Module.__init__: the base constructor reads ``latents``
        object.__setattr__(self, "partial_sum", partial_sum)
        di, do = cfg.d_in // L, (cfg.d_out or cfg.d_in) // L
        layer_of_latent = held.start + torch.arange(len(held) * m) // m
        enc = layer_of_latent[None, :] == (torch.arange(cfg.d_in) // di)[:, None]  # [L·d_i, n_r]
        dec = layer_of_latent[:, None] <= (torch.arange(L * do) // do)[None, :]  # [n_r, L·d_o]
        super().__init__(cfg, generator=None)
        self.register_buffer("enc_mask", enc.float(), persistent=False)
        self.register_buffer("dec_mask", dec.float(), persistent=False)
        self.reset_parameters(generator)

    @property
    def per_layer(self) -> int:
        """m, latents per layer."""
        return self.cfg.latents // self.cfg.layers

    @property
    def latents(self) -> int:
        """Latents held: n for the whole CLT, n_r = (b − a)·m for a shard."""
        return len(self.held) * self.per_layer

    @property
    def first_latent(self) -> int:
        """Index in the whole CLT of the first latent held (a·m)."""
        return self.held.start * self.per_layer

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit decoder rows and encoder columns on the allowed blocks, zeros elsewhere; zero biases.
        A shard gets its slice of the whole CLT's draws (:func:`normal_slice`)."""
        if not hasattr(self, "dec_mask"):
            return  # the base constructor calls this before the masks exist
        n, mine = self.cfg.latents, range(self.first_latent, self.first_latent + self.latents)
        if len(mine) == n:  # the whole CLT: one draw each
            W = torch.randn(n, self.d_out, generator=generator)
            E = torch.randn(self.cfg.d_in, n, generator=generator)
        else:
            W = normal_slice(generator, n, self.d_out, mine, range(self.d_out))
            E = normal_slice(generator, self.cfg.d_in, n, range(self.cfg.d_in), mine)
        W, E = W * self.dec_mask, E * self.enc_mask
        self.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        self.W_enc.copy_(E / E.norm(dim=0, keepdim=True))
        self.b_enc.zero_()
        self.b_dec.zero_()

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """[B, d_in + d_out] → (x [B, d_in], y [B, d_out]); [B, d_in] rows (d_out = d_in) are their own target."""
        return split_paired_rows(rows, self.cfg.d_in, self.d_out, "clt", "every layer's MLP input, then every output")

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Read raw inputs and write raw outputs after training on (s·x → s_y·y)."""
        fold_paired_scale_(self, scale, target_scale)

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        from mechscope.sae.io import SAEFormatError

        raise SAEFormatError("SAELens has no cross-layer transcoder architecture; save it in mechscope layout")

    @classmethod
    def from_saelens(cls, cfg: dict, tensors: dict[str, Tensor]):  # pragma: no cover - no SAELens file names it
        raise ValueError("SAELens has no cross-layer transcoder architecture")

    def pre_acts(self, x: Tensor) -> Tensor:
        """x W_enc + b_enc with W_enc block-diagonal. [B, d_in] → [B, n]."""
        return torch.addmm(self.b_enc, x, self.W_enc * self.enc_mask)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """TopK within each layer's m latents; indices are global (layer·m + i). → [B, L·k] ×2."""
        B, L, m = x.shape[0], len(self.held), self.per_layer
        acts, idx = self.pre_acts(x).reshape(B, L, m).topk(self.cfg.k, dim=-1, sorted=False)
        idx = idx + (torch.arange(L, device=x.device) * m)[None, :, None]
        return SparseCodes(acts.relu().reshape(B, -1), idx.reshape(B, -1))

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_sparse(x).dense(self.latents)

    def layer_pre_acts(self, x: Tensor, layer: int) -> Tensor:
        """Layer ``layer``'s pre-activations from its own MLP input: x_l W_enc^l + b_enc^l. x: [B, d_i] → [B, m]."""
        di, m = self.cfg.d_in // self.cfg.layers, self.per_layer
        W = self.W_enc[layer * di : (layer + 1) * di, layer * m : (layer + 1) * m]
        return torch.addmm(self.b_enc[layer * m : (layer + 1) * m], x, W)

    def layer_codes(self, x: Tensor, layer: int) -> SparseCodes:
        """The codes of layer ``layer``'s latents (indices 0 … m−1 within the layer) from its MLP input x [B, d_i],
        equal to that layer's block of :meth:`encode` on the full row: ReLU(TopK_k). → [B, k] ×2."""
        acts, idx = self.layer_pre_acts(x, layer).topk(self.cfg.k, dim=1, sorted=False)
        return SparseCodes(acts.relu(), idx)

    def decode(self, codes: Tensor) -> Tensor:
        """codes W_dec + b_dec with W_dec block upper-triangular. [B, n] → [B, d_out]; a shard: [B, n_r] →
        Σ_r codes_r W_dec_r + b_dec, the same on every rank."""
        if self.partial_sum is None:
            return torch.addmm(self.b_dec, codes, self.W_dec * self.dec_mask)
        return self.partial_sum(codes @ (self.W_dec * self.dec_mask)) + self.b_dec

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        """decode() of the dense codes (the masks apply). → [B, d_out]."""
        return self.decode(codes.dense(self.latents))

    def skip(self, x: Tensor) -> Tensor | None:
        return None

    def predict(self, x: Tensor, codes: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x) if codes is None else codes)

    def forward(self, rows: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        """Training forward on rows [x | y]; ``x_hat`` is ŷ [B, d_out]."""
        x, y = self.split_rows(rows)
        with torch.no_grad():
            codes = self.encode_sparse(x.detach())
        dense = torch.zeros(x.shape[0], self.latents, device=x.device, dtype=x.dtype)
        # the values are re-read from the differentiable pre-activations so the encoder gets its gradient
        vals = self.pre_acts(x.detach()).gather(1, codes.indices).relu()
        dense = dense.scatter(1, codes.indices, vals)
        y_hat = self.decode(dense)
        recon = reconstruction_loss(y, y_hat)
        return ForwardOutput(y_hat, SparseCodes(vals.detach(), codes.indices), recon, {"recon": recon.detach()})

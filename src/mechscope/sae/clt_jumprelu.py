"""JumpReLU cross-layer transcoder: the CLT of :mod:`mechscope.sae.clt` with the JumpReLU activation of
:mod:`mechscope.sae.jumprelu` in place of the per-layer TopK, as Ameisen et al. (2025) train it and as
circuit-tracer stores it (``W_enc_i`` / ``W_dec_i`` files with ``threshold_i``: :mod:`mechscope.sae.circuittracer_clt`).

Shapes as in :mod:`mechscope.sae.clt` (L layers, m latents per layer, n = L·m; latent j belongs to layer j // m):

    z      = x W_enc + b_enc                            W_enc block-diagonal [L·d_i, n] (the encoder reads x itself)
    codes  = JumpReLU_θ(z) = z · H(z − θ)               θ: [n]; ReLU(z)·H(z − θ) at inference (equal for θ ≥ 0)
    ŷ      = codes W_dec + b_dec                         W_dec block upper-triangular [n, L·d_o]
    loss   = mean_rows ‖y − ŷ‖²  +  λ · S                 S, λ, ε and the straight-through estimators of θ exactly
                                                         those of :mod:`mechscope.sae.jumprelu` (``l0`` or ``tanh``)

The tanh penalty weighs each latent by the norm of its whole decoder row (all its target layers together);
Ameisen et al. sum the per-layer norms instead. No AuxK (as for the TopK CLT: the dead-latent loss would need
the block structure); ``auxk_coef`` is kept at 0. A CLT with a ReLU activation is the TopK ``clt`` with
k = m (ReLU(TopK_m(z)) = ReLU(z)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from mechscope.config import COEFFICIENT
from mechscope.sae.base import ForwardOutput, SparseCodes, reconstruction_loss, register
from mechscope.sae.clt import CrossLayerTranscoderSAE, check_layer_blocks
from mechscope.sae.jumprelu import JumpReLUConfig, JumpReLUSAE


@dataclass(frozen=True)
class JumpReLUCLTConfig(JumpReLUConfig):
    """A JumpReLU cross-layer transcoder over ``layers`` MLPs (d_in = layers × input width, latents = layers × m)."""

    layers: int = 1
    """Number L of layers (MLPs); rows hold their inputs, then their outputs, in layer order."""
    d_out: int = 0
    """Total width of the targets, L × the output width (taken from the store); 0 = d_in."""
    auxk_coef: float = field(default=0.0, metadata=COEFFICIENT)
    """Must be 0: a cross-layer transcoder has no AuxK loss (module docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layer_blocks(self)
        if self.auxk_coef != 0:
            raise ValueError(f"auxk_coef={self.auxk_coef}: a cross-layer transcoder has no AuxK loss; leave it at 0")


@register
class JumpReLUCLTSAE(CrossLayerTranscoderSAE, JumpReLUSAE):
    """The block masks, row layout and scale fold of the CLT; θ, its estimators and its clamp of JumpReLU."""

    arch = "jumprelu_clt"
    saelens_name = "mechscope_jumprelu_clt"  # no SAELens architecture: export refused
    # Not a CLTConfig (no k): the CLT methods that read k are overridden here, the others read only layers and d_out.
    config_cls = JumpReLUCLTConfig  # type: ignore[assignment]
    cfg: JumpReLUCLTConfig  # type: ignore[assignment]

    def encode(self, x: Tensor) -> Tensor:
        """ReLU(z)·H(z − θ) (= z·H(z − θ) for θ ≥ 0). x: [B, d_in] → [B, n]."""
        z = self.pre_acts(x)
        return z.relu() * (z > self.threshold)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """The base class's sparse view of :meth:`encode` (k = the largest row L0)."""
        return super(CrossLayerTranscoderSAE, self).encode_sparse(x)

    def layer_codes(self, x: Tensor, layer: int) -> SparseCodes:
        """Layer ``layer``'s codes ReLU(z)·H(z − θ) from its MLP input x [B, d_i], indices within the layer;
        k = the largest row L0 (zero-padded). → [B, k] ×2."""
        m = self.per_layer
        z = self.layer_pre_acts(x, layer)
        codes = z.relu() * (z > self.threshold[layer * m : (layer + 1) * m])
        k = max(int((codes != 0).sum(1).max()), 1)
        acts, idx = codes.topk(k, dim=1, sorted=False)
        return SparseCodes(acts, idx)

    def forward(self, rows: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        """Training forward on rows [x | y]; ``x_hat`` is ŷ [B, d_out]."""
        x, y = self.split_rows(rows)
        z = self.pre_acts(x.detach())
        codes = self.jump(z)
        y_hat = self.decode(codes)
        recon = reconstruction_loss(y, y_hat)
        sparsity = self.sparsity(z, codes)
        if self.partial_sum is not None:  # a shard's penalty covers its own latents: add the ranks' (clt.py)
            sparsity = self.partial_sum(sparsity)
        loss = recon + sparsity_scale * self.cfg.sparsity_coef * sparsity
        return ForwardOutput(y_hat, codes, loss, {"recon": recon.detach(), self.cfg.penalty: sparsity.detach()})

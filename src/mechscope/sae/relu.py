"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024 update).

codes f = ReLU((x − b_dec) W_enc + b_enc); x̂ = f W_dec + b_dec.
loss = ‖x − x̂‖² + λ · Σ_i f_i ‖W_dec[i]‖     (mean over rows; λ = ``l1_coef``, warmed up by the trainer)

Weighting by ‖W_dec[i]‖ makes the penalty invariant to moving scale between a latent's encoder
and decoder, so the decoder rows are left free (not renormalised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from mechscope.config import COEFFICIENT
from mechscope.sae.base import ForwardOutput, SAEConfig, SparseAutoencoder, reconstruction_loss, register


@dataclass(frozen=True)
class ReLUConfig(SAEConfig):
    """A ReLU SAE trained with a decoder-norm-weighted L1 penalty."""

    l1_coef: float = field(default=5.0, metadata=COEFFICIENT)
    """Sparsity coefficient λ of the L1 (or gate) penalty on codes weighted by decoder norms, in [0, 10^6]."""


def weighted_l1(codes: Tensor, W_dec: Tensor) -> Tensor:
    """Mean over rows of Σ_i |codes_i| ‖W_dec[i]‖. codes: [B, n], W_dec: [n, d] → scalar."""
    return (codes.abs() @ W_dec.norm(dim=1)).mean()


@register
class ReLUSAE(SparseAutoencoder):
    arch = "relu"
    saelens_name = "standard"
    config_cls = ReLUConfig
    cfg: ReLUConfig
    unit_norm_decoder = False
    dec_init_norm = 0.1  # small decoder rows at the start, as in the April update

    def encode(self, x: Tensor) -> Tensor:
        return self.pre_acts(x).relu()

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        codes = self.encode(x)
        x_hat = self.decode(codes)
        recon = reconstruction_loss(x, x_hat)
        l1 = weighted_l1(codes, self.W_dec)
        loss = recon + sparsity_scale * self.cfg.l1_coef * l1
        return ForwardOutput(x_hat, codes, loss, {"recon": recon.detach(), "l1": l1.detach()})

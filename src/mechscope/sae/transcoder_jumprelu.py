"""JumpReLU transcoders and skip-transcoders: the JumpReLU activation of :mod:`mechscope.sae.jumprelu` on a
transcoder's paired rows (:mod:`mechscope.sae.transcoder`), the kind Gemma Scope's transcoders and the
attribution-graph papers use, and the form SAELens stores them in.

Shapes: B rows, d_in / d_out the widths of the input and target sites, n latents.

    z     = x W_enc + b_enc                          (the encoder reads x itself: b_dec lives in the output space)
    codes = JumpReLU_θ(z) = z · H(z − θ)              θ: [n]
    ŷ     = codes W_dec + b_dec (+ x W_skip)          W_dec: [n, d_out] (unit rows), W_skip: [d_in, d_out]
    loss  = mean_rows ‖y − ŷ‖² + λ · S  (+ AuxK on dead latents)

with S, the straight-through estimators for θ, the bandwidth and the defaults exactly those of
:mod:`mechscope.sae.jumprelu` (whose departures from Rajamanoharan et al. carry over). The trainer's
paired scaling folds into W_enc, W_dec, b_dec and W_skip (:func:`mechscope.sae.transcoder.fold_paired_scale_`);
z does not change under the fold, so θ needs none.

SAELens files: ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` (sae-lens 6.x: encode = ReLU(z) · 1[z > θ],
apply_b_dec_to_input False, W_skip stored [d_out, d_in]) load as these classes and are written from them,
both ways with identical codes and outputs (tests/integration/test_transcoder_saelens.py). For θ ≥ 0, as
training keeps it, ReLU(z)·1[z > θ] = z·1[z > θ]; a foreign file with θ < 0 is read with SAELens's ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mechscope.sae.base import ForwardOutput, register
from mechscope.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from mechscope.sae.transcoder import PairedDictionary, PairedFields
from mechscope.sae.transcoder_skip import SkipTerm


@dataclass(frozen=True)
class JumpReLUTranscoderConfig(PairedFields, JumpReLUConfig):
    """A JumpReLU transcoder: reads a d_in-wide site, writes a d_out-wide one."""


@dataclass(frozen=True)
class JumpReLUSkipTranscoderConfig(JumpReLUTranscoderConfig):
    """A JumpReLU transcoder with a linear skip term x W_skip."""


@register
class JumpReLUTranscoderSAE(PairedDictionary, JumpReLUSAE):
    arch = "jumprelu_transcoder"
    saelens_name = "jumprelu_transcoder"
    config_cls = JumpReLUTranscoderConfig
    cfg: JumpReLUTranscoderConfig

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        name, _, tensors = super().saelens_tensors()  # W_enc, b_enc, W_dec, b_dec, threshold
        return name, self._saelens_paired(), tensors

    @classmethod
    def saelens_config(cls, cfg: dict) -> dict:
        return {"d_out": int(cfg["d_out"])}

    def forward(self, rows: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        """Training forward on paired rows [B, d_in + d_out]; ``x_hat`` is the prediction ŷ [B, d_out]."""
        x, y = self.split_rows(rows)
        x = x.detach()
        z = self.pre_acts(x)
        codes = self.jump(z)
        y_hat, loss, parts = self.paired_loss(x, y, self.decode(codes), z.detach().clone(), dead_mask)
        sparsity = self.sparsity(z, codes)
        loss = loss + sparsity_scale * self.cfg.sparsity_coef * sparsity
        parts[self.cfg.penalty] = sparsity.detach()
        return ForwardOutput(y_hat, codes, loss, parts)


@register
class JumpReLUSkipTranscoderSAE(SkipTerm, JumpReLUTranscoderSAE):
    arch = "jumprelu_skip_transcoder"
    saelens_name = "jumprelu_skip_transcoder"
    config_cls = JumpReLUSkipTranscoderConfig
    cfg: JumpReLUSkipTranscoderConfig

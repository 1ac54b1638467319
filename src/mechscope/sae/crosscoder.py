"""Acausal crosscoder (Lindsey et al. 2024): one latent space read from, and written to, several sites
(layers) at once. Each latent has one encoder and one decoder slice per site.

Shapes: B rows, L sites of width d each, n latents, k kept per row; rows are the L sites side by side,
x = [x^1 | … | x^L] of width L·d, as the store serves a tuple of sites (``ActivationStore.batches``).

    pre    = Σ_l (x^l − b_dec^l) W_enc^l + b_enc    = (x − b_dec) W_enc + b_enc,  W_enc = [W_enc^1; …; W_enc^L]: [L·d, n]
    codes  = ReLU(TopK_k(pre))
    x̂^l   = codes W_dec^l + b_dec^l                 W_dec = [W_dec^1 | … | W_dec^L]: [n, L·d]
    loss   = Σ_l mean_rows ‖x^l − x̂^l‖²  +  auxk_coef · AuxK

Written on the concatenated rows, that is a TopK SAE of width L·d, which is what this class is; what
makes it a crosscoder is reading the per-site decoder slices: :meth:`CrosscoderSAE.site_decoder_norms`
gives ‖W_dec^l[i]‖ for every latent and site, i.e. which layers a latent reads and writes (a latent
whose norm sits on one site is a single-layer feature; spread over sites, a cross-layer one).

Where this departs from the paper, and why:

- TopK activation with AuxK instead of ReLU with the L1 penalty Σ_i c_i Σ_l ‖W_dec^l[i]‖: L0 is set
  by k, with no coefficient to search. With TopK there is no penalty for the decoder norms to enter,
  so each latent's whole decoder row (all sites together) is kept at unit norm, as for a TopK SAE;
  the per-site norms still say how a latent's output splits over the sites.
- One input scale for the concatenated row (the trainer's √(L·d) / E‖x‖), not one per layer: adjacent
  residual layers have similar norms (SmolLM2 layers 4 and 6: 97 and 108), so no site dominates; for
  sites of very different norms a per-site scale would be needed.
- Acausal only; the causal cross-layer transcoder (each layer's latents write to every later MLP output)
  is :mod:`mechscope.sae.clt`.

SAELens has no crosscoder format: saving in SAELens layout is refused (mechscope layout only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.sae.base import register
from mechscope.sae.topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class CrosscoderConfig(TopKConfig):
    """A TopK acausal crosscoder over ``sites`` sites of equal width (d_in = sites × that width)."""

    sites: int = 2
    """Number L of sites (layers) read and written, in the order of the rows' blocks; d_in is L × the site width."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sites < 1 or self.d_in % self.sites:
            raise ValueError(f"d_in={self.d_in} must be sites={self.sites} blocks of equal width")


@register
class CrosscoderSAE(TopKSAE):
    arch = "crosscoder"
    saelens_name = "mechscope_crosscoder"  # no SAELens architecture: export refused, never matches a SAELens file
    config_cls = CrosscoderConfig
    cfg: CrosscoderConfig

    @property
    def site_width(self) -> int:
        """Width d of each site."""
        return self.cfg.d_in // self.cfg.sites

    def site_decoder_norms(self) -> Tensor:
        """[n, L] ‖W_dec^l[i]‖: how much latent i writes to site l."""
        return self.W_dec.detach().reshape(self.latents, self.cfg.sites, self.site_width).norm(dim=-1)

    def site_losses(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """[L] mean over rows of ‖x^l − x̂^l‖² per site (they sum to the reconstruction loss)."""
        B = x.shape[0]
        return (x - x_hat).reshape(B, self.cfg.sites, self.site_width).pow(2).sum(-1).mean(0)

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        from mechscope.sae.io import SAEFormatError  # io imports the base class: import it here

        raise SAEFormatError("SAELens has no crosscoder architecture; save the crosscoder in mechscope layout")

    @classmethod
    def from_saelens(cls, cfg: dict, tensors: dict[str, Tensor]):  # pragma: no cover - no SAELens file names it
        raise ValueError("SAELens has no crosscoder architecture")

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0):
        out = super().forward(x, dead_mask=dead_mask, sparsity_scale=sparsity_scale)
        with torch.no_grad():
            per_site = self.site_losses(x, out.x_hat)
        parts = {**out.parts, **{f"recon_site{l}": v for l, v in enumerate(per_site)}}
        return out._replace(parts=parts)

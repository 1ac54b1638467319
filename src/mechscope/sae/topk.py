"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each row, with the AuxK loss.

codes = ReLU(TopK_k((x − b_dec) W_enc + b_enc)); x̂ = codes W_dec + b_dec; decoder rows unit norm.

AuxK (:func:`mechscope.sae.maths.auxk_loss`), weighted by ``auxk_coef``, trains dead latents
towards explaining the residual the live ones leave.

Only the encoder's forward matmul is dense; see :mod:`mechscope.sae.sparse_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from mechscope.config import COEFFICIENT, NON_NEGATIVE
from mechscope.sae.base import ForwardOutput, SAEConfig, SparseAutoencoder, SparseCodes, reconstruction_loss, register
from mechscope.sae.maths import auxk_loss
from mechscope.sae.sparse_ops import sparse_latents


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    """A TopK SAE."""

    k: int = 32
    """Latents kept per row (the L0 of every code)."""
    auxk_coef: float = field(default=1 / 32, metadata=COEFFICIENT)
    """Weight of the AuxK loss on dead latents, in [0, 10^6] (0 turns it off)."""
    auxk_k: int = field(default=0, metadata=NON_NEGATIVE)
    """Dead latents used by the AuxK reconstruction per row; 0 means d_in // 2."""
    auxk_normalize: Literal["none", "residual"] = "none"
    """AuxK in the reconstruction's units ("none"), or divided by the residual's variance as in OpenAI's
    reference ("residual"); see :func:`mechscope.sae.maths.auxk_loss` for the formulas and the choice."""
    auxk_dead_scale: bool = False
    """Multiply AuxK by min(dead latents / k_aux, 1), as EleutherAI sparsify does."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auxk_normalize not in ("none", "residual"):
            raise ValueError(f"auxk_normalize must be 'none' or 'residual', got {self.auxk_normalize!r}")
        if not 0 < self.k <= self.latents:
            raise ValueError(f"k must be in 1..latents={self.latents}, got {self.k}")


@register
class TopKSAE(SparseAutoencoder):
    arch = "topk"
    saelens_name = "topk"
    config_cls = TopKConfig
    cfg: TopKConfig

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        name, _, tensors = super().saelens_tensors()
        return name, {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}, tensors

    @classmethod
    def saelens_config(cls, cfg: dict) -> dict:
        return {"k": int(cfg["k"])}

    @classmethod
    def from_saelens(cls, cfg: dict, tensors: dict[str, Tensor]) -> SparseAutoencoder:
        sae = super().from_saelens(cfg, tensors)
        if cfg.get("rescale_acts_by_decoder_norm", False):
            # SAELens ranks pre-activations times ‖W_dec[i]‖ and decodes with W_dec[i]/‖W_dec[i]‖:
            # the same codes come from W_enc·‖W_dec‖, b_enc·‖W_dec‖ and unit decoder rows.
            with torch.no_grad():
                norms = sae.W_dec.norm(dim=1)
                sae.W_enc.mul_(norms)
                sae.b_enc.mul_(norms)
                sae.W_dec.div_(norms[:, None])
        return sae

    def _pre_acts_one_matmul(self: SparseAutoencoder, x_c: Tensor) -> Tensor:  # BatchTopKSAE borrows it
        """x_c W_enc + b_enc as one product [x_c, 1, 0…] @ [W_enc; b_enc; 0…] : [B, K] @ [K, n] → [B, n].

        K = d + 1 rounded up to a multiple of 8. Measured beside the alternatives on the benchmark's
        shapes, this costs what the bare x_c W_enc costs, while addmm (which first copies the broadcast
        bias into all of [B, n]) or a separate in-place bias add cost 8–13% more. The [K, n] operand is
        a scratch copy of the weights, refreshed on every call (d·n floats, small beside B·n).
        """
        B, d = x_c.shape
        K = (d + 1 + 7) // 8 * 8
        w = getattr(self, "_w_aug", None)
        if w is None or w.shape != (K, self.latents) or w.device != x_c.device or w.dtype != x_c.dtype:
            w = self._w_aug = torch.zeros(K, self.latents, dtype=x_c.dtype, device=x_c.device)
        w[:d].copy_(self.W_enc)
        w[d].copy_(self.b_enc)
        xa = x_c.new_empty(B, K)
        xa[:, :d] = x_c
        xa[:, d] = 1.0
        xa[:, d + 1 :] = 0.0
        return torch.mm(xa, w)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """(values, indices) of the k largest pre-activations, ReLU'd. x: [B, d] → [B, k] ×2."""
        acts, idx = self.pre_acts(x).topk(self.cfg.k, dim=1, sorted=False)
        return SparseCodes(acts.relu(), idx)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_sparse(x).dense(self.latents)

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        x_c = (x - self.b_dec).detach()
        with torch.no_grad():
            pre = self._pre_acts_one_matmul(x_c)  # [B, n], the one dense product
            acts, idx = pre.topk(self.cfg.k, dim=1, sorted=False)
            acts = acts.relu_()
        x_hat = sparse_latents(acts, idx, x_c, self.W_enc, self.b_enc, self.b_dec, self.W_dec) + self.b_dec
        recon = reconstruction_loss(x, x_hat)
        loss, parts = recon, {"recon": recon.detach()}
        if self.training and dead_mask is not None and self.cfg.auxk_coef > 0 and bool(dead_mask.any()):
            aux = auxk_loss(
                self,
                pre,
                x_c,
                (x - x_hat).detach(),
                dead_mask,
                self.cfg.auxk_k,
                self.cfg.auxk_normalize,
                self.cfg.auxk_dead_scale,
            )
            loss = loss + self.cfg.auxk_coef * aux
            parts["auxk"] = aux.detach()
        return ForwardOutput(x_hat, SparseCodes(acts, idx), loss, parts)

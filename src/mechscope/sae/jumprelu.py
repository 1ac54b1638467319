"""JumpReLU SAE (Rajamanoharan et al. 2024, as trained for Gemma Scope), with an L0 or tanh penalty.

z = (x − b_dec) W_enc + b_enc : [B, n];  f = JumpReLU_θ(z) = z · H(z − θ)  (θ: [n], a parameter);
x̂ = f W_dec + b_dec; decoder rows unit norm.

loss = ‖x − x̂‖² + λ · S     (mean over rows; λ = ``sparsity_coef``, warmed up by the trainer), with
  S = Σ_i H(z_i − θ_i)                       for ``penalty="l0"``,
  S = Σ_i tanh(c · f_i · ‖W_dec[i]‖)          for ``penalty="tanh"`` (c = ``tanh_scale``).

H has zero derivative almost everywhere, so θ learns through straight-through estimators built on
the rectangle kernel K(u) = 1[|u| < ½] with bandwidth ε (``bandwidth``):

  ∂/∂θ JumpReLU_θ(z) := −(θ/ε) · K((z − θ)/ε)        ∂/∂z JumpReLU_θ(z) := H(z − θ)
  ∂/∂θ H(z − θ)      := −(1/ε) · K((z − θ)/ε)        ∂/∂z H(z − θ)      := 0

i.e. a kernel-density estimate of how the expected loss changes as θ moves across the activations
that lie within ε/2 of it. The encoder learns from the reconstruction only (and, with ``tanh``, from
the penalty through f); θ is kept at least ``min_threshold`` after each step by the trainer hook.
Latents pushed below θ everywhere stop learning, so dead ones get the AuxK loss of TopK
(``auxk_coef``; 0 gives the plain recipe).

Departures from the paper (Rajamanoharan et al. 2024: ε = θ₀ = 0.001, no AuxK), each a config value:
our defaults are ε = 0.05, θ₀ = 0.01 and AuxK 1/32, because on the feature-recovery data
(bench/sae_paper_defaults.py, docs/benchmarks.md) the paper's setting left θ too small to sparsify in a
short run (L0 33, recovery 0.61) while ours reached L0 4.3, recovery 0.95. Our inputs are scaled to
E‖x‖ = √d, so ε and θ₀ are in those units. The paper's setting: ``bandwidth=0.001,
threshold_init=0.001, auxk_coef=0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd import Function

from mechscope.config import COEFFICIENT, NON_NEGATIVE, in_range
from mechscope.sae.base import ForwardOutput, SAEConfig, SparseAutoencoder, reconstruction_loss, register
from mechscope.sae.maths import auxk_loss

SCALED_WIDTH = in_range(0, 1e3, lo_open=True, why="in units of the scaled inputs, E‖x‖ = √d")
"""Range of ε and θ₀: positive, and far below where float32 thresholds overflow."""


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    """A JumpReLU SAE."""

    sparsity_coef: float = field(default=1.0, metadata=COEFFICIENT)
    """Coefficient λ of the sparsity penalty (L0 count or tanh of codes), in [0, 10^6]."""
    penalty: Literal["l0", "tanh"] = "l0"
    """Sparsity penalty: the L0 count (straight-through gradient to θ) or Σ tanh(c · f · ‖W_dec‖)."""
    tanh_scale: float = field(default=4.0, metadata=in_range(0, 1e3, lo_open=True))
    """c in the tanh penalty, in (0, 1000] (ignored for l0)."""
    bandwidth: float = field(default=0.05, metadata=SCALED_WIDTH)
    """Width ε of the rectangle kernel in the threshold's straight-through estimator, in (0, 1000]."""
    threshold_init: float = field(default=0.01, metadata=SCALED_WIDTH)
    """Initial θ of every latent, in (0, 1000]."""
    auxk_coef: float = field(default=1 / 32, metadata=COEFFICIENT)
    """Weight of the AuxK loss on dead latents, in [0, 10^6] (0 turns it off)."""
    auxk_k: int = field(default=0, metadata=NON_NEGATIVE)
    """Dead latents used by the AuxK reconstruction per row; 0 means d_in // 2."""
    auxk_normalize: Literal["none", "residual"] = "none"
    """AuxK normalisation, as in :class:`mechscope.sae.topk.TopKConfig`."""
    auxk_dead_scale: bool = False
    """Multiply AuxK by min(dead latents / k_aux, 1), as in :class:`mechscope.sae.topk.TopKConfig`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auxk_normalize not in ("none", "residual"):
            raise ValueError(f"auxk_normalize must be 'none' or 'residual', got {self.auxk_normalize!r}")


def _kernel(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """K((z − θ)/ε) with the rectangle kernel K(u) = 1[|u| < ½]."""
    return ((z - threshold).abs() < bandwidth / 2).to(z.dtype)


class _JumpReLU(Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = g * (z > threshold)
        grad_t = (-(threshold / eps) * _kernel(z, threshold, eps) * g).sum(0)
        return grad_z, grad_t, None


class _Step(Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_t = (-(1.0 / eps) * _kernel(z, threshold, eps) * g).sum(0)
        return None, grad_t, None


@register
class JumpReLUSAE(SparseAutoencoder):
    arch = "jumprelu"
    saelens_name = "jumprelu"
    config_cls = JumpReLUConfig
    cfg: JumpReLUConfig
    min_threshold = 1e-6

    def __init__(self, cfg: JumpReLUConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self.threshold = nn.Parameter(torch.full((self.latents,), cfg.threshold_init))

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        name, extra, tensors = super().saelens_tensors()
        tensors["threshold"] = self.threshold.detach()
        return name, extra, tensors

    @classmethod
    def saelens_state(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        state = dict(tensors)
        if "log_threshold" in state:  # older training checkpoints kept log θ
            state["threshold"] = state.pop("log_threshold").exp()
        return state

    def encode(self, x: Tensor) -> Tensor:
        # ReLU as well, so that SAEs loaded with θ ≤ 0 (allowed by other tools) still give codes ≥ 0.
        z = self.pre_acts(x)
        return z.relu() * (z > self.threshold)

    def jump(self, z: Tensor) -> Tensor:
        """JumpReLU_θ(z) with the straight-through gradients of the module docstring. z: [B, n] → [B, n]."""
        return _JumpReLU.apply(z, self.threshold, self.cfg.bandwidth)

    def sparsity(self, z: Tensor, codes: Tensor) -> Tensor:
        """The penalty S of the module docstring, mean over rows (L0 through the step's estimator, or tanh)."""
        if self.cfg.penalty == "l0":
            return _Step.apply(z, self.threshold, self.cfg.bandwidth).sum(-1).mean()
        return torch.tanh(self.cfg.tanh_scale * codes * self.W_dec.norm(dim=1)).sum(-1).mean()

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        z = self.pre_acts(x)
        codes = self.jump(z)
        x_hat = self.decode(codes)
        recon = reconstruction_loss(x, x_hat)
        sparsity = self.sparsity(z, codes)
        loss = recon + sparsity_scale * self.cfg.sparsity_coef * sparsity
        parts = {"recon": recon.detach(), self.cfg.penalty: sparsity.detach()}
        if self.training and dead_mask is not None and self.cfg.auxk_coef > 0 and bool(dead_mask.any()):
            aux = auxk_loss(
                self,
                z.detach().clone(),
                (x - self.b_dec).detach(),
                (x - x_hat).detach(),
                dead_mask,
                self.cfg.auxk_k,
                self.cfg.auxk_normalize,
                self.cfg.auxk_dead_scale,
            )
            loss = loss + self.cfg.auxk_coef * aux
            parts["auxk"] = aux.detach()
        return ForwardOutput(x_hat, codes, loss, parts)

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=self.min_threshold)

"""BatchTopK SAE (Bussmann et al. 2024): keep the B·k largest pre-activations of the whole batch.

Training: z = ReLU((x − b_dec) W_enc + b_enc) : [B, n]; keep the B·k largest entries of z over the
batch (rows may get more or fewer than k), zero the rest; x̂ = codes W_dec + b_dec; AuxK on dead
latents as in TopK; decoder rows unit norm.

Inference cannot depend on the batch, so a global threshold θ is learned alongside: after each
training batch, θ ← (1 − β)·θ + β·min{kept z > 0} (an exponential moving average of the smallest kept
activation, β = ``threshold_lr``). :meth:`encode` returns z·1[z > θ], a JumpReLU with one θ for every
latent. θ is a buffer, saved with the weights, so a loaded SAE runs on single rows.

With data parallelism the batch is the global batch: the B·k-th largest value is found over all ranks
(:func:`global_kth_largest`), so two processes keep the same entries as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mechscope.sae.base import ForwardOutput, SparseAutoencoder, reconstruction_loss, register
from mechscope.sae.maths import auxk_loss
from mechscope.sae.topk import TopKConfig


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """A BatchTopK SAE: k is the mean L0 over the batch."""

    threshold_lr: float = 0.01
    """Step β of the moving average that learns the inference threshold θ from the smallest kept activation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_lr <= 1:
            raise ValueError(f"threshold_lr must be in (0, 1], got {self.threshold_lr}")


@torch.no_grad()
def global_kth_largest(z: Tensor, k: int) -> Tensor:
    """The k-th largest entry of z gathered over all data-parallel ranks (this rank's z alone without them)."""
    flat = z.reshape(-1)
    top = flat.topk(min(k, flat.numel()), sorted=False).values
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Every gathered tensor lives on z's device: NCCL takes only CUDA tensors, gloo either.
        sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([top.numel()], device=z.device))
        padded = torch.full((int(max(s.item() for s in sizes)),), float("-inf"), dtype=top.dtype, device=z.device)
        padded[: top.numel()] = top
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        top = torch.cat(parts)
    return top.topk(k, sorted=False).values.min()


@torch.no_grad()
def batch_cut(z: Tensor, k_total: int, per_row: int) -> Tensor:
    """The k_total-th largest entry of z: [B, n] over all ranks, without sorting all B·n entries.

    Each row offers its ``per_row`` largest entries; if the k_total-th largest offer c is below every
    row's smallest offer, no row held back an entry ≥ c and c is exact. Otherwise (some row has more
    than ``per_row`` of the batch's top entries; decided alike on every rank) all entries compete.
    """
    m = min(z.shape[1], per_row)
    offers = z.topk(m, dim=1, sorted=False).values  # [B, m]
    cut = global_kth_largest(offers, k_total)
    if m < z.shape[1]:
        overflow = (offers.min(1).values >= cut).any().to(torch.int32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(overflow, op=dist.ReduceOp.MAX)
        if bool(overflow):
            cut = global_kth_largest(z, k_total)
    return cut


@register
class BatchTopKSAE(SparseAutoencoder):
    arch = "batchtopk"
    saelens_name = "batchtopk"
    config_cls = BatchTopKConfig
    cfg: BatchTopKConfig
    threshold: Tensor

    def __init__(self, cfg: BatchTopKConfig, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        # −1 marks "not learned yet": encode is a plain ReLU until the first training batch sets θ.
        self.register_buffer("threshold", torch.tensor(-1.0))

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        # SAELens runs a trained BatchTopK SAE as a JumpReLU whose thresholds all equal θ.
        _, _, tensors = super().saelens_tensors()
        tensors["threshold"] = self.threshold.detach().expand(self.latents).clone()
        return "jumprelu", {}, tensors

    @classmethod
    def saelens_config(cls, cfg: dict) -> dict:
        return {"k": int(cfg["k"])} if "k" in cfg else {}

    @classmethod
    def saelens_state(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        state = dict(tensors)
        if "topk_threshold" in state:
            state["threshold"] = state.pop("topk_threshold").reshape(())
        return state

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x).relu()
        return z * (z > self.threshold)

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        pre = self.pre_acts(x)
        z = pre.relu()
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        cut = batch_cut(z.detach(), self.cfg.k * x.shape[0] * world, per_row=4 * self.cfg.k)
        keep = (z >= cut) & (z > 0)
        codes = z * keep
        x_hat = self.decode(codes)
        loss, parts = self.reconstruction_terms(x, codes, x_hat)
        if self.training:
            self._update_threshold(codes.detach(), keep)
            if dead_mask is not None and self.cfg.auxk_coef > 0 and bool(dead_mask.any()):
                aux = auxk_loss(self, pre.detach().clone(), (x - self.b_dec).detach(), (x - x_hat).detach(), dead_mask,
                                self.cfg.auxk_k, self.cfg.auxk_normalize, self.cfg.auxk_dead_scale)
                loss = loss + self.cfg.auxk_coef * aux
                parts["auxk"] = aux.detach()
        return ForwardOutput(x_hat, codes, loss, parts)

    def reconstruction_terms(self, x: Tensor, codes: Tensor, x_hat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The reconstruction part of the loss and its logged parts (a subclass may reconstruct differently)."""
        recon = reconstruction_loss(x, x_hat)
        return recon, {"recon": recon.detach()}

    @torch.no_grad()
    def _update_threshold(self, codes: Tensor, keep: Tensor) -> None:
        kept = codes[keep]
        smallest = kept.min() if kept.numel() else torch.tensor(float("inf"), device=codes.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        if not torch.isfinite(smallest):
            return
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(1 - self.cfg.threshold_lr).add_(self.cfg.threshold_lr * smallest)

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

Training runs through the sparse kernels of :mod:`mechscope.sae.sparse_ops`, like TopK: the dense
pre-activations are computed once under no_grad, the kept entries are picked as ragged codes (the row,
latent and value of each of the ≈ B·k kept entries; :func:`batch_topk_select`), and the decoder and every
gradient touch only those entries. The maths is the dense formula's: x̂ = Σ_{kept (b, i)} z[b, i] W_dec[i]
+ b_dec equals codes W_dec + b_dec, and the gradients are those of autograd through z·keep with the
selection held fixed (``tests/unit/test_sae_batchtopk_sparse.py`` checks the loss and every gradient
against the dense path). The codes a training forward returns are :class:`SparseCodes` padded to the
batch's largest row count (:func:`padded_codes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mechscope.distributed import collective, data_parallel
from mechscope.sae.base import (
    ForwardOutput,
    SparseAutoencoder,
    SparseCodes,
    reconstruction_loss,
    register,
)
from mechscope.sae.maths import auxk_loss
from mechscope.sae.sparse_ops import ragged_bags, sparse_latents
from mechscope.sae.topk import TopKConfig, TopKSAE


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
    if data_parallel() and dist.get_world_size() > 1:
        # Every gathered tensor lives on z's device: NCCL takes only CUDA tensors, gloo either.
        sizes = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(dist.get_world_size())]
        with collective("BatchTopK's all-gather of the top activations"):
            dist.all_gather(sizes, torch.tensor([top.numel()], device=z.device))
            padded = torch.full((int(max(s.item() for s in sizes)),), float("-inf"), dtype=top.dtype, device=z.device)
            padded[: top.numel()] = top
            parts = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(parts, padded)
        top = torch.cat(parts)
    return top.topk(k, sorted=False).values.min()


def _offer_cut(offers: Tensor, k_total: int, held_back: bool) -> tuple[Tensor, bool]:
    """(the k_total-th largest of the offers [B, m] over all ranks, whether that is exact for the full rows).

    If the cut c is below every row's smallest offer, no row held back an entry ≥ c and c is exact.
    Otherwise some row has more than m of the batch's top entries (decided alike on every rank)."""
    cut = global_kth_largest(offers, k_total)
    if not held_back:
        return cut, True
    overflow = (offers.min(1).values >= cut).any().to(torch.int32)
    if data_parallel():
        with collective("BatchTopK's all-reduce of the cut's overflow"):
            dist.all_reduce(overflow, op=dist.ReduceOp.MAX)
    return cut, not bool(overflow)


@torch.no_grad()
def batch_cut(z: Tensor, k_total: int, per_row: int) -> Tensor:
    """The k_total-th largest entry of z: [B, n] over all ranks, without sorting all B·n entries.

    Each row offers its ``per_row`` largest entries; the k_total-th largest offer is exact unless a row
    held back an entry at least as large (:func:`_offer_cut`), in which case all entries compete.
    """
    m = min(z.shape[1], per_row)
    cut, exact = _offer_cut(z.topk(m, dim=1, sorted=False).values, k_total, m < z.shape[1])
    return cut if exact else global_kth_largest(z, k_total)


def _all_sum(n: int, device: torch.device) -> int:
    """n summed over all data-parallel ranks."""
    if not data_parallel():
        return n
    total = torch.tensor([n], dtype=torch.long, device=device)
    with collective("BatchTopK's all-reduce of a count"):
        dist.all_reduce(total)
    return int(total)


@torch.no_grad()
def batch_topk_select(
    pre: Tensor, k_total: int, stride: int = 32, slack: float = 1.25
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchTopK's kept entries as ragged codes. pre: [B, n] pre-activations → (rows, idx, acts) : [E] each,
    ordered by row and, within a row, by latent.

    Kept: z = ReLU(pre) with z ≥ c and z > 0, c = the k_total-th largest z of the batch over all ranks
    (as :func:`batch_cut`). Found without a per-row top-k: every ``stride``-th row gives an estimate c̃
    (the ⌈slack·k_total·share⌉-th largest of its entries, share = the fraction of rows sampled); if at
    least k_total entries are ≥ c̃ (counted over all ranks), those candidates hold every kept entry and
    c is their k_total-th largest; otherwise c̃ is lowered (twice, four times … the sample rank) down to
    0, where the candidates are all positive entries (and, with fewer than k_total of them, all are kept:
    c ≤ 0). The estimate only decides how many candidates one pass collects; the selection is exact.
    """
    B = pre.shape[0]  # pre: [B, n]
    sample = pre[::stride]  # rows of a shuffled batch are alike: a row sample estimates c without bias
    rank = math.ceil(slack * k_total * sample.shape[0] / B)
    while True:
        est = float(global_kth_largest(sample, rank)) if rank <= sample.numel() else 0.0
        rows, idx = (pre >= est if est > 0 else pre > 0).nonzero(as_tuple=True)  # row-major, latents ascending
        total = _all_sum(rows.numel(), pre.device)
        if total >= k_total or est <= 0:
            break
        rank *= 2
    acts = pre[rows, idx]
    if total > k_total:
        keep = (acts >= global_kth_largest(acts, k_total)).nonzero().squeeze(1)  # one nonzero for the three
        rows, idx, acts = rows.index_select(0, keep), idx.index_select(0, keep), acts.index_select(0, keep)
    return rows, idx, acts


@torch.no_grad()
def padded_codes(rows: Tensor, idx: Tensor, acts: Tensor, B: int) -> SparseCodes:
    """Ragged codes (ordered by row) as :class:`SparseCodes` : [B, K], K = the largest row count (at least 1).

    Row b's c_b entries come first; its K − c_b other slots hold zero acts at latent 0 (a zero entry's
    index is arbitrary in :class:`SparseCodes`). Only the trainer's bookkeeping (fired latents, L0) reads
    these; the loss and gradients use the ragged codes.
    """
    counts = torch.bincount(rows, minlength=B)  # [B] c_b
    K = max(int(counts.max()) if counts.numel() else 0, 1)
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]  # position within its row
    top_idx = torch.zeros(B, K, dtype=idx.dtype, device=idx.device)
    top_idx[rows, slot] = idx
    top_acts = torch.zeros(B, K, dtype=acts.dtype, device=acts.device)
    top_acts[rows, slot] = acts
    return SparseCodes(top_acts, top_idx)


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

    # The one dense product x_c W_enc + b_enc, computed as TopK computes it (measured cheapest there).
    _pre_acts_one_matmul = TopKSAE._pre_acts_one_matmul

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x).relu()
        return z * (z > self.threshold)

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        x_c = (x - self.b_dec).detach()
        world = dist.get_world_size() if data_parallel() else 1
        with torch.no_grad():
            pre = self._pre_acts_one_matmul(x_c)  # [B, n], the one dense product
            rows, idx, acts = batch_topk_select(pre, self.cfg.k * x.shape[0] * world)
        x_hat, loss, parts = self.reconstruction_terms(x, x_c, rows, idx, acts)
        if self.training:
            self._update_threshold(acts)
            if dead_mask is not None and self.cfg.auxk_coef > 0 and bool(dead_mask.any()):
                aux = auxk_loss(
                    self,
                    pre,
                    x_c,
                    (x - x_hat).detach(),
                    dead_mask,  # pre is overwritten: no longer needed
                    self.cfg.auxk_k,
                    self.cfg.auxk_normalize,
                    self.cfg.auxk_dead_scale,
                )
                loss = loss + self.cfg.auxk_coef * aux
                parts["auxk"] = aux.detach()
        return ForwardOutput(x_hat, padded_codes(rows, idx, acts.detach(), x.shape[0]), loss, parts)

    def reconstruction_terms(
        self, x: Tensor, x_c: Tensor, rows: Tensor, idx: Tensor, acts: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(x̂ : [B, d], the reconstruction part of the loss, its logged parts) from the kept entries as ragged
        codes (rows, idx, acts : [E], by row then latent) and x_c = x − b_dec (detached). A subclass may
        reconstruct differently (Matryoshka's prefixes)."""
        bags = ragged_bags(rows, x.shape[0])
        x_hat = sparse_latents(acts, idx, x_c, self.W_enc, self.b_enc, self.b_dec, self.W_dec, bags, rows) + self.b_dec
        recon = reconstruction_loss(x, x_hat)
        return x_hat, recon, {"recon": recon.detach()}

    @torch.no_grad()
    def _update_threshold(self, acts: Tensor) -> None:
        kept = acts[acts > 0]
        smallest = kept.min() if kept.numel() else torch.tensor(float("inf"), device=acts.device)
        if data_parallel():
            with collective("BatchTopK's all-reduce of the smallest kept activation"):
                dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        if not torch.isfinite(smallest):
            return
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(1 - self.cfg.threshold_lr).add_(self.cfg.threshold_lr * smallest)

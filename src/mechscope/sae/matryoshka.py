"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of one dictionary,
each of which must reconstruct the input on its own.

Shapes: B rows, d width, n latents, G levels with prefix widths w_1 < … < w_G = n.

Encoding is BatchTopK's (:mod:`mechscope.sae.batchtopk`): codes c = the B·k largest entries of
ReLU((x − b_dec) W_enc + b_enc) over the batch, one selection over the whole dictionary; inference uses
the learned global threshold θ. The loss reconstructs x from every prefix of the dictionary::

    x̂_g = b_dec + c[:, :w_g] W_dec[:w_g]            (g = 1 … G; x̂_G is the SAE's reconstruction)
    ℓ_0 = mean_rows ‖x − b_dec‖²,  ℓ_g = mean_rows ‖x − x̂_g‖²
    loss = (ℓ_0 + ℓ_1 + … + ℓ_G) / (G + 1)  +  auxk_coef · AuxK

so the first latents are pushed to carry the most common, most general directions (a parent feature
cannot leave a child's part of its direction to a later latent without the earlier prefixes paying for
it): the absorption of a child by its parent's latent that a flat dictionary shows is what the nesting
removes.

Training computes every prefix from one sparse decode (:meth:`MatryoshkaSAE.reconstruction_terms`). With
group g = latents [w_{g−1}, w_g) (w_0 = 0) and the kept entries of BatchTopK's sparse path (ragged
codes ordered by row and, within a row, by latent, so every (row, group)'s entries are contiguous), one
embedding-bag pass over the ≈ B·k entries gives the per-group partial decodes

    P[g, b] = Σ_{kept (b, i): w_{g−1} ≤ i < w_g} z[b, i] W_dec[i]          [G, B, d]

(a group with no kept latent in a row gives 0); then the residuals r_0 = x − b_dec, r_g = r_{g−1} − P[g]
= x − x̂_g give ℓ_g = mean_rows ‖r_g‖², and x̂ = x − r_G (:class:`NestedLosses`, with its own backward). The decoder and encoder
gradients go through the same sparse kernels as TopK's (:mod:`mechscope.sae.sparse_ops`, bags (b, g) in
place of rows); the loss and every gradient equal the dense formula's (:meth:`prefix_losses`, kept as
the reference; ``tests/unit/test_sae_matryoshka_sparse.py``).

Where this departs from the references, and why:

- The latents are selected once over the full dictionary and every prefix keeps the codes it was
  given, as in Bussmann et al.'s reference training code. SAELens instead re-selects the top B·k among
  each prefix's own pre-activations; then an inner level's codes differ from what the full SAE
  computes at inference, and the nesting no longer describes the SAE that is used.
- The mean over G + 1 terms (Bussmann et al.) rather than SAELens's sum over G levels: the loss stays
  on the scale of one reconstruction, so the learning rate and AuxK weight of BatchTopK carry over.
- Default widths double: n/2^(L−1), …, n/2, n for L = ``levels``, none below k (configurable;
  ``widths`` overrides). Bussmann et al. choose group sizes per run; doubling is a default that needs no
  tuning and keeps the first prefix small enough to be forced onto the most common directions.

Saved and exported like BatchTopK: SAELens runs it as a JumpReLU with every threshold θ (SAELens
saves its own Matryoshka SAEs that way too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd import Function

from mechscope.sae.base import register
from mechscope.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from mechscope.sae.sparse_ops import range_bags, sparse_latents


@dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    """A Matryoshka BatchTopK SAE: a BatchTopK SAE whose dictionary prefixes each reconstruct the input."""

    levels: int = 5
    """Number of nested prefixes G when ``widths`` is empty: widths n/2^(G−1), …, n/2, n (none below k;
    equal widths merge)."""
    widths: tuple[int, ...] = ()
    """Explicit prefix widths, strictly increasing and ending at ``latents`` (empty: from ``levels``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.widths and self.levels < 1:
            raise ValueError(f"levels must be ≥ 1, got {self.levels}")
        w = self.prefix_widths()
        if any(b <= a for a, b in zip(w, w[1:])) or w[0] <= 0:
            raise ValueError(f"widths must be positive and strictly increasing, got {w}")
        if w[-1] != self.latents:
            raise ValueError(
                f"the last width must equal latents={self.latents}, got {w[-1]}; add {self.latents} at the end"
            )
        if w[0] < self.k:
            raise ValueError(
                f"the smallest prefix ({w[0]}) must hold at least k={self.k} latents; use fewer levels or a larger first width"
            )

    def prefix_widths(self) -> tuple[int, ...]:
        """The G prefix widths w_1 < … < w_G = latents."""
        if self.widths:
            return tuple(int(w) for w in self.widths)
        return tuple(sorted({max(self.k, self.latents >> (self.levels - 1 - g)) for g in range(self.levels)}))


class NestedLosses(Function):
    """(ℓ : [G + 1], r_G : [B, d]) from r_0 : [B, d] and the per-group decodes P : [G, B, d], where
    r_g = r_{g−1} − P[g] and ℓ_g = mean_b ‖r_g‖², with the hand-written backward

        c_g = ∂ℓ_g · 2/B,   T_g = Σ_{h ≥ g} c_h r_h (+ ∂r_G),   ∂P[g] = −T_g,   ∂r_0 = T_0,

    run from g = G down, rebuilding r_{g−1} = r_g + P[g] instead of keeping all G + 1 residuals. Autograd
    through the same loop costs about twice the passes over [B, d] tensors (a sub, a square, a sum per level
    forward; their backward and the restacking of ∂P); on CPU those passes are most of Matryoshka's extra cost.
    """

    @staticmethod
    def forward(ctx, r0: Tensor, parts: Tensor) -> tuple[Tensor, Tensor]:
        G = parts.shape[0]
        r = r0.clone()
        losses = r0.new_empty(G + 1)
        losses[0] = torch.linalg.vecdot(r, r).mean()
        for g in range(G):
            r.sub_(parts[g])
            losses[g + 1] = torch.linalg.vecdot(r, r).mean()
        ctx.save_for_backward(parts, r)
        return losses, r

    @staticmethod
    def backward(ctx, grad_losses: Tensor, grad_r: Tensor | None):
        parts, r_last = ctx.saved_tensors
        G, B, _ = parts.shape
        c = grad_losses * (2.0 / B)  # [G + 1]
        r = r_last.clone()
        T = r * c[G] if grad_r is None else torch.add(grad_r, r, alpha=float(c[G]))
        grad_parts = torch.empty_like(parts)
        for g in range(G - 1, -1, -1):
            torch.neg(T, out=grad_parts[g])
            r.add_(parts[g])  # r_g
            T.add_(r, alpha=float(c[g]))
        return T, grad_parts


@register
class MatryoshkaSAE(BatchTopKSAE):
    arch = "matryoshka"
    saelens_name = "matryoshka_batchtopk"
    config_cls = MatryoshkaConfig
    cfg: MatryoshkaConfig

    @classmethod
    def saelens_config(cls, cfg: dict) -> dict:
        # A SAELens training file names its levels ``matryoshka_widths`` (ending at d_sae).
        out = super().saelens_config(cfg)
        if cfg.get("matryoshka_widths"):
            out["widths"] = tuple(int(w) for w in cfg["matryoshka_widths"])
        return out

    def prefix_losses(self, x: Tensor, codes: Tensor) -> Tensor:
        """[G + 1] the losses ℓ_0 (b_dec alone), ℓ_1 … ℓ_G of the nested reconstructions of x [B, d] from dense
        codes [B, n]: one dense decode per level. The reference the sparse training path is checked against."""
        x_hat = self.b_dec.expand_as(x)
        losses = [(x - x_hat).pow(2).sum(-1).mean()]
        start = 0
        for w in self.cfg.prefix_widths():
            x_hat = x_hat + codes[:, start:w] @ self.W_dec[start:w]
            losses.append((x - x_hat).pow(2).sum(-1).mean())
            start = w
        return torch.stack(losses)

    def reconstruction_terms(
        self, x: Tensor, x_c: Tensor, rows: Tensor, idx: Tensor, acts: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """x̂ = x̂_G, the mean of the G + 1 nested losses, and ``recon`` (logged) = the full dictionary's ℓ_G;
        from one grouped sparse decode (module docstring). rows, idx, acts: [E] ragged codes; x_c = x − b_dec
        (detached)."""
        B, d = x.shape
        bounds = torch.tensor(self.cfg.prefix_widths(), device=idx.device)  # [G]
        bags, perm = range_bags(idx, rows, B, bounds)
        rows, idx, acts = rows[perm], idx[perm], acts[perm]  # entries by (group, row, latent)
        parts = sparse_latents(acts, idx, x_c, self.W_enc, self.b_enc, self.b_dec, self.W_dec, bags, rows)  # [G·B, d]
        loss, r = NestedLosses.apply(x - self.b_dec, parts.view(bounds.numel(), B, d))  # [G + 1], r_G
        return x - r, loss.mean(), {"recon": loss[-1].detach(), "recon_first_prefix": loss[1].detach()}

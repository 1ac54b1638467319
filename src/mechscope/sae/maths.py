"""Maths shared by every SAE architecture, written once.

Shapes: B rows, d activation width, n latents.

- Decoder rows of unit norm: ``W_dec[i] ← W_dec[i] / ‖W_dec[i]‖``, and, before each optimiser step,
  the gradient component parallel to each row is removed, ``g_i ← g_i − ⟨g_i, w_i⟩ w_i / ‖w_i‖²``,
  so the step moves each row along the unit sphere (to first order) instead of growing it.
- Geometric median (Weiszfeld): ``m ← Σ w_i x_i / Σ w_i`` with ``w_i = 1 / max(‖x_i − m‖, ε)``,
  started at the mean; the b_dec initialisation that is robust to outlying rows.
- Input normalisation: train on ``s·x`` with ``s = √d / E‖x‖`` so that E‖s·x‖ = √d whatever the
  site's scale; on save the scale is folded into the weights (:func:`fold_input_scale_`).
- Dead latents: a latent is dead when it has not fired on the last ``window`` rows; AuxK trains them
  on the residual the live latents leave.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from mechscope.sae.sparse_ops import sparse_latents

AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over data-parallel ranks (identity with one process)."""


def _no_reduce(t: Tensor) -> Tensor:
    return t


@torch.no_grad()
def normalize_decoder_rows_(W_dec: Tensor, eps: float = 1e-8) -> None:
    """Scale each decoder row to unit norm, in place. W_dec: [n, d]."""
    W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(eps))


@torch.no_grad()
def remove_parallel_grad_(W_dec: nn.Parameter, eps: float = 1e-8) -> None:
    """Remove from W_dec.grad the component parallel to each decoder row, in place.

    g_i ← g_i − (⟨g_i, w_i⟩ / ‖w_i‖²) w_i. With unit rows this is the tangent projection that keeps
    Adam from spending its step on a norm that the next renormalisation would undo.
    """
    g = W_dec.grad
    if g is None:
        return
    w = W_dec.detach()
    coef = torch.linalg.vecdot(g, w) / torch.linalg.vecdot(w, w).clamp_min(eps)  # [n]
    g.addcmul_(coef[:, None], w, value=-1.0)


@torch.no_grad()
def geometric_median(
    x: Tensor, max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-8, all_reduce: AllReduce = _no_reduce
) -> Tensor:
    """Geometric median of the rows of x by Weiszfeld's iteration, in float64. x: [B, d] → [d].

    argmin_m Σ_i ‖x_i − m‖. Each step is m ← Σ w_i x_i / Σ w_i with w_i = 1/max(‖x_i − m‖, ε).
    Only sums over rows enter, so ``all_reduce`` (a sum over data-parallel ranks) makes every
    rank compute the median of the global batch. Stops when the step is below ``tol``·(1 + ‖m‖).
    """
    x64 = x.double()
    count = all_reduce(torch.tensor([float(x64.shape[0])], dtype=torch.float64))
    m = all_reduce(x64.sum(0)) / count
    for _ in range(max_iter):
        w = 1.0 / (x64 - m).norm(dim=1).clamp_min(eps)  # [B]
        num = all_reduce(w @ x64)  # [d]
        den = all_reduce(w.sum().reshape(1))
        m_next = num / den
        step = float((m_next - m).norm())
        m = m_next
        if step <= tol * (1.0 + float(m.norm())):
            break
    return m.to(x.dtype)


@torch.no_grad()
def input_scale(x: Tensor, all_reduce: AllReduce = _no_reduce) -> float:
    """s = √d / E‖x‖ estimated on the rows of x (summed over ranks). x: [B, d]."""
    norms = x.double().norm(dim=1)
    total = all_reduce(torch.stack([norms.sum(), torch.tensor(float(norms.numel()), dtype=torch.float64)]))
    mean_norm = float(total[0] / total[1])
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise inputs: mean row norm is {mean_norm}")
    return math.sqrt(x.shape[1]) / mean_norm


@torch.no_grad()
def fold_input_scale_(W_enc: Tensor, W_dec: Tensor, b_dec: Tensor, scale: float) -> None:
    """Fold the training-time input scale s into the weights, in place, so that the SAE works on raw x.

    The model was trained on s·x: codes = f((s·x − b_dec) W_enc + b_enc), x̂_scaled = codes W_dec + b_dec.
    With W_enc' = s·W_enc, W_dec' = W_dec/s, b_dec' = b_dec/s the raw input gives the same codes,
    (x − b_dec/s)(s·W_enc) = (s·x − b_dec) W_enc, and x̂ = x̂_scaled / s. Thresholds act on codes and
    do not change.
    """
    W_enc.mul_(scale)
    W_dec.div_(scale)
    b_dec.div_(scale)


class DeadLatentTracker:
    """Counts, per latent, the rows seen since it last fired; dead = not fired on the last ``window`` rows.

    ``update(fired, rows)`` takes fired: BoolTensor[n] (the latents that fired on this batch, already
    combined over ranks) and the number of rows in the (global) batch.
    """

    def __init__(self, n: int, window: int):
        if window <= 0:
            raise ValueError(f"dead-latent window must be positive rows, got {window}")
        self.window = window
        self.rows_since_fired = torch.zeros(n, dtype=torch.long)  # [n]

    def update(self, fired: Tensor, rows: int) -> None:
        self.rows_since_fired += rows
        self.rows_since_fired[fired.to(self.rows_since_fired.device)] = 0

    def dead_mask(self) -> Tensor:
        """BoolTensor[n]: True for latents silent on the last ``window`` rows."""
        return self.rows_since_fired >= self.window

    def dead_fraction(self) -> float:
        return float(self.dead_mask().double().mean())

    def state_dict(self) -> dict[str, Tensor]:
        return {"rows_since_fired": self.rows_since_fired.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.rows_since_fired = state["rows_since_fired"].to(torch.long).clone()


class EncoderDecoder(Protocol):
    """What AuxK reads of an SAE (or a view of one): ``W_enc [d, n]``, ``b_enc [n]``, ``b_dec [d]``, ``W_dec [n, d_out]``."""

    @property
    def W_enc(self) -> Tensor: ...
    @property
    def b_enc(self) -> Tensor: ...
    @property
    def b_dec(self) -> Tensor: ...
    @property
    def W_dec(self) -> Tensor: ...


AUXK_NORMALIZE = ("none", "residual")
"""How the AuxK term is normalised (:func:`auxk_loss`)."""


def auxk_loss(
    sae: EncoderDecoder,
    pre: Tensor,
    x_c: Tensor,
    residual: Tensor,
    dead_mask: Tensor,
    auxk_k: int,
    normalize: str = "none",
    dead_scale: bool = False,
) -> Tensor:
    """AuxK (Gao et al. 2024): a reconstruction of the residual by dead latents.

    e = x − x̂ : [B, d] is a fixed target; ê = Σ of the k_aux largest pre-activations among dead latents
    (ReLU'd) times their decoder rows, no bias, k_aux = min(auxk_k or d/2, number of dead). Then

      normalize="none":      L = mean_b ‖e_b − ê_b‖²                       (our default)
      normalize="residual":  L = Σ_b ‖e_b − ê_b‖² / Σ_b ‖e_b − ē‖²,  ē = mean_b e_b   (OpenAI's reference)

    and, with ``dead_scale``, L is multiplied by min(n_dead / k_aux, 1) (EleutherAI sparsify), which
    quietens the term while few latents are dead.

    Departure from the paper's reference (stated, measured in docs/sae.md): the reference divides by the
    residual's variance, which makes the AuxK term 1/FVU times stronger relative to the reconstruction
    term as the fit improves; ours keeps AuxK in the reconstruction's own units (the trainer's inputs
    have E‖x‖ = √d, so both terms are ≈ d × an unexplained fraction), so ``auxk_coef`` means the same
    thing early and late. On the feature-recovery data (bench/sae_paper_defaults.py, docs/benchmarks.md)
    "none" measured better: recovery 0.996 vs 0.985, held-out FVU 0.192 vs 0.203; it stays the default.

    The gradient reaches only those dead latents' encoder and decoder rows (and b_dec), through the
    sparse path. pre: [B, n] pre-activations (overwritten); x_c = x − b_dec : [B, d] detached;
    dead_mask: BoolTensor[n].
    """
    n_dead = int(dead_mask.sum())
    k_aux = min(auxk_k or sae.W_dec.shape[1] // 2, n_dead)
    with torch.no_grad():
        pre.masked_fill_(~dead_mask, float("-inf"))
        acts, idx = pre.topk(k_aux, dim=1, sorted=False)
        acts = acts.relu_()
    e_hat = sparse_latents(acts, idx, x_c, sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec)
    if normalize == "none":
        loss = (e_hat - residual).pow(2).sum(-1).mean()
    elif normalize == "residual":
        loss = (e_hat - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-30)
    else:
        raise ValueError(f"auxk normalize must be one of {AUXK_NORMALIZE}, got {normalize!r}")
    if dead_scale:
        loss = loss * min(n_dead / max(auxk_k or sae.W_dec.shape[1] // 2, 1), 1.0)
    return loss

"""Transcoder (Dunefsky et al. 2024): a sparse dictionary that reads one site and predicts another,
typically an MLP's input (``mlp_in.L``) → the same MLP's output (``mlp_out.L``).

Shapes: B rows, d_in width of the input site, d_out width of the target site, n latents, k kept per row.

    pre   = x W_enc + b_enc                         x: [B, d_in], W_enc: [d_in, n]
    codes = ReLU(TopK_k(pre))                       [B, n], k non-zeros per row
    ŷ     = codes W_dec + b_dec                     W_dec: [n, d_out] (unit rows), b_dec: [d_out]
    loss  = mean_rows ‖y − ŷ‖²  +  auxk_coef · AuxK(y − ŷ)

Training batches are paired: each row is the input site and the target site side by side,
``[x | y]`` of width d_in + d_out, as the activation store serves two sites read at the same token
(``ActivationStore.batches((site, target_site), …)``; ``mechscope train --site mlp_in.6 --target-site
mlp_out.6 --arch transcoder``). :meth:`TranscoderSAE.split_rows` cuts them apart. A batch of width d_in
alone (only when d_out = d_in) is its own target: a transcoder from a site to itself is a TopK SAE
without the input centring, which is what the per-architecture tests and the toy benchmark exercise;
``mechscope train`` refuses a transcoder without ``--target-site``.

Where this departs from the paper, and why:

- TopK activation (Gao et al. 2024) with AuxK, instead of Dunefsky et al.'s ReLU with an L1 penalty:
  L0 is set exactly by k (comparable with the TopK SAEs at the same site, no coefficient search) and
  it is the common modern choice (EleutherAI sparsify's transcoders and Paulo et al. 2025 use it).
- The encoder reads x itself, not x − b_dec: b_dec lives in the output space (width d_out), so it
  cannot centre the input; an input offset c would only shift b_enc by −c W_enc, so nothing is lost.
  SAELens's transcoders and sparsify do the same.
- W_enc and W_dec are initialised independently (random unit directions), not tied: the input and
  output spaces differ, so the SAE's W_enc = W_decᵀ initialisation means nothing here.

The trainer scales the two halves apart (s = √d_in / E‖x‖, s_y = √d_out / E‖y‖: on SmolLM2 an MLP's
output is ~8× its input in norm) and the saved transcoder reads and writes raw activations:
s_y·ŷ(x) = f(s·x W_enc + b_enc) W_dec + b_dec + s·x W_skip gives W_enc' = s W_enc, W_dec' = W_dec / s_y,
b_dec' = b_dec / s_y, W_skip' = W_skip · s / s_y (:meth:`TranscoderSAE.fold_input_scale_`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from mechscope.sae.base import ForwardOutput, SparseAutoencoder, SparseCodes, reconstruction_loss, register
from mechscope.sae.maths import auxk_loss
from mechscope.sae.sparse_ops import sparse_latents
from mechscope.sae.topk import TopKConfig

if TYPE_CHECKING:
    from mechscope.sae.jumprelu import JumpReLUConfig

    _Mixin = SparseAutoencoder  # the type checker reads the mixin as the SAE it is mixed into
else:
    _Mixin = object


@dataclass(frozen=True)
class PairedFields:
    """The target width of a dictionary that reads one site and writes another (mixed in before an SAE config)."""

    d_out: int = 0
    """Width of the target site the transcoder predicts (taken from the activation store); 0 = d_in."""

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.d_out < 0:
            raise ValueError(f"d_out must be positive (or 0 for d_in), got {self.d_out}")


@dataclass(frozen=True)
class TranscoderConfig(PairedFields, TopKConfig):
    """A TopK transcoder: reads a d_in-wide site, writes a d_out-wide one."""


class PairedDictionary(_Mixin):
    """What every single-layer transcoder shares, whatever its activation (mixed in before
    :class:`SparseAutoencoder`): paired rows, independent init, an encoder that reads x itself, the scale
    fold, ŷ = decode(codes) (+ a skip term), and strict SAELens loading with ``d_out``."""

    cfg: TopKConfig | JumpReLUConfig

    paired: ClassVar[bool] = True
    """Trains on paired rows [x | y] (input site, target site): ``mechscope train`` needs ``--target-site``."""

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Independent random unit directions for decoder rows [n, d_out] and encoder columns [d_in, n]; zero biases."""
        n, d_in, d_out = self.cfg.latents, self.cfg.d_in, self.d_out
        W = torch.randn(n, d_out, generator=generator)
        self.W_dec.copy_(W * (self.dec_init_norm / W.norm(dim=1, keepdim=True)))
        E = torch.randn(n, d_in, generator=generator)
        self.W_enc.copy_((E / E.norm(dim=1, keepdim=True)).t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """[B, d_in + d_out] paired rows → (x [B, d_in], y [B, d_out]); [B, d_in] rows (d_out = d_in) → (rows, rows)."""
        return split_paired_rows(rows, self.cfg.d_in, self.d_out, self.arch, "input and target sites side by side")

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Make a transcoder trained on (s·x → s_y·y) read raw x and write raw y (module docstring). The
        pre-activations are unchanged, so a JumpReLU threshold needs no change."""
        fold_paired_scale_(self, scale, target_scale)

    def pre_acts(self, x: Tensor) -> Tensor:
        """x W_enc + b_enc (no input centring, see the module docstring). x: [B, d_in] → [B, n]."""
        return torch.addmm(self.b_enc, x, self.W_enc)

    def skip(self, x: Tensor) -> Tensor | None:
        """The linear term added to the output (none here; see :mod:`mechscope.sae.transcoder_skip`)."""
        return None

    def predict(self, x: Tensor, codes: Tensor | None = None) -> Tensor:
        """ŷ = codes W_dec + b_dec (+ the skip term). x: [B, d_in] → [B, d_out]."""
        out = self.decode(self.encode(x) if codes is None else codes)
        extra = self.skip(x)
        return out if extra is None else out + extra

    def paired_loss(
        self, x: Tensor, y: Tensor, y_hat: Tensor, pre: Tensor, dead_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The end of every paired training forward: ŷ += x W_skip (if any), the reconstruction loss, and AuxK on
        dead latents (the encoder reads x itself, so AuxK sees a zero input offset). x: [B, d_in] (detached),
        y: [B, d_out], y_hat: [B, d_out] from the latents, pre: [B, n] detached pre-activations (AuxK may
        overwrite them) → (ŷ, loss, logged parts)."""
        extra = self.skip(x)
        if extra is not None:
            y_hat = y_hat + extra
        recon = reconstruction_loss(y, y_hat)
        loss, parts = recon, {"recon": recon.detach()}
        if self.training and dead_mask is not None and self.cfg.auxk_coef > 0 and bool(dead_mask.any()):
            view = SimpleNamespace(
                W_enc=self.W_enc, b_enc=self.b_enc, b_dec=x.new_zeros(self.cfg.d_in), W_dec=self.W_dec
            )
            aux = auxk_loss(
                view,
                pre,
                x,
                (y - y_hat).detach(),
                dead_mask,
                self.cfg.auxk_k,
                self.cfg.auxk_normalize,
                self.cfg.auxk_dead_scale,
            )
            loss = loss + self.cfg.auxk_coef * aux
            parts["auxk"] = aux.detach()
        return y_hat, loss, parts

    def _saelens_paired(self) -> dict:
        """The cfg.json fields every SAELens transcoder carries beyond d_in and d_sae."""
        return {"d_out": self.d_out, "apply_b_dec_to_input": False}

    @classmethod
    def from_saelens(cls, cfg: dict, tensors: dict[str, Tensor]):
        """A SAELens transcoder of this kind (identical codes and outputs); every tensor must be ours."""
        if cfg.get("apply_b_dec_to_input", False):
            raise ValueError("apply_b_dec_to_input=True: SAELens transcoders never subtract b_dec from their input")
        sae = cls(cls.config_cls(d_in=int(cfg["d_in"]), latents=int(cfg["d_sae"]), **cls.saelens_config(cfg)))
        sae.load_state_dict(
            {k: v.float() for k, v in cls.saelens_state(tensors).items()}
        )  # strict: all, and only, ours
        return sae


@register
class TranscoderSAE(PairedDictionary, SparseAutoencoder):
    arch = "transcoder"
    saelens_name = "transcoder"
    config_cls = TranscoderConfig
    cfg: TranscoderConfig

    # ---- SAELens files ---------------------------------------------------------------------------
    # SAELens 6.x has ReLU transcoders ("transcoder", "skip_transcoder": codes = ReLU(x W_enc + b_enc),
    # apply_b_dec_to_input always False) and JumpReLU ones, no TopK. ReLU(TopK_n(pre)) = ReLU(pre), so a
    # ReLU transcoder is exactly this class with k = latents: SAELens files load as that, and only a
    # transcoder with k = latents is written as one. A TopK transcoder (k < latents) has no SAELens form
    # that gives the same codes, and saving it in SAELens layout is refused. JumpReLU transcoders are
    # :mod:`mechscope.sae.transcoder_jumprelu`.

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        if self.cfg.k != self.latents:
            from mechscope.sae.io import SAEFormatError  # io imports the base class: import it here

            raise SAEFormatError(
                f"SAELens has no TopK {self.arch} (its transcoders are ReLU or JumpReLU), so this "
                f"one (k={self.cfg.k} < latents={self.latents}) cannot be written in SAELens layout "
                "with the same codes; save it in mechscope layout"
            )
        tensors = {name: getattr(self, name).detach() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        return self.saelens_name, self._saelens_paired(), tensors

    @classmethod
    def saelens_config(cls, cfg: dict) -> dict:
        return {"k": int(cfg["d_sae"]), "d_out": int(cfg["d_out"])}

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """(values, indices) of the k largest pre-activations, ReLU'd. x: [B, d_in] → [B, k] ×2."""
        acts, idx = self.pre_acts(x).topk(self.cfg.k, dim=1, sorted=False)
        return SparseCodes(acts.relu(), idx)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_sparse(x).dense(self.latents)

    def forward(self, rows: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        """Training forward on paired rows [B, d_in + d_out]; ``x_hat`` is the prediction ŷ [B, d_out]."""
        x, y = self.split_rows(rows)
        x = x.detach()
        with torch.no_grad():
            pre = self.pre_acts(x)  # [B, n], the one dense product
            acts, idx = pre.topk(self.cfg.k, dim=1, sorted=False)
            acts = acts.relu_()
        # sparse_latents differentiates through x − b_dec; here the encoder reads x, so it gets a constant 0 offset.
        zero = x.new_zeros(self.cfg.d_in)
        y_hat = sparse_latents(acts, idx, x, self.W_enc, self.b_enc, zero, self.W_dec) + self.b_dec
        y_hat, loss, parts = self.paired_loss(x, y, y_hat, pre, dead_mask)
        return ForwardOutput(y_hat, SparseCodes(acts, idx), loss, parts)


def split_paired_rows(rows: Tensor, d_in: int, d_out: int, arch: str, layout: str) -> tuple[Tensor, Tensor]:
    """[B, d_in + d_out] paired rows → (x [B, d_in], y [B, d_out]); [B, d_in] rows with d_out = d_in are
    their own target. Any other width is refused, naming ``layout`` (how the store lays the sites out)."""
    if rows.shape[-1] == d_in + d_out:
        return rows[..., :d_in], rows[..., d_in:]
    if rows.shape[-1] == d_in and d_out == d_in:
        return rows, rows
    raise ValueError(
        f"a {arch} reading {d_in} and writing {d_out} columns needs rows of width {d_in + d_out} "
        f"({layout}), got {rows.shape[-1]}"
    )


@torch.no_grad()
def fold_paired_scale_(sae: SparseAutoencoder, scale: float, target_scale: float | None) -> None:
    """After training on (s·x → s_y·y), make ``sae`` read raw x and write raw y:
    W_enc ← s·W_enc, W_dec ← W_dec/s_y, b_dec ← b_dec/s_y, W_skip ← (s/s_y)·W_skip where there is one."""
    s_y = scale if target_scale is None else target_scale
    sae.W_enc.mul_(scale)
    sae.W_dec.div_(s_y)
    sae.b_dec.div_(s_y)
    W_skip = getattr(sae, "W_skip", None)
    if W_skip is not None:
        W_skip.mul_(scale / s_y)

"""The small base class every SAE architecture derives from, and the registry of architectures.

Shapes: B rows, d activation width (``d_in``), n latents (``latents``), k active latents per row.

Parameters (all architectures): ``W_enc [d, n]``, ``b_enc [n]``, ``W_dec [n, d]``, ``b_dec [d]``.
Every encoder reads ``x − b_dec``, so the pre-activations are ``(x − b_dec) W_enc + b_enc`` and
the reconstruction is ``x̂ = codes W_dec + b_dec``.

Training loss (all architectures) = reconstruction + the architecture's named extra terms, where
reconstruction = mean over rows of ‖x − x̂‖² (summed over the d coordinates). The trainer feeds
inputs scaled so that E‖x‖ = √d, so this is about d times the batch's unexplained fraction and
sparsity coefficients mean the same thing at every site.

Transcoders (:mod:`mechscope.sae.transcoder`) read one site and write another: their ``W_dec`` and
``b_dec`` have the target's width ``d_out`` (:attr:`SparseAutoencoder.d_out`, = d for an SAE), training
batches hold both sites side by side (:meth:`SparseAutoencoder.split_rows`), and :meth:`SparseAutoencoder.predict`
is the output the trainer, the evaluation and splicing score.

An architecture is one file: a frozen config deriving from :class:`SAEConfig` and a class deriving
from :class:`SparseAutoencoder`, decorated with :func:`register`. The CLI choices and the loaders
are generated from :data:`REGISTRY`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mechscope.config import check_ranges
from mechscope.dictionary import SparseCodes
from mechscope.sae.maths import fold_input_scale_, normalize_decoder_rows_, remove_parallel_grad_


class ForwardOutput(NamedTuple):
    """What a training forward returns."""

    x_hat: Tensor
    """[B, d] reconstruction."""
    codes: Tensor | SparseCodes
    """[B, n] dense codes, or :class:`SparseCodes` for architectures with a sparse path."""
    loss: Tensor
    """Scalar: reconstruction + every weighted extra term (what backward() is called on)."""
    parts: dict[str, Tensor]
    """Named, unweighted loss terms (``recon`` always; ``l1``, ``l0``, ``auxk``, ``aux_gate`` …), detached."""


def fired_latents(codes: Tensor | SparseCodes, n: int) -> Tensor:
    """BoolTensor[n]: latents with a non-zero code on some row of this batch."""
    if isinstance(codes, SparseCodes):
        return codes.fired(n)
    return (codes != 0).any(0)


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean over rows of ‖x − x̂‖² (summed over d). x, x_hat: [B, d] → scalar."""
    return (x_hat - x).pow(2).sum(-1).mean()


@dataclass(frozen=True)
class SAEConfig:
    """Size of a sparse autoencoder; each architecture adds its own fields."""

    d_in: int = 0
    """Width d of the activations the SAE reads (taken from the activation store when training)."""
    latents: int = 8192
    """Number of latents n (rows of the dictionary)."""

    def __post_init__(self) -> None:
        check_ranges(self)  # the ranges of every architecture's fields (each calls this __post_init__ first)
        if self.d_in <= 0:
            raise ValueError(f"d_in must be positive, got {self.d_in}")
        if self.latents <= 0:
            raise ValueError(f"latents must be positive, got {self.latents}")


REGISTRY: dict[str, type[SparseAutoencoder]] = {}
"""Architecture name → class; keys ``relu``, ``topk``, ``batchtopk``, ``matryoshka``, ``jumprelu``, ``gated``,
``transcoder``, ``skip_transcoder``."""


def register(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Class decorator: add an architecture to :data:`REGISTRY` under ``cls.arch``."""
    if cls.arch in REGISTRY:
        raise ValueError(f"architecture {cls.arch!r} registered twice")
    REGISTRY[cls.arch] = cls
    return cls


class SparseAutoencoder(nn.Module):
    """Base class: parameters, pre-activations, decoding and the hooks the trainer calls.

    Subclasses set ``arch`` and ``config_cls`` and implement :meth:`encode` and :meth:`forward`.
    """

    arch: ClassVar[str]
    """Registry name, written to cfg.json."""
    config_cls: ClassVar[type[SAEConfig]]
    """The architecture's frozen config class."""
    unit_norm_decoder: ClassVar[bool] = True
    """Keep decoder rows at unit norm during training (renormalise after each step, project the grad)."""
    dec_init_norm: ClassVar[float] = 1.0
    """Norm of each decoder row at initialisation."""
    saelens_name: ClassVar[str]
    """The SAELens architecture this class reads (cfg.json ``architecture``) and, by default, writes."""
    paired: ClassVar[bool] = False
    """True for dictionaries that read one site and predict another (transcoders): trained on paired rows."""
    metadata: dict[str, Any]
    """What the file it was loaded from records beside the weights (sites, model), set by the loaders; an SAE
    built in memory has none (read it as ``getattr(sae, "metadata", None)``)."""
    file_format: str
    """The format :func:`mechscope.sae.io.load_sae` read it from; set by that loader only."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        d, n, d_out = cfg.d_in, self.latents, self.d_out
        self.W_enc = nn.Parameter(torch.empty(d, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec = nn.Parameter(torch.empty(n, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random decoder rows of norm ``dec_init_norm``; encoder = decoder transpose; zero biases."""
        W = torch.randn(self.cfg.latents, self.cfg.d_in, generator=generator)
        W *= self.dec_init_norm / W.norm(dim=1, keepdim=True)
        self.W_dec.copy_(W)
        self.W_enc.copy_(W.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def latents(self) -> int:
        return self.cfg.latents

    @property
    def d_out(self) -> int:
        """Width of what the dictionary writes: d_in for an SAE, the target site's width for a transcoder."""
        return int(getattr(self.cfg, "d_out", 0) or self.cfg.d_in)

    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(what the encoder reads, what the output must reconstruct) from a training batch. An SAE
        reconstructs its input: rows [B, d] → (rows, rows). Transcoders read paired rows (module docstring)."""
        return rows, rows

    def predict(self, x: Tensor, codes: Tensor | None = None) -> Tensor:
        """The dictionary's output for inputs x [B, d_in] (with their dense ``codes`` if already computed):
        decode(encode(x)) here; a skip-transcoder adds its linear term. → [B, d_out]."""
        return self.decode(self.encode(x) if codes is None else codes)

    def pre_acts(self, x: Tensor) -> Tensor:
        """(x − b_dec) W_enc + b_enc. x: [B, d] → [B, n]."""
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes, zeros where inactive (inference semantics). x: [B, d] → [B, n]."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        """codes W_dec + b_dec. codes: [B, n] → [B, d]."""
        return torch.addmm(self.b_dec, codes, self.W_dec)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """Codes as (values, indices), k = the largest row L0 in the batch. x: [B, d] → [B, k] ×2.

        Architectures with a fixed k override this with a path that never builds [B, n] codes.
        """
        codes = self.encode(x)
        k = max(int((codes != 0).sum(1).max()), 1)
        acts, idx = codes.topk(k, dim=1, sorted=False)
        return SparseCodes(acts, idx)

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        """Σ_j values[b, j] W_dec[indices[b, j]] + b_dec, without dense codes. → [B, d]."""
        B, k = codes.values.shape
        offsets = torch.arange(0, B * k, k, device=codes.values.device)
        out = nn.functional.embedding_bag(
            codes.indices.reshape(-1),
            self.W_dec,
            offsets,
            mode="sum",
            per_sample_weights=codes.values.reshape(-1).to(self.W_dec.dtype),
        )
        return out + self.b_dec

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None, sparsity_scale: float = 1.0) -> ForwardOutput:
        """Training forward. x: [B, d]; dead_mask: BoolTensor[n] of dead latents (for auxiliary losses);
        sparsity_scale ∈ [0, 1] multiplies the sparsity coefficient during its warm-up."""
        raise NotImplementedError

    @torch.no_grad()
    def before_step(self) -> None:
        """Called after backward, before the optimiser step: project out the grad along decoder rows."""
        if self.unit_norm_decoder:
            remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after the optimiser step: put decoder rows back on the unit sphere."""
        if self.unit_norm_decoder:
            normalize_decoder_rows_(self.W_dec)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Make an SAE trained on s·x work on raw x (see :func:`mechscope.sae.maths.fold_input_scale_`).
        ``target_scale`` (transcoders, trained on paired rows) is the target half's own scale."""
        if target_scale is not None and target_scale != scale:
            raise ValueError(f"{type(self).__name__} reconstructs its input: one scale, not {scale} and {target_scale}")
        fold_input_scale_(self.W_enc, self.W_dec, self.b_dec, scale)

    @torch.no_grad()
    def absorb_input_bias_(self, shift: Tensor) -> None:
        """Add shift = b_dec W_enc : [n] to the encoder bias, in place.

        Converts an encoder that reads raw x (``x W_enc + b_enc``, SAELens's apply_b_dec_to_input=False)
        into this class's ``(x − b_dec) W_enc + b_enc`` with the same pre-activations.
        """
        self.b_enc.add_(shift)

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        """(SAELens architecture, extra cfg fields, tensors by SAELens name) for the SAELens inference format."""
        tensors = {name: getattr(self, name).detach() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        return self.saelens_name, {}, tensors

    @classmethod
    def from_saelens(cls, cfg: dict, tensors: dict[str, Tensor]) -> SparseAutoencoder:
        """Build from a SAELens cfg.json (6.x layout) and its tensors, with identical pre-activations."""
        sae = cls(cls.config_cls(d_in=int(cfg["d_in"]), latents=int(cfg["d_sae"]), **cls.saelens_config(cfg)))
        state = {k: v.float() for k, v in cls.saelens_state(tensors).items()}
        sae.load_state_dict(state, strict=False)
        missing = set(sae.state_dict()) - set(state)
        if missing:
            raise ValueError(f"SAELens {cls.saelens_name} weights lack {sorted(missing)}")
        if not cfg.get("apply_b_dec_to_input", True):
            sae.absorb_input_bias_(sae.b_dec @ sae.W_enc)
        return sae

    @classmethod
    def saelens_config(cls, cfg: dict) -> dict:
        """This class's config fields read from a SAELens cfg.json (beyond d_in and latents)."""
        return {}

    @classmethod
    def saelens_state(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """SAELens tensors renamed to this class's state_dict names."""
        return dict(tensors)

    def config_dict(self) -> dict:
        """cfg.json content: the architecture name and every config field."""
        return {"arch": self.arch, **dataclasses.asdict(self.cfg)}

"""Skip-transcoder (Paulo et al. 2025): a transcoder plus a linear skip term from input to output.

Shapes as in :mod:`mechscope.sae.transcoder`; W_skip: [d_in, d_out].

    ŷ = ReLU(TopK_k(x W_enc + b_enc)) W_dec + b_dec + x W_skip

The skip term carries the part of the MLP that is (close to) linear, so the latents only have to
explain what is not; Paulo et al. report lower loss at equal L0 with latents as interpretable. W_skip
starts at zero (as theirs) and is trained by the same Adam step with no penalty; it is neither
normalised nor sparse. Known answer (tests/unit/test_sae_transcoder.py): on a purely linear map
y = x A + c, W_skip converges to A.

Where this departs from the paper: TopK activation with AuxK, as :mod:`mechscope.sae.transcoder`
says (Paulo et al. trained with sparsify's TopK too, so this matches them). W_skip is stored as
[d_in, d_out] (x W_skip, like W_enc); SAELens stores its transpose [d_out, d_in], converted on export
and import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mechscope.sae.base import register
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE


@dataclass(frozen=True)
class SkipTranscoderConfig(TranscoderConfig):
    """A TopK transcoder with a linear skip term x W_skip."""


class SkipTerm:
    """The linear skip term x W_skip of a skip-transcoder (mixed in before a transcoder class): the parameter,
    its zero start, and its SAELens layout ([d_out, d_in], the transpose of ours)."""

    def __init__(self, cfg, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)  # type: ignore[call-arg]
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, self.d_out))  # type: ignore[attr-defined]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)  # type: ignore[misc]
        if hasattr(self, "W_skip"):
            self.W_skip.zero_()

    def saelens_tensors(self) -> tuple[str, dict, dict[str, Tensor]]:
        name, extra, tensors = super().saelens_tensors()  # type: ignore[misc]
        return name, extra, {**tensors, "W_skip": self.W_skip.detach().t()}  # SAELens: [d_out, d_in]

    @classmethod
    def saelens_state(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        out = super().saelens_state(tensors)  # type: ignore[misc]
        if "W_skip" in out:
            out["W_skip"] = out["W_skip"].t().contiguous()
        return out

    def skip(self, x: Tensor) -> Tensor:
        """x W_skip. x: [B, d_in] → [B, d_out]."""
        return x @ self.W_skip


@register
class SkipTranscoderSAE(SkipTerm, TranscoderSAE):
    arch = "skip_transcoder"
    saelens_name = "skip_transcoder"
    config_cls = SkipTranscoderConfig
    cfg: SkipTranscoderConfig

"""Random transcoders for the attribution-graph tests: with error nodes in the graph any transcoder makes the
replacement model exact, so random ones test the freezing and the edges without training."""

from __future__ import annotations

import torch

from mechscope.graph.replacement import LayerTranscoder
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE
from mechscope.sae.transcoder_jumprelu import (
    JumpReLUSkipTranscoderConfig,
    JumpReLUSkipTranscoderSAE,
)
from mechscope.sae.transcoder_skip import SkipTranscoderConfig, SkipTranscoderSAE


def random_transcoders(
    paths: list[str], d: int, skip: bool | str, seed: int = 0, scale: float = 0.5, outs: list[str] | None = None
) -> list[LayerTranscoder]:
    """One transcoder reading MLP ``paths[l]`` per layer. skip: False (TopK transcoders), True (TopK
    skip-transcoders) or "jumprelu" (JumpReLU skip-transcoders); ``outs[l]``: the module whose output it
    writes (default the MLP)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for l, p in enumerate(paths):
        if skip == "jumprelu":
            sae = JumpReLUSkipTranscoderSAE(JumpReLUSkipTranscoderConfig(d_in=d, latents=24, d_out=d))
        else:
            cls, cfg_cls = (SkipTranscoderSAE, SkipTranscoderConfig) if skip else (TranscoderSAE, TranscoderConfig)
            sae = cls(cfg_cls(d_in=d, latents=24, k=5, d_out=d))
        with torch.no_grad():
            for name, prm in sae.named_parameters():
                prm.copy_(
                    torch.rand(prm.shape, generator=g) * 2 * scale
                    if name == "threshold"
                    else torch.randn(prm.shape, generator=g) * scale
                )
            sae.b_enc.add_(2 * scale)  # most of the k kept latents active (a > 0)
        out.append(LayerTranscoder(l, p, sae.eval().requires_grad_(False), out=(outs or [""] * len(paths))[l]))
    return out

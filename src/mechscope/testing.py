"""Small, always-present material for tests and examples (no downloads)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL_TEXT = str(STDLIB / "email" / "*.py")
"""A small text source on every machine: the sources of the standard library's email package."""


def perturbed_sae(arch: str, d_in: int, latents: int, k: int = 4, seed: int = 1, scale: float = 0.3):
    """An SAE of a registered architecture with every parameter moved off its initial value (as after
    training) and a non-trivial threshold where the architecture has one; for file round-trip tests."""
    import torch

    from mechscope.sae import REGISTRY

    cls = REGISTRY[arch]
    kw = {"k": k} if "k" in cls.config_cls.__dataclass_fields__ else {}
    sae = cls(cls.config_cls(d_in=d_in, latents=latents, **kw), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        threshold = getattr(sae, "threshold", None)
        if isinstance(threshold, torch.Tensor):
            # Per-latent thresholds vary; a single (batch) threshold is set well above zero.
            threshold.copy_(2 * scale / 3 * torch.rand(threshold.shape, generator=g) if threshold.numel() > 1
                            else torch.full_like(threshold, 4 * scale / 3))
    return sae.eval()

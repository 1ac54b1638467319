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


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300.0, cwd: str | None = None):
    """Run the real ``mechscope`` command in a subprocess; returns the ``CompletedProcess`` (text)."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mechscope.cli", *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(args: list[str], match: str, *, code: int = 1, **kwargs) -> str:
    """Run the CLI and check that it fails the way a user error must: exit ``code``, no traceback,
    and exactly one stderr line ``mechscope…: error: …`` containing ``match`` (a regex).
    Returns that line. Progress bars (lines ending in a carriage return) are ignored."""
    import re

    proc = run_cli(args, **kwargs)
    lines = [l for l in proc.stderr.replace("\r", "\n").splitlines() if l.strip() and "it/s" not in l and "s/it" not in l]
    detail = f"args={args}\nrc={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, detail
    assert proc.returncode == code, detail
    errors = [l for l in lines if ": error:" in l]  # argparse may print its usage line above the error
    assert len(errors) == 1, detail
    assert re.search(match, errors[0]), f"{errors[0]!r} does not match {match!r}\n{detail}"
    return errors[0]

"""A digest of a set of named tensors, stored beside them and checked when they are read back.

digest = sha256 over the tensors in sorted name order, each contributing
``name \\0 dtype \\0 shape \\0`` (UTF-8; dtype as ``torch.float32``, shape as comma-separated sizes)
followed by its bytes in C order, native (little-endian) byte order, as safetensors stores them.

Checkpoints and saved SAEs keep it under :data:`DIGEST_KEY` in the safetensors header metadata, so a
flipped bit anywhere in the tensors (or a tensor renamed, retyped or reshaped) no longer matches.
Beside it, :func:`json_digest` (sha256 of canonical JSON: sorted keys, no spaces) covers what gives
the tensors their meaning: a checkpoint's metadata (step, input scale, configs) and a mechscope SAE's
architecture and config fields (``k``, …), under :data:`CONFIG_DIGEST_KEY`.
A file written by another tool (SAELens) has no digest: it loads, but nothing about its tensors is
verified. A file that claims to be mechscope's (its reader says so, e.g. a ``cfg.json`` marked
``mechscope-sae``, or its header has a key in the ``mechscope.`` namespace or one byte away from one
of ours) must carry exactly the keys its reader expects: a missing or unknown key is a damaged header
(:func:`header_key_problems`), never an old file to load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from torch import Tensor

DIGEST_KEY = "mechscope.tensors_sha256"
"""Safetensors metadata key of the tensors' digest (hex)."""
CONFIG_DIGEST_KEY = "mechscope.config_sha256"
"""Safetensors metadata key of the digest of the JSON that goes with the tensors (hex)."""
NAMESPACE = "mechscope."
"""Prefix of every safetensors metadata key mechscope writes beside tensors."""


def _looks_ours(key: str) -> bool:
    """In our namespace, or one byte away from one of our keys (what one flipped byte makes of it)."""
    return key.startswith(NAMESPACE) or any(
        len(key) == len(ours) and sum(a != b for a, b in zip(key, ours)) == 1
        for ours in (DIGEST_KEY, CONFIG_DIGEST_KEY)
    )


def header_key_problems(header: dict[str, str], required: tuple[str, ...], claimed: bool = False) -> str:
    """What is wrong with the mechscope keys of a safetensors ``header`` whose reader expects exactly
    ``required`` ("missing key 'mechscope.config_sha256', unknown key 'mechscope.config_sha25X'"), or "".

    "" too for a foreign file: one not ``claimed`` by its reader whose header has no key that looks like
    ours. Unknown keys are those that look like ours but are not ``required``.
    """
    looks_ours = sorted(k for k in header if _looks_ours(k))
    if not (claimed or looks_ours):
        return ""
    return ", ".join(
        [f"missing key {k!r}" for k in required if k not in header]
        + [f"unknown key {k!r}" for k in looks_ours if k not in required]
    )


def json_digest(obj: Any) -> str:
    """Hex sha256 of ``obj`` as canonical JSON (sorted keys, ``,``/``:`` separators, non-JSON values as str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """Hex sha256 of ``tensors`` as stated in the module docstring (CPU copies are made as needed)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}\0{t.dtype}\0{','.join(map(str, t.shape))}\0".encode())
        flat = t.cpu().contiguous().reshape(-1)
        if flat.numel():
            # the buffer itself, no copy (numpy's stubs declare ndarray a Buffer only for Python ≥ 3.12)
            h.update(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()

"""Training checkpoints: one safetensors file, written atomically, no pickle.

The file holds every tensor (SAE parameters and buffers, Adam moments and step counts, dead-latent
counters, the torch RNG state) and, in the safetensors metadata, one JSON document with the
scalars (step, input scale, the configs). It is written to ``<name>.tmp`` , flushed to disk, then
renamed over the old file with ``os.replace``: a run killed at any moment leaves either the old
checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open
from torch import Tensor

from mechscope.atomic import save_safetensors

FORMAT = "mechscope-sae-checkpoint"
META_KEY = "mechscope"


def write_atomic(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + JSON metadata to ``path`` atomically (:func:`mechscope.atomic.save_safetensors`)."""
    save_safetensors(path, tensors, metadata={META_KEY: json.dumps({"format": FORMAT, **meta})})


def read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint written by :func:`write_atomic`."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a mechscope checkpoint (no '{META_KEY}' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return load_file(str(path)), meta


def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Every tensor of the optimiser state as ``{prefix}{param index}.{name}``."""
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{prefix}{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`flatten_optimizer`; the param groups (lr is set every step) stay as built."""
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})

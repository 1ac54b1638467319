"""Training checkpoints (SAE trainer, SPD, :mod:`mechscope.training`): one safetensors file, written atomically, no pickle.

The file holds every tensor (SAE parameters and buffers, Adam moments and step counts, dead-latent
counters, the torch RNG state) and, in the safetensors metadata, one JSON document with the
scalars (step, input scale, the configs). It is written to ``<name>.tmp`` , flushed to disk, then
renamed over the old file with ``os.replace``: a run killed at any moment leaves either the old
checkpoint or the new one, never a torn file.

The metadata also holds the digest of every tensor and one of the JSON document
(:mod:`mechscope.digest`); :func:`read` recomputes both and refuses a file whose tensors or
scalars changed (a flipped bit on disk, an edited tensor),
as it refuses a truncated file or a damaged header, with a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor

from mechscope.atomic import save_safetensors
from mechscope.digest import CONFIG_DIGEST_KEY, DIGEST_KEY, header_key_problems, json_digest, tensors_digest
from mechscope.errors import MechscopeError

FORMAT = "mechscope-sae-checkpoint"
META_KEY = "mechscope"
_FIX = "delete it to start the run afresh, or use another `out` folder"


class CheckpointError(MechscopeError, ValueError):
    """A checkpoint that cannot be resumed: truncated, damaged, changed since written, or not one of ours."""


def write_atomic(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + JSON metadata + the tensors' digest to ``path`` atomically
    (:func:`mechscope.atomic.save_safetensors`)."""
    raw = json.dumps({"format": FORMAT, **meta})
    save_safetensors(
        path,
        tensors,
        metadata={META_KEY: raw, DIGEST_KEY: tensors_digest(tensors), CONFIG_DIGEST_KEY: json_digest(json.loads(raw))},
    )


def read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint written by :func:`write_atomic`; raises :class:`CheckpointError`
    (naming the file and what is wrong) for a truncated or damaged file or a digest that does not match."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"{path}: checkpoint is truncated or its header is damaged ({size:,} bytes; "
            f"safetensors says: {err}); {_FIX}"
        ) from err
    raw, want = header.get(META_KEY), header.get(DIGEST_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path}: not a mechscope checkpoint, or its header is damaged (no '{META_KEY}' "
            f"metadata; the header has {sorted(header) or 'none'}); {_FIX}"
        )
    if want is None:  # also what a damaged key name looks like: never resume unverified
        raise CheckpointError(
            f"{path}: checkpoint has no tensor digest ('{DIGEST_KEY}'): written before "
            f"mechscope kept digests, or its header is damaged; it cannot be verified; {_FIX}"
        )
    problems = header_key_problems(header, (DIGEST_KEY, CONFIG_DIGEST_KEY), claimed=True)
    if problems:
        raise CheckpointError(f"{path}: checkpoint header is damaged ({problems}); {_FIX}")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}: checkpoint header is damaged (its '{META_KEY}' metadata is not JSON: {err}); {_FIX}"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: has format {got!r}, expected {FORMAT!r}; {_FIX}")
    got = tensors_digest(tensors)
    if got != want:
        raise CheckpointError(
            f"{path}: tensor digest mismatch (sha256 {got[:12]}…, recorded {want[:12]}…): "
            f"the checkpoint changed after it was written; {_FIX}"
        )
    if header.get(CONFIG_DIGEST_KEY) != json_digest(meta):
        raise CheckpointError(
            f"{path}: its '{META_KEY}' metadata (step, input scale, configs) does not match the "
            f"digest recorded beside it: the header changed after it was written; {_FIX}"
        )
    return tensors, meta


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
            idx, name = key[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})

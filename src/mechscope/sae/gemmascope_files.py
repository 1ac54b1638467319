"""Gemma Scope's raw parameter files: one ``params.npz`` per SAE (read only).

params.npz:  W_enc [d, n], W_dec [n, d], b_enc [n], b_dec [d], threshold [n]  (float32 arrays)

Gemma Scope's JumpReLU reads x itself:

    z = x W_enc + b_enc;   codes = ReLU(z)·1[z > threshold];   x̂ = codes W_dec + b_dec

mechscope's ``jumprelu`` reads x − b_dec, so b_enc becomes b_enc + b_dec W_enc (the same z for every x).
The file is read with ``numpy.load(allow_pickle=False)``: an object array (which would need unpickling) is
refused, and so is any array other than those five, a non-floating one, or shapes that do not fit together.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from mechscope.sae.base import REGISTRY, SparseAutoencoder
from mechscope.sae.io import SAEFormatError, _check_state, _config

PARAMS = "params.npz"
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def params_file(path: Path) -> Path | None:
    """The params.npz that ``path`` names (the file, or a folder holding it), else None."""
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir() and (path / PARAMS).exists():
        return path / PARAMS
    return None


def detect(path: Path) -> bool:
    return params_file(path) is not None


def load(path: Path) -> SparseAutoencoder:
    """The Gemma Scope JumpReLU SAE in ``path`` (params.npz or its folder), with Gemma Scope's codes."""
    file = params_file(path)
    assert file is not None
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise SAEFormatError(
            f"{file}: not a numpy .npz of plain arrays ({err}); Gemma Scope params.npz files hold five float arrays"
        ) from err
    unknown, missing = sorted(set(arrays) - set(NAMES)), sorted(set(NAMES) - set(arrays))
    if unknown or missing:
        raise SAEFormatError(
            f"{file}: Gemma Scope arrays are {', '.join(NAMES)}; unexpected "
            f"{unknown or 'none'}, missing {missing or 'none'}"
        )
    not_float = sorted(k for k, v in arrays.items() if not np.issubdtype(v.dtype, np.floating))
    if not_float:
        raise SAEFormatError(
            f"{file}: array(s) {', '.join(not_float)} are not floating point "
            f"({', '.join(str(arrays[k].dtype) for k in not_float)})"
        )
    if arrays["W_enc"].ndim != 2:
        raise SAEFormatError(f"{file}: W_enc has shape {arrays['W_enc'].shape}, expected [d, n]")
    d, n = arrays["W_enc"].shape
    cls = REGISTRY["jumprelu"]
    config = _config(cls, lambda: cls.config_cls(d_in=int(d), latents=int(n)), file, "Gemma Scope")
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in arrays.items()}
    _check_state(cls, config, state, file, "Gemma Scope")
    sae = cls(config)
    with torch.no_grad():
        sae.load_state_dict(state)
        sae.absorb_input_bias_(sae.b_dec @ sae.W_enc)
    return sae

"""EleutherAI sparsify's saved sparse coders (PyPI ``eai-sparsify``): a folder per hook point.

cfg.json:          {"activation", "expansion_factor", "normalize_decoder", "num_latents", "k", "multi_topk",
                    "skip_connection", "transcode", "d_in"}
sae.safetensors:   encoder.weight [n, d], encoder.bias [n], W_dec [n, d], b_dec [d], W_skip [d, d] (skip_connection)

sparsify's maths (d in and out: its transcoders write a site of the input's width), with W = encoder.weight:

    SAE:         z = ReLU((x − b_dec) Wᵀ + b);  codes = the k largest of z;  x̂ = codes W_dec + b_dec
    transcoder:  z = ReLU(x Wᵀ + b) (no centring); ŷ = codes W_dec + b_dec (+ x W_skipᵀ with skip_connection)

which is mechscope's ``topk``, ``transcoder`` and ``skip_transcoder`` with W_enc = Wᵀ and our W_skip = W_skipᵀ
(ReLU then TopK keeps the same non-zero codes as TopK then ReLU). n is ``num_latents``, or d·``expansion_factor``
when it is 0. ``multi_topk`` and ``normalize_decoder`` only steer training: read, and written as false/true.

Refused by name: ``activation`` other than "topk" (``groupmax`` keeps one latent per group, not the k largest);
``skip_connection`` without ``transcode`` (an SAE with a skip term: no mechscope architecture); a field this
module does not know (a later sparsify release may change the maths with it); tensors missing, unexpected or
misshapen. Written: ``topk``, ``transcoder`` and ``skip_transcoder`` with d_out = d_in; every other
architecture is refused by name (sparsify runs TopK only: a BatchTopK or JumpReLU SAE needs its threshold).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.atomic import atomic_write_bytes, save_safetensors
from mechscope.digest import DIGEST_KEY, tensors_digest
from mechscope.sae.base import REGISTRY, SparseAutoencoder
from mechscope.sae.io import (
    SAEFormatError,
    _check_state,
    _config,
    _read_cfg,
    _read_weights,
)
from mechscope.sae.topk import TopKConfig

WEIGHTS = "sae.safetensors"
FIELDS = {
    "activation",
    "expansion_factor",
    "normalize_decoder",
    "num_latents",
    "k",
    "multi_topk",
    "skip_connection",
    "transcode",
    "d_in",
}
"""Every cfg.json field of eai-sparsify 1.3.3's SparseCoderConfig, plus d_in."""
ARCHS = {(False, False): "topk", (True, False): "transcoder", (True, True): "skip_transcoder"}
"""(transcode, skip_connection) → mechscope architecture."""


def detect(path: Path) -> bool:
    """A folder with sae.safetensors whose cfg.json is not mechscope's (no ``format`` or ``arch``)."""
    if not (path.is_dir() and (path / WEIGHTS).exists() and (path / "cfg.json").exists()):
        return False
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "format" not in cfg and "arch" not in cfg


def _int(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SAEFormatError(f"{where}: sparsify field {key}={value!r} is not an integer")
    return value


def load(path: Path) -> SparseAutoencoder:
    """The sparsify coder in ``path`` as a mechscope SAE with the same codes and outputs (module docstring)."""
    cfg = _read_cfg(path)
    unknown = sorted(set(cfg) - FIELDS)
    if unknown:
        raise SAEFormatError(
            f"{path}: sparsify cfg.json field(s) {', '.join(unknown)} not known to mechscope "
            f"(it reads eai-sparsify 1.3.3's {', '.join(sorted(FIELDS))}); not loaded"
        )
    not_bool = sorted(
        k
        for k in ("normalize_decoder", "multi_topk", "skip_connection", "transcode")
        if k in cfg and not isinstance(cfg[k], bool)
    )
    if not_bool:
        raise SAEFormatError(
            f"{path}: sparsify field(s) {', '.join(f'{k}={cfg[k]!r}' for k in not_bool)} are not true/false"
        )
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(
            f"{path}: sparsify activation={activation!r} is not supported (only 'topk'); "
            "loading it as TopK would give different codes"
        )
    transcode, skip = cfg.get("transcode", False), cfg.get("skip_connection", False)
    if (transcode, skip) not in ARCHS:
        raise SAEFormatError(
            f"{path}: sparsify skip_connection=true with transcode=false (an SAE with a skip "
            "term) has no mechscope architecture; not supported"
        )
    d = _int(cfg, "d_in", path)
    n = _int(cfg, "num_latents", path) if cfg.get("num_latents") else d * _int(cfg, "expansion_factor", path)
    cls = REGISTRY[ARCHS[transcode, skip]]
    fields = {"d_in": d, "latents": n, "k": _int(cfg, "k", path), **({"d_out": d} if transcode else {})}
    config = _config(cls, lambda: cls.config_cls(**fields), path, "sparsify")
    tensors, _ = _read_weights(path / WEIGHTS, (DIGEST_KEY,))
    state = _state(tensors)
    _check_state(cls, config, state, path, "sparsify")
    sae = cls(config)
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    return sae


def _state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """sparsify tensor names and layouts → mechscope's (W_enc = encoder.weightᵀ, W_skip = W_skipᵀ)."""
    state = dict(tensors)
    for theirs, ours in (("encoder.weight", "W_enc"), ("encoder.bias", "b_enc")):
        if theirs in state:
            state[ours] = state.pop(theirs)
    for name in ("W_enc", "W_skip"):
        if name in state and state[name].ndim == 2:
            state[name] = state[name].t().contiguous()
    return state


def save(sae: SparseAutoencoder, path: Path) -> Path:
    """Write ``sae`` as a sparsify folder that ``sparsify.SparseCoder.load_from_disk`` reads (module docstring)."""
    flags = {arch: key for key, arch in ARCHS.items()}
    if sae.arch not in flags:
        raise SAEFormatError(
            f"sparsify runs TopK SAEs and transcoders only ({', '.join(flags)}); a {sae.arch!r} "
            "SAE would lose what sets its codes; keep it in mechscope's or SAELens's layout"
        )
    if sae.d_out != sae.d_in:
        raise SAEFormatError(
            f"sparsify transcoders write a site of their input's width; this {sae.arch} reads "
            f"d_in={sae.d_in} and writes d_out={sae.d_out}"
        )
    transcode, skip = flags[sae.arch]
    assert isinstance(sae.cfg, TopKConfig)  # the configs of topk, transcoder and skip_transcoder derive from it
    tensors = {
        "encoder.weight": sae.W_enc.detach().t(),
        "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    if skip:
        tensors["W_skip"] = sae.get_parameter("W_skip").detach().t()
    tensors = {k: v.to(torch.float32).cpu().contiguous() for k, v in tensors.items()}
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": sae.latents,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": transcode,
        "d_in": sae.d_in,
    }
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / WEIGHTS, tensors, metadata={DIGEST_KEY: tensors_digest(tensors)})
    atomic_write_bytes(path / "cfg.json", (json.dumps(cfg, indent=2) + "\n").encode())
    return path

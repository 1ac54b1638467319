"""Saved SAEs: a folder of ``cfg.json`` + safetensors, in mechscope's layout or SAELens's.

mechscope layout:  cfg.json = {"format": "mechscope-sae", "arch": ..., <config fields>, "metadata": {...}}
                   sae.safetensors = the module's state_dict (W_enc [d, n], b_enc [n], W_dec [n, d],
                   b_dec [d], and the architecture's extras such as ``threshold``).
SAELens layout:    cfg.json with ``architecture``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``, …
                   sae_weights.safetensors with W_enc, W_dec, b_enc (b_gate, b_mag, r_mag for gated),
                   b_dec and ``threshold`` for JumpReLU (which is also how SAELens runs BatchTopK).

Loading ignores config fields it does not know and refuses anything that is not safetensors
(pickled ``.pt``/``.bin``, ``.npz``): those formats can run code or need converting first.
A saved SAE reads raw activations: the training-time input scale is folded into the weights.
"""

from __future__ import annotations

from mechscope.errors import MechscopeError

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from mechscope.config import from_dict
from mechscope.atomic import atomic_write_bytes, save_safetensors
from mechscope.sae.base import REGISTRY, SparseAutoencoder

OWN_FORMAT = "mechscope-sae"
CFG = "cfg.json"
OWN_WEIGHTS = "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"
_UNSAFE = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".npz", ".npy")
_SAELENS_NORMALISATIONS = ("none", "expected_average_only_in", None)


class SAEFormatError(MechscopeError, ValueError):
    """A folder that does not hold a loadable SAE (or holds one in a refused format)."""


def save_sae(
    sae: SparseAutoencoder, path: str | Path, metadata: dict[str, Any] | None = None,
    layout: Literal["mechscope", "saelens"] = "mechscope",
) -> Path:
    """Write ``sae`` to the folder ``path`` (created) in mechscope's or SAELens's layout; returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if layout == "saelens":
        arch, extra, tensors = sae.saelens_tensors()
        cfg = {
            "architecture": arch, "d_in": sae.d_in, "d_sae": sae.latents, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            **extra, "metadata": {"sae_lens_version": "6.0.0", "written_by": "mechscope", **(metadata or {})},
        }
        weights = path / SAELENS_WEIGHTS
    else:
        tensors = dict(sae.state_dict())
        cfg = {"format": OWN_FORMAT, **sae.config_dict(), "metadata": metadata or {}}
        weights = path / OWN_WEIGHTS
    save_safetensors(weights, tensors)
    atomic_write_bytes(path / CFG, (json.dumps(cfg, indent=2, default=str) + "\n").encode())
    return path


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE folder written by mechscope or SAELens (including Gemma Scope SAEs saved by SAELens).

    Returns the module in eval mode on ``device``. Raises :class:`SAEFormatError` with the reason when
    the folder holds no SAE, or only weights in a format other than safetensors.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise SAEFormatError(f"{path}: refusing to load a {path.suffix or 'suffix-less'} file; only safetensors SAE folders load")
        path = path.parent
    if not path.is_dir():
        raise SAEFormatError(f"{path}: no such SAE folder")
    cfg = _read_cfg(path)
    if cfg.get("format") == OWN_FORMAT or (path / OWN_WEIGHTS).exists():
        sae = _load_own(path, cfg)
    elif (path / SAELENS_WEIGHTS).exists():
        sae = _load_saelens(path, cfg)
    else:
        unsafe = sorted(p.name for p in path.iterdir() if p.suffix in _UNSAFE)
        if unsafe:
            raise SAEFormatError(
                f"{path}: refusing to load {', '.join(unsafe)}: only safetensors weights load "
                f"(pickle can run code); convert them to {OWN_WEIGHTS} or {SAELENS_WEIGHTS}"
            )
        raise SAEFormatError(f"{path}: no {OWN_WEIGHTS} or {SAELENS_WEIGHTS} beside {CFG}")
    return sae.to(device).eval()


def _read_cfg(path: Path) -> dict[str, Any]:
    if not (path / CFG).exists():
        raise SAEFormatError(f"{path}: no {CFG}")
    try:
        return json.loads((path / CFG).read_text())
    except json.JSONDecodeError as err:
        raise SAEFormatError(f"{path / CFG}: not JSON ({err})") from err


def _read_weights(file: Path) -> dict[str, Tensor]:
    if not file.exists():
        raise SAEFormatError(f"{file}: missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(f"{file}: not a safetensors file ({err}); only safetensors weights load") from err


def _arch_class(name: str, known: dict[str, type[SparseAutoencoder]], where: Path) -> type[SparseAutoencoder]:
    if name not in known:
        raise SAEFormatError(f"{where}: unknown architecture {name!r}; known: {sorted(known)}")
    return known[name]


def _load_own(path: Path, cfg: dict[str, Any]) -> SparseAutoencoder:
    cls = _arch_class(str(cfg.get("arch")), REGISTRY, path)
    sae = cls(from_dict(cls.config_cls, cfg))
    state = _read_weights(path / OWN_WEIGHTS)
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    return sae


def _upgrade_saelens_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """Read pre-6.0 SAELens configs: a "standard" SAE with a topk activation is a TopK SAE."""
    cfg = dict(cfg)
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if cfg.get("architecture", "standard") == "standard" and fn == "topk" and k is not None:
        cfg["architecture"], cfg["k"] = "topk", k
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    cfg.setdefault("architecture", "standard")
    return cfg


def _load_saelens(path: Path, cfg: dict[str, Any]) -> SparseAutoencoder:
    cfg = _upgrade_saelens_cfg(cfg)
    norm = cfg.get("normalize_activations")
    if norm not in _SAELENS_NORMALISATIONS:
        # SAELens applies these per input at run time; they are not a fixed change of the weights.
        raise SAEFormatError(f"{path}: normalize_activations={norm!r} is not supported (only 'none', 'expected_average_only_in')")
    readers = {cls.saelens_name: cls for cls in REGISTRY.values()}
    cls = _arch_class(str(cfg["architecture"]), readers, path)
    tensors = _read_weights(path / SAELENS_WEIGHTS)
    if "scaling_factor" in tensors:  # old fine-tuning scale multiplies codes in decode: fold into W_dec
        tensors["W_dec"] = tensors["W_dec"] * tensors.pop("scaling_factor").reshape(-1, 1)
    try:
        return cls.from_saelens(cfg, tensors)
    except (KeyError, RuntimeError) as err:
        raise SAEFormatError(f"{path}: SAELens {cfg['architecture']} weights do not fit ({err})") from err

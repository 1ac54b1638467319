"""circuit-tracer's single-layer transcoder files (PyPI ``circuit-tracer`` 0.5.0): one safetensors file per layer.

file:  W_enc [n, d], W_dec [n, d], b_enc [n], b_dec [d], optional ``activation_function.threshold`` [n] and
       ``W_skip`` [d, d]; no config (the set's YAML names the hooks; the file says nothing about them)

circuit-tracer's maths (``load_relu_transcoder``, the loader of every file but Gemma Scope's), reading x itself:

    z = x W_encᵀ + b_enc;   codes = z·1[z > θ] with a threshold, else ReLU(z);   ŷ = codes W_dec + b_dec (+ x W_skipᵀ)

→ mechscope's ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder`` (W_enc = W_encᵀ, W_skip = W_skipᵀ,
d_out = d_in), or without a threshold ``transcoder`` / ``skip_transcoder`` with k = n (ReLU(TopK_n(z)) = ReLU(z)).
mechscope's JumpReLU keeps ReLU(z)·1[z > θ], equal to circuit-tracer's z·1[z > θ] only for θ ≥ 0: a negative
threshold is refused. A file is recognised by its tensor names; any other tensor (Gemma Scope 2's ``w_enc``,
``log_thresholds``) is refused by name, and so are shapes that do not fit.

Written (``convert --to circuittracer``): ``transcoder.safetensors`` in the folder, from a JumpReLU transcoder
(θ ≥ 0) or a ReLU one (k = n), with or without skip, d_out = d_in; a TopK transcoder (k < n) is refused (the file
has no field for k: circuit-tracer would read it as ReLU).

BOS: circuit-tracer zeroes every latent and error vector at the first position when it builds a graph, keeping BOS's
token node; mechscope's graph does the same with ``--bos-mode circuit-tracer`` (docs/graph.md). That is a
convention of the graph, not of the file: the dictionary read here encodes every position.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mechscope.atomic import save_safetensors
from mechscope.digest import DIGEST_KEY, tensors_digest
from mechscope.sae.base import REGISTRY, SparseAutoencoder
from mechscope.sae.io import SAEFormatError, _check_state, _config, _read_weights

FILE = "transcoder.safetensors"
THRESHOLD = "activation_function.threshold"
REQUIRED = {"W_enc", "W_dec", "b_enc", "b_dec"}
OPTIONAL = {THRESHOLD, "W_skip"}
ARCHS = {(True, False): "jumprelu_transcoder", (True, True): "jumprelu_skip_transcoder",
         (False, False): "transcoder", (False, True): "skip_transcoder"}
"""(has a threshold, has W_skip) → mechscope architecture."""
_SAVED_NAMES = {"sae.safetensors", "sae_weights.safetensors"}


def weights_file(path: Path) -> Path | None:
    """The circuit-tracer file ``path`` names: the file itself, or transcoder.safetensors in a folder."""
    if path.is_dir():
        path = path / FILE
    if not (path.is_file() and path.suffix == ".safetensors" and path.name not in _SAVED_NAMES):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except (SafetensorError, OSError, ValueError):
        return path if path.name == FILE else None
    return path if REQUIRED <= keys else None


def detect(path: Path) -> bool:
    return weights_file(path) is not None


def load(path: Path) -> SparseAutoencoder:
    """The circuit-tracer transcoder in ``path`` (its file, or a folder with transcoder.safetensors)."""
    file = weights_file(path)
    assert file is not None
    tensors, _ = _read_weights(file, (DIGEST_KEY,))
    unknown = sorted(set(tensors) - REQUIRED - OPTIONAL)
    if unknown:
        raise SAEFormatError(f"{file}: circuit-tracer transcoder tensor(s) {', '.join(unknown)} not known to mechscope "
                             f"(it reads {', '.join(sorted(REQUIRED | OPTIONAL))}); not loaded")
    if tensors["W_enc"].ndim != 2:
        raise SAEFormatError(f"{file}: W_enc has shape {tuple(tensors['W_enc'].shape)}, expected [n, d]")
    n, d = tensors["W_enc"].shape
    threshold = tensors.get(THRESHOLD)
    if threshold is not None and bool((threshold < 0).any()):
        raise SAEFormatError(f"{file}: {int((threshold < 0).sum())} negative threshold(s) (min {float(threshold.min()):.4g}): "
                             "circuit-tracer keeps z·1[z > θ], negative codes included, which mechscope's "
                             "JumpReLU (ReLU(z)·1[z > θ]) does not reproduce; not loaded")
    cls = REGISTRY[ARCHS[threshold is not None, "W_skip" in tensors]]
    fields = {"d_in": int(d), "latents": int(n), "d_out": int(d), **({} if threshold is not None else {"k": int(n)})}
    config = _config(cls, lambda: cls.config_cls(**fields), file, "circuit-tracer")
    state = {k: v.t().contiguous() if k in ("W_enc", "W_skip") and v.ndim == 2 else v for k, v in tensors.items()}
    if threshold is not None:
        state["threshold"] = state.pop(THRESHOLD)
    _check_state(cls, config, state, file, "circuit-tracer")
    sae = cls(config)
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    return sae


def save(sae: SparseAutoencoder, path: Path) -> Path:
    """Write ``sae`` as ``path``/transcoder.safetensors, the file circuit-tracer's ``load_relu_transcoder`` reads."""
    written = {arch: key for key, arch in ARCHS.items()}
    if sae.arch not in written:
        raise SAEFormatError(f"circuit-tracer files hold single-layer transcoders ({', '.join(written)}); "
                             f"a {sae.arch!r} dictionary has no such file")
    jump, skip = written[sae.arch]
    if not jump and sae.cfg.k != sae.latents:
        raise SAEFormatError(f"a circuit-tracer file has no field for k: this TopK {sae.arch} (k={sae.cfg.k} < "
                             f"latents={sae.latents}) would be read as ReLU; keep it in mechscope's layout")
    if sae.d_out != sae.d_in:
        raise SAEFormatError(f"circuit-tracer transcoders write a site of their input's width; this {sae.arch} reads "
                             f"d_in={sae.d_in} and writes d_out={sae.d_out}")
    if jump and bool((sae.threshold < 0).any()):
        raise SAEFormatError("a negative JumpReLU threshold would keep negative codes in circuit-tracer; not written")
    tensors: dict[str, Tensor] = {"W_enc": sae.W_enc.detach().t(), "W_dec": sae.W_dec.detach(),
                                  "b_enc": sae.b_enc.detach(), "b_dec": sae.b_dec.detach()}
    if jump:
        tensors[THRESHOLD] = sae.threshold.detach()
    if skip:
        tensors["W_skip"] = sae.W_skip.detach().t()
    tensors = {k: v.to(torch.float32).cpu().contiguous() for k, v in tensors.items()}
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / FILE, tensors, metadata={DIGEST_KEY: tensors_digest(tensors)})
    return path

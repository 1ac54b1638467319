"""dictionary_learning's trained dictionaries (PyPI ``dictionary-learning``): ``ae.pt`` + ``config.json`` (read only).

ae.pt is the module's state_dict saved with ``torch.save``; it is read with ``torch.load(weights_only=True)``, which
unpickles nothing but tensors and plain containers. config.json is ``{"trainer": {...}, "buffer": {...}}``; the
trainer's ``dict_class`` names the module, and so what the tensors mean (W = ``encoder.weight`` [n, d],
D = ``decoder.weight`` [d, n]; z the pre-activations):

| dict_class | its encode (the package's default) | mechscope |
|---|---|---|
| AutoEncoder (StandardTrainer, …AprilUpdate, PAnnealTrainer) | ReLU((x − bias) Wᵀ + b); x̂ = f Dᵀ + bias | relu |
| AutoEncoderNew | ReLU(x Wᵀ + b); x̂ = f Dᵀ + decoder.bias | relu, b_enc += b_dec W_enc |
| GatedAutoEncoder (GatedSAETrainer, GatedAnnealTrainer) | 1[h + gate_bias > 0]·ReLU(e^r_mag h + mag_bias), h = (x − decoder_bias) Wᵀ | gated |
| JumpReluAutoEncoder (JumpReluTrainer) | ReLU(z·1[z > threshold]), z = x W_enc + b_enc | jumprelu, b_enc += b_dec W_enc |
| AutoEncoderTopK (TopKTrainer) | the k largest of ReLU((x − b_dec) Wᵀ + b) per row | topk |
| BatchTopKSAE (BatchTopKTrainer) | ReLU(z)·1[ReLU(z) > θ], θ the learned scalar ``threshold`` | batchtopk (θ kept) |
| MatryoshkaBatchTopKSAE | as BatchTopK, z = (x − b_dec) W_enc + b_enc; prefixes = cumsum(group_sizes) | matryoshka |

BatchTopK and Matryoshka run with their threshold θ, never as TopK or ReLU (that would change every code); a θ still
at its initial −1 (never learned) is refused. AutoEncoderTopK also carries a ``threshold`` buffer that its default
encode does not use; it is dropped. AutoEncoder's ``from_pretrained`` rescales codes by the decoder's column norms by
default (outputs unchanged); mechscope reads the weights as saved, i.e. the trained module's own codes.
A dictionary trained with ``normalize_activations`` is saved with its biases scaled back (``norm_factor`` in the
config), so it reads raw activations: nothing to fold.

Every trainer dictionary-learning 0.1.0 ships is above (tests/integration/test_sae_dictlearn.py trains each with the
package's own ``trainSAE``). Its crosscoders (``CrossCoder``, ``BatchTopKCrossCoder``) come only from later, unreleased
versions on GitHub whose layouts differ from one another (encoder [layers, d, n] with or without per-layer encoder
indices, a latent processor, four "code normalisation" modes that change what ``encode`` returns): no release fixes
one layout to map onto :mod:`mechscope.sae.crosscoder` exactly, so they are refused by name (:data:`REFUSED`).

Refused by name: a ``dict_class`` not above (IdentityDict, crosscoders), a buffer ``io`` other than "in"/"out"
(a dictionary from a module's input to its output), a config field this module does not know (a later release
may change the maths with it), a ``k`` or ``group_sizes`` that disagrees with the tensors, tensors missing,
unexpected or misshapen.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.sae.base import REGISTRY, SparseAutoencoder
from mechscope.sae.io import SAEFormatError, _check_state, _config

WEIGHTS = "ae.pt"
CONFIG = "config.json"
TRAINER_FIELDS = {
    "trainer_class",
    "dict_class",
    "activation_dim",
    "dict_size",
    "k",
    "lr",
    "steps",
    "seed",
    "device",
    "layer",
    "lm_name",
    "wandb_name",
    "submodule_name",
    "warmup_steps",
    "decay_start",
    "sparsity_warmup_steps",
    "auxk_alpha",
    "threshold_beta",
    "threshold_start_step",
    "top_k_aux",
    "l1_penalty",
    "resample_steps",
    "sparsity_function",
    "sparsity_penalty",
    "sparsity_coeff",
    "p_start",
    "p_end",
    "anneal_start",
    "sparsity_queue_length",
    "n_sparsity_updates",
    "bandwidth",
    "target_l0",
    "group_fractions",
    "group_weights",
    "group_sizes",
    "norm_factor",
}
"""Every field dictionary-learning 0.1.0's trainers write to config.json (``trainer.config``), and ``norm_factor``."""
BUFFER_FIELDS = {"d_submodule", "io", "n_ctxs", "ctx_len", "refresh_batch_size", "out_batch_size", "device", "layer"}
"""Every field of its activation buffers' ``config``."""


def detect(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).exists()


def _linear_t(state: dict[str, Tensor], name: str) -> Tensor:
    return state.pop(name).t().contiguous()


def _encoder_linear(s: dict[str, Tensor], bias_on_input: str | None) -> dict[str, Tensor]:
    """nn.Linear encoder/decoder (W = encoder.weight [n, d], D = decoder.weight [d, n]) → W_enc [d, n], W_dec [n, d]."""
    out = {"W_enc": _linear_t(s, "encoder.weight"), "W_dec": _linear_t(s, "decoder.weight")}
    if "encoder.bias" in s:
        out["b_enc"] = s.pop("encoder.bias")
    if bias_on_input is not None:
        out["b_dec"] = s.pop(bias_on_input)
    return {**out, **s}


def _gated(s: dict[str, Tensor]) -> dict[str, Tensor]:
    out = _encoder_linear(s, "decoder_bias")
    out["b_enc"], out["b_mag"] = out.pop("gate_bias"), out.pop("mag_bias")
    return out


def _topk(s: dict[str, Tensor]) -> dict[str, Tensor]:
    s = dict(s)
    s.pop("threshold", None)  # used only by encode(use_threshold=True), not the default
    return _encoder_linear(s, "b_dec")


def _new(s: dict[str, Tensor]) -> dict[str, Tensor]:
    return _encoder_linear(s, "decoder.bias")


# dict_class → (mechscope architecture, tensors renamed to its state_dict, whether its encoder reads x itself).
CLASSES: dict[str, tuple[str, Callable[[dict[str, Tensor]], dict[str, Tensor]], bool]] = {
    "AutoEncoder": ("relu", lambda s: _encoder_linear(s, "bias"), False),
    "AutoEncoderNew": ("relu", _new, True),
    "GatedAutoEncoder": ("gated", _gated, False),
    "JumpReluAutoEncoder": ("jumprelu", dict, True),
    "AutoEncoderTopK": ("topk", _topk, False),
    "BatchTopKSAE": ("batchtopk", lambda s: _encoder_linear(s, "b_dec"), False),
    "MatryoshkaBatchTopKSAE": ("matryoshka", dict, False),
}


REFUSED = {
    "CrossCoder": "a crosscoder from an unreleased dictionary-learning (no release fixes its layout or its code "
    "normalisation); mechscope cannot check it reads it exactly",
    "BatchTopKCrossCoder": "a BatchTopK crosscoder from an unreleased dictionary-learning (no release fixes its layout "
    "or its code normalisation); mechscope cannot check it reads it exactly",
    "IdentityDict": "the identity map (no dictionary to load)",
}
"""dict_class → why it is refused (the dictionary_learning classes mechscope knows and does not read)."""


def _read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    file = path / CONFIG
    if not file.exists():
        raise SAEFormatError(
            f"{path}: {WEIGHTS} without {CONFIG}: the config names the dictionary class "
            "that gives the tensors their meaning; copy it from the training run"
        )
    try:
        cfg = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{file}: not JSON ({err})") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("trainer"), dict):
        raise SAEFormatError(f"{file}: not a dictionary_learning config (no 'trainer' object)")
    unknown = sorted(set(cfg) - {"trainer", "buffer"}) + sorted(
        f"trainer.{k}" for k in set(cfg["trainer"]) - TRAINER_FIELDS
    )
    buffer: dict[str, Any] = cfg["buffer"] if isinstance(cfg.get("buffer"), dict) else {}
    unknown += sorted(f"buffer.{k}" for k in set(buffer) - BUFFER_FIELDS)
    if unknown:
        raise SAEFormatError(
            f"{file}: field(s) {', '.join(unknown)} not known to mechscope (it reads "
            "dictionary-learning 0.1.0's configs); not loaded"
        )
    if buffer.get("io", "out") not in ("in", "out"):
        raise SAEFormatError(
            f"{file}: buffer io={buffer['io']!r}: the dictionary maps a module's input to its "
            "output; only 'in' and 'out' (an autoencoder of one site) are supported"
        )
    return cfg["trainer"], buffer


def _read_state(file: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise SAEFormatError(
            f"{file}: not a plain state_dict of tensors (refused without unpickling code: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise SAEFormatError(f"{file}: not a state_dict (a mapping of names to tensors)")
    return dict(state)


def load(path: Path) -> SparseAutoencoder:
    """The dictionary_learning dictionary in ``path`` as a mechscope SAE with the same codes and outputs."""
    trainer, _ = _read_config(path)
    state = _read_state(path / WEIGHTS)
    name = trainer.get("dict_class")
    if name == "AutoEncoder" and "decoder.bias" in state and "bias" not in state:
        name = "AutoEncoderNew"  # the standard trainers record 'AutoEncoder' whatever dict_class they were given
    if name in REFUSED:
        raise SAEFormatError(f"{path / CONFIG}: dict_class {name!r} is {REFUSED[name]}; not loaded")
    if name not in CLASSES:
        raise SAEFormatError(
            f"{path / CONFIG}: dict_class {name!r} is not supported; mechscope reads {', '.join(CLASSES)}"
        )
    arch, rename, reads_x = CLASSES[name]
    cls = REGISTRY[arch]
    fields = _fields(path, name, trainer, state)
    config = _config(cls, lambda: cls.config_cls(**fields), path, f"dictionary_learning {name}")
    renamed = rename({k: v for k, v in state.items() if k not in ("k", "group_sizes")})
    _check_state(cls, config, renamed, path, f"dictionary_learning {name}")
    sae = cls(config)
    with torch.no_grad():
        sae.load_state_dict({k: v.float() for k, v in renamed.items()})
        if reads_x:
            sae.absorb_input_bias_(sae.b_dec @ sae.W_enc)
    if arch in ("batchtopk", "matryoshka") and float(sae.get_buffer("threshold")) < 0:
        raise SAEFormatError(
            f"{path / WEIGHTS}: {name} threshold={float(sae.get_buffer('threshold'))}: the inference threshold "
            "was never learned (training stopped before threshold_start_step); not loaded"
        )
    return sae


def _fields(path: Path, name: str, trainer: dict[str, Any], state: dict[str, Tensor]) -> dict[str, Any]:
    """The mechscope config fields: sizes from the tensors, k and prefix widths from the buffers, checked
    against the config."""
    weight = state.get("W_enc", state.get("encoder.weight"))
    if weight is None or weight.ndim != 2:
        raise SAEFormatError(f"{path / WEIGHTS}: no 2-d encoder weight (W_enc or encoder.weight) for {name}")
    n, d = weight.shape if "encoder.weight" in state else weight.shape[::-1]
    for key, value in (("activation_dim", d), ("dict_size", n)):
        if key in trainer and trainer[key] != value:
            raise SAEFormatError(f"{path}: config {key}={trainer[key]!r} but the tensors say {value}")
    fields: dict[str, Any] = {"d_in": int(d), "latents": int(n)}
    if "k" in state:
        k = int(state["k"])
        if "k" in trainer and trainer["k"] != k:
            raise SAEFormatError(f"{path}: config k={trainer['k']!r} but the state_dict's k is {k}")
        fields["k"] = k
    elif name in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        raise SAEFormatError(f"{path / WEIGHTS}: {name} without its 'k' buffer")
    if name == "MatryoshkaBatchTopKSAE":
        sizes = state["group_sizes"].tolist() if "group_sizes" in state else trainer.get("group_sizes")
        if "group_sizes" in trainer and trainer["group_sizes"] != sizes:
            raise SAEFormatError(
                f"{path}: config group_sizes={trainer['group_sizes']} but the state_dict's are {sizes}"
            )
        if not sizes:
            raise SAEFormatError(f"{path / WEIGHTS}: MatryoshkaBatchTopKSAE without group_sizes")
        fields["widths"] = tuple(int(w) for w in torch.tensor(sizes).cumsum(0).tolist())
    return fields

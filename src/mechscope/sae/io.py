"""Saved SAEs: a folder of ``cfg.json`` + safetensors, in mechscope's layout or SAELens's (the other formats:
:mod:`mechscope.sae.formats`, whose registry :func:`load_sae` detects the format through).

mechscope layout:  cfg.json = {"format": "mechscope-sae", "arch": ..., <config fields>,
                   "tensors_sha256": ..., "metadata": {...}}
                   sae.safetensors = the module's state_dict (W_enc [d, n], b_enc [n], W_dec [n, d],
                   b_dec [d], and the architecture's extras such as ``threshold``).
SAELens layout:    cfg.json with ``architecture``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``, …,
                   ``metadata.hook_name`` / ``metadata.model_name`` (where mechscope can name them,
                   :mod:`mechscope.sae.saelens_names`); sae_weights.safetensors with W_enc, W_dec, b_enc
                   (b_gate, b_mag, r_mag for gated), b_dec and ``threshold`` for JumpReLU (which is also
                   how SAELens runs BatchTopK).

Integrity: mechscope writes the digest of the tensors (:mod:`mechscope.digest`) into the
safetensors header of both layouts (and into cfg.json for its own); loading recomputes it and
refuses a mismatch, and a header whose ``mechscope.*`` keys are missing or unknown (a damaged key
name is corruption, not an old file). Its own layout also records the digest of the config fields (arch, d_in,
latents, k, …) in the header, so an edited or damaged ``k`` in cfg.json is refused too; metadata
and unknown fields in cfg.json stay free to edit. SAELens files written by others have none: they load with a note on stderr that
nothing about their tensors is verified.

Loading is strict about what changes the SAE's meaning and tolerant of the rest. It ignores cfg
fields it does not know, but refuses (:class:`SAEFormatError`, naming the cause and the fix):
anything that is not safetensors (pickled ``.pt``/``.bin``, ``.npz``: those can run code or need
converting first), except the two foreign formats read without unpickling (Gemma Scope's ``params.npz``,
dictionary_learning's ``ae.pt``: :mod:`mechscope.sae.formats`); tensors missing or unexpected for the architecture (``W_skip``, a stray
``threshold``); an activation function other than ReLU/TopK (pre-6.0 ``activation_fn_str``
``"tanh-relu"``); ``hook_head_index`` (an SAE on one attention head) and ``reshape_activations``
other than "none" (mechscope sites read whole, unreshaped activations); and an input normalisation
it cannot reproduce. ``normalize_activations="expected_average_only_in"`` means the SAE reads s·x,
with s (SAELens's ``estimated_norm_scaling_factor``, √d / E‖x‖ on its training activations) not in
the files: it loads only when the caller passes ``scaling_factor=s``, which is folded into the
weights (:func:`mechscope.sae.maths.fold_input_scale_`).
A saved SAE reads raw activations: the training-time input scale is folded into the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor

from mechscope.atomic import atomic_write_bytes, save_safetensors
from mechscope.config import finite_float, from_dict
from mechscope.digest import CONFIG_DIGEST_KEY, DIGEST_KEY, header_key_problems, json_digest, tensors_digest
from mechscope.errors import MechscopeError, UsageError
from mechscope.sae import saelens_names
from mechscope.sae.base import REGISTRY, SAEConfig, SparseAutoencoder

OWN_FORMAT = "mechscope-sae"
CFG = "cfg.json"
OWN_WEIGHTS = "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"
CFG_DIGEST = "tensors_sha256"
UNSAFE = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".npz", ".npy")
_SAELENS_NORMALISATIONS = ("none", "expected_average_only_in", None)
_SAELENS_ACTIVATIONS = (None, "relu", "topk")
SAELENS_LAYOUT_VERIFIED = "6.54.12"
"""The sae-lens release whose loader CI checks reads our SAELens-layout folders
(tests/integration/test_sae_saelens.py); written to cfg.json when sae-lens is not installed here."""


class SAEFormatError(MechscopeError, ValueError):
    """A folder that does not hold a loadable SAE (or holds one in a refused format)."""


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every command that loads an SAE (``--sae``) takes besides the folder."""
    parser.add_argument(
        "--sae-scaling-factor",
        type=finite_float,
        default=None,
        metavar="S",
        help="only for a SAELens SAE with normalize_activations='expected_average_only_in': "
        "the factor s it multiplies activations by (folded into the weights)",
    )
    # load_sae's errors name its parameter `scaling_factor`: the command shows this flag instead.
    parser.set_defaults(
        _parameter_flags={**(parser.get_default("_parameter_flags") or {}), "scaling_factor": "--sae-scaling-factor"}
    )


def save_sae(
    sae: SparseAutoencoder,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    layout: Literal["mechscope", "saelens"] = "mechscope",
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Write ``sae`` to the folder ``path`` (created) in mechscope's or SAELens's layout; returns the folder.

    For the SAELens layout, ``hook_name`` defaults to the TransformerLens hook of ``metadata["site"]``
    and ``model_name`` to the SAELens name of ``metadata["model_id"]`` (or of the model recorded in the
    manifest of ``metadata["store"]``); either stays null when it cannot be named.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    if layout == "saelens":
        arch, extra, tensors = sae.saelens_tensors()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        cfg = {
            "architecture": arch,
            "d_in": sae.d_in,
            "d_sae": sae.latents,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            **extra,
            "metadata": {
                **metadata,
                **_saelens_version(),
                "written_by": f"mechscope {_own_version()}",
                "hook_name": hook_name or metadata.get("hook_name") or saelens_names.hook_name(metadata.get("site")),
                "hook_head_index": None,
                "model_name": model_name or metadata.get("model_name") or saelens_names.model_name(_model_id(metadata)),
            },
        }
        weights = path / SAELENS_WEIGHTS
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
        cfg = {"format": OWN_FORMAT, **sae.config_dict(), CFG_DIGEST: tensors_digest(tensors), "metadata": metadata}
        weights = path / OWN_WEIGHTS
    header = {DIGEST_KEY: cfg.get(CFG_DIGEST) or tensors_digest(tensors)}
    if layout != "saelens":
        header[CONFIG_DIGEST_KEY] = json_digest(sae.config_dict())
    save_safetensors(weights, tensors, metadata=header)
    atomic_write_bytes(path / CFG, (json.dumps(cfg, indent=2, default=str) + "\n").encode())
    return path


def _own_version() -> str:
    try:
        return pkg_metadata.version("mechscope")
    except pkg_metadata.PackageNotFoundError:
        return "(not installed)"


def _saelens_version() -> dict[str, str]:
    """The sae-lens version to record: the installed one when it reads this (6.x) layout, else the
    release CI verified the layout with, and a note saying so. SAELens reads a file that names no
    version, or one below 6.0, as a pre-6.0 config."""
    try:
        installed = pkg_metadata.version("sae-lens")
    except pkg_metadata.PackageNotFoundError:
        installed = None
    if installed and installed.split(".")[0].isdigit() and int(installed.split(".")[0]) >= 6:
        return {"sae_lens_version": installed}
    return {
        "sae_lens_version": SAELENS_LAYOUT_VERIFIED,
        "sae_lens_version_note": f"sae-lens {installed or 'was not'} installed where this was written; "
        "this is the release mechscope's CI checks loads the layout",
    }


def _model_id(metadata: dict[str, Any]) -> str | None:
    if metadata.get("model_id"):
        return str(metadata["model_id"])
    manifest = Path(str(metadata.get("store", ""))) / "manifest.json"
    if metadata.get("store") and manifest.is_file():
        try:
            return json.loads(manifest.read_text()).get("model_id")
        except (json.JSONDecodeError, OSError, AttributeError):
            return None
    return None


def sae_location(path: str | Path, subfolder: str | None = None) -> Path:
    """Where the dictionary ``path`` names lies on this machine: ``path`` itself (``/subfolder`` in it) when it exists,
    else a hub id ``org/name`` (or ``org/name:subfolder``) resolved in huggingface_hub's cache, offline
    (:func:`mechscope.hub.cached_snapshot`: one line naming the cache and the ``hf download`` command when absent).
    Anything else is returned as it is, for the loader to say it does not exist."""
    from mechscope.hub import cached_snapshot, is_hub_id

    local = Path(path)
    if local.exists():
        return local / subfolder if subfolder else local
    repo, colon, sub = str(path).partition(":")
    if colon and subfolder:
        raise UsageError(f"{path}: a subfolder given twice (after ':' and as `subfolder`={subfolder!r}); give one")
    if not is_hub_id(repo):
        return local
    return cached_snapshot(repo, SAEFormatError, subfolder=sub or subfolder, extra=f"; nor is {path} a local path")


def load_sae(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    scaling_factor: float | None = None,
    subfolder: str | None = None,
) -> SparseAutoencoder:
    """Load a dictionary of any format in :data:`mechscope.sae.formats.FORMATS`: mechscope's, SAELens's (including
    Gemma Scope SAEs saved by SAELens), EleutherAI sparsify's, Gemma Scope's raw ``params.npz``, dictionary_learning's.

    ``path`` is the folder, or its weights file, or a Hugging Face hub id ``org/name`` (``subfolder`` in it, also
    written ``org/name:subfolder``) read from huggingface_hub's cache without downloading (:func:`sae_location`).
    The format is detected (exactly one must match) and recorded on
    the result as ``file_format``. ``scaling_factor`` s is needed, and
    allowed, only for a SAELens SAE with ``normalize_activations="expected_average_only_in"`` (it reads s·x; s is
    folded into the weights). Returns the module in eval mode on ``device``. Raises :class:`SAEFormatError` with
    the reason when the path holds no dictionary, one we cannot reproduce exactly, one whose tensors fail their
    digest, or only pickled weights.
    """
    from mechscope.sae.formats import detect_format  # the formats import this module

    path = sae_location(path, subfolder)
    if path.is_file():
        if path.suffix not in (".safetensors", ".npz") and path.name != "ae.pt":
            raise SAEFormatError(
                f"{path}: refusing to load a {path.suffix or 'suffix-less'} file; only safetensors SAE "
                "folders, Gemma Scope params.npz and dictionary_learning ae.pt folders load"
            )
        # Gemma Scope's npz and circuit-tracer's per-layer safetensors are files; the other formats are folders.
        path = (
            path if path.suffix == ".npz" or path.name not in (OWN_WEIGHTS, SAELENS_WEIGHTS, "ae.pt") else path.parent
        )
    if not path.exists():
        raise SAEFormatError(f"{path}: no such SAE folder")
    if scaling_factor is not None and not (math.isfinite(scaling_factor) and scaling_factor > 0):
        raise UsageError(f"the SAE scaling factor must be a positive number, got {scaling_factor}")
    fmt = detect_format(path)
    sae = fmt.load(path, scaling_factor)
    sae.file_format = fmt.name
    return sae.to(device).eval()


def is_own(path: Path) -> bool:
    """A folder in mechscope's layout: cfg.json marked ``mechscope-sae``, or sae.safetensors beside a cfg.json
    that is missing, unreadable, or names an ``arch`` (so its errors are mechscope's)."""
    if not path.is_dir():
        return False
    try:
        cfg = json.loads((path / CFG).read_text())
    except (OSError, ValueError):
        return (path / OWN_WEIGHTS).exists()
    if not isinstance(cfg, dict):
        return (path / OWN_WEIGHTS).exists()
    return cfg.get("format") == OWN_FORMAT or ((path / OWN_WEIGHTS).exists() and "arch" in cfg)


def is_saelens(path: Path) -> bool:
    """A folder with SAELens's weights file."""
    return path.is_dir() and (path / SAELENS_WEIGHTS).exists() and not is_own(path)


def load_own(path: Path) -> SparseAutoencoder:
    """A folder in mechscope's layout (module docstring)."""
    return _load_own(path, _read_cfg(path))


def load_saelens(path: Path, scaling_factor: float | None) -> SparseAutoencoder:
    """A folder in SAELens's layout (module docstring)."""
    return _load_saelens(path, _read_cfg(path), scaling_factor)


def _read_cfg(path: Path) -> dict[str, Any]:
    if not (path / CFG).exists():
        raise SAEFormatError(f"{path}: no {CFG}")
    try:
        cfg = json.loads((path / CFG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{path / CFG}: not JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{path / CFG}: not a JSON object")
    return cfg


def _read_weights(
    file: Path, keys: tuple[str, ...], *wanted: str | None, claimed: bool = False, note: bool = True
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, header metadata) of ``file``, the tensors checked against the header's digest and the
    ``wanted`` digests (None: absent); a file ``claimed`` as ours, or whose header has keys like ours,
    must carry exactly the metadata ``keys`` (:func:`mechscope.digest.header_key_problems`). Without a digest,
    a note on stderr says the tensors are not verified (``note=False``: the caller says it once for many files)."""
    if not file.exists():
        raise SAEFormatError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(
            f"{file}: not a safetensors file, or a truncated or damaged one ({err}); only safetensors weights load"
        ) from err
    recorded = [d for d in (header.get(DIGEST_KEY), *wanted) if d]
    got = tensors_digest(tensors) if recorded else None
    if any(d != got for d in recorded):
        assert got is not None  # recorded is not empty
        raise SAEFormatError(
            f"{file}: tensor digest mismatch (sha256 {got[:12]}…, recorded "
            f"{', '.join(sorted({d[:12] + '…' for d in recorded}))}): the weights changed after they "
            "were saved (disk corruption or an edit); save or export the SAE again"
        )
    problems = header_key_problems(header, keys, claimed)
    if problems:
        raise SAEFormatError(
            f"{file}: damaged safetensors header: {problems} (a mechscope SAE file of this layout "
            f"carries exactly {', '.join(map(repr, keys))}); save or export the SAE again"
        )
    if not recorded and note:
        print(
            f"mechscope: note: {file} carries no tensor digest (written by another tool); its tensors are not verified",
            file=sys.stderr,
        )
    return tensors, header


def _arch_class(name: str, known: dict[str, type[SparseAutoencoder]], where: Path) -> type[SparseAutoencoder]:
    if name not in known:
        raise SAEFormatError(f"{where}: unknown architecture {name!r}; known: {sorted(known)}")
    return known[name]


def _config(cls: type[SparseAutoencoder], make_cfg: Any, where: Path, what: str) -> SAEConfig:
    try:
        return make_cfg()
    except (KeyError, TypeError, ValueError) as err:
        raise SAEFormatError(f"{where}: {what} config does not fit a {cls.arch} SAE ({err})") from err


def _check_state(
    cls: type[SparseAutoencoder], config: SAEConfig, state: dict[str, Tensor], where: Path, what: str
) -> None:
    """Refuse tensors missing, unexpected or misshapen for ``cls(config)`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        expected = cls(config).state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SAEFormatError(
            f"{where}: {what} tensors do not match a {cls.arch} SAE: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}; "
            "mechscope loads only tensors whose meaning it reproduces"
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise SAEFormatError(
            f"{where}: {what} tensors have the wrong shape for d_in={config.d_in}, "
            f"latents={config.latents}: {', '.join(wrong)}"
        )


def _load_own(path: Path, cfg: dict[str, Any]) -> SparseAutoencoder:
    cls = _arch_class(str(cfg.get("arch")), REGISTRY, path)
    state, header = _read_weights(
        path / OWN_WEIGHTS,
        (DIGEST_KEY, CONFIG_DIGEST_KEY),
        cfg.get(CFG_DIGEST),
        claimed=cfg.get("format") == OWN_FORMAT,
    )
    config = _config(cls, lambda: from_dict(cls.config_cls, cfg), path, "mechscope")
    recorded = header.get(CONFIG_DIGEST_KEY)
    if recorded and recorded != json_digest({"arch": cls.arch, **dataclasses.asdict(config)}):
        raise SAEFormatError(
            f"{path / CFG}: the SAE's config fields (arch, d_in, latents, k, …) differ from those "
            f"saved with {OWN_WEIGHTS} (digest mismatch): {CFG} was edited or damaged; save the SAE again"
        )
    _check_state(cls, config, state, path, "mechscope")
    sae = cls(config)
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    sae.metadata = dict(cfg["metadata"]) if isinstance(cfg.get("metadata"), dict) else {}
    return sae


def _upgrade_saelens_cfg(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """Read pre-6.0 SAELens configs: a "standard" SAE with a topk activation is a TopK SAE; refuse
    activation functions other than ReLU and TopK (pre-6.0 ``"tanh-relu"`` is not a ReLU SAE)."""
    cfg = dict(cfg)
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if fn not in _SAELENS_ACTIVATIONS:
        raise SAEFormatError(
            f"{where}: activation function {fn!r} is not supported (only 'relu' and 'topk'); "
            "loading it as another SAE would give different codes"
        )
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if fn == "topk" and cfg.get("architecture", "standard") == "standard":
        if k is None:
            raise SAEFormatError(f"{where}: activation_fn 'topk' without activation_fn_kwargs.k")
        cfg["architecture"], cfg["k"] = "topk", k
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    cfg.setdefault("architecture", "standard")
    return cfg


def _check_saelens_input(path: Path, cfg: dict[str, Any], scaling_factor: float | None) -> None:
    """Refuse what changes the SAE's input in ways a mechscope site cannot reproduce (see the module docstring)."""
    meta: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    # Pre-6.0 names: hook_point, hook_point_head_index; a pre-6.0 hook_z SAE is reshaped implicitly.
    head = next(
        (
            v
            for v in (cfg.get("hook_head_index"), cfg.get("hook_point_head_index"), meta.get("hook_head_index"))
            if v is not None
        ),
        None,
    )
    if head is not None:
        raise SAEFormatError(
            f"{path}: hook_head_index={head!r}: the SAE reads one attention head of its hook, "
            "which mechscope sites cannot select; not supported"
        )
    hook = str(cfg.get("hook_name") or cfg.get("hook_point") or meta.get("hook_name") or "")
    reshape = cfg.get("reshape_activations", "hook_z" if hook.endswith("hook_z") else "none")
    if reshape not in ("none", None):
        raise SAEFormatError(
            f"{path}: reshape_activations={reshape!r} is not supported (only 'none'): the SAE "
            "reads activations reshaped in a way mechscope sites do not reproduce"
        )
    norm = cfg.get("normalize_activations")
    if norm not in _SAELENS_NORMALISATIONS:
        # SAELens applies these per input at run time; they are not a fixed change of the weights.
        raise SAEFormatError(
            f"{path}: normalize_activations={norm!r} is not supported (only 'none', 'expected_average_only_in')"
        )
    if norm == "expected_average_only_in" and scaling_factor is None:
        raise SAEFormatError(
            f"{path}: normalize_activations='expected_average_only_in': the SAE reads activations times a scaling "
            "factor its files do not hold; pass it as `scaling_factor` ("
            "SAELens's estimated_norm_scaling_factor, √d_in / mean ‖x‖ of its training activations) to fold it in"
        )
    if norm != "expected_average_only_in" and scaling_factor is not None:
        raise UsageError(
            f"{path}: normalize_activations={norm!r}: the SAE reads raw activations; drop the scaling factor "
            "(`scaling_factor`)"
        )


def _load_saelens(path: Path, cfg: dict[str, Any], scaling_factor: float | None) -> SparseAutoencoder:
    cfg = _upgrade_saelens_cfg(cfg, path)
    _check_saelens_input(path, cfg, scaling_factor)
    readers = {cls.saelens_name: cls for cls in REGISTRY.values()}
    cls = _arch_class(str(cfg["architecture"]), readers, path)
    if cfg.get("rescale_acts_by_decoder_norm") and cls.saelens_name != "topk":
        raise SAEFormatError(
            f"{path}: rescale_acts_by_decoder_norm is read for 'topk' SAEs only, not "
            f"{cfg['architecture']!r}; loading it without the rescaling would give different codes"
        )
    tensors, _ = _read_weights(path / SAELENS_WEIGHTS, (DIGEST_KEY,))
    if "scaling_factor" in tensors:  # old fine-tuning scale multiplies codes in decode: fold into W_dec
        tensors["W_dec"] = tensors["W_dec"] * tensors.pop("scaling_factor").reshape(-1, 1)
    what = f"SAELens {cfg['architecture']}"
    config = _config(
        cls,
        lambda: cls.config_cls(d_in=int(cfg["d_in"]), latents=int(cfg["d_sae"]), **cls.saelens_config(cfg)),
        path,
        what,
    )
    _check_state(cls, config, cls.saelens_state(tensors), path, what)
    try:
        sae = cls.from_saelens(cfg, tensors)
    except (KeyError, RuntimeError, ValueError) as err:
        raise SAEFormatError(f"{path}: SAELens {cfg['architecture']} weights do not fit ({err})") from err
    if scaling_factor is not None:
        sae.fold_input_scale_(scaling_factor)
    return sae

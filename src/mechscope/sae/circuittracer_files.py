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

import re
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mechscope.atomic import save_safetensors
from mechscope.digest import DIGEST_KEY, tensors_digest
from mechscope.sae import circuittracer_clt
from mechscope.sae.base import REGISTRY, SparseAutoencoder
from mechscope.sae.io import SAEFormatError, _check_state, _config, _read_weights
from mechscope.sae.topk import TopKConfig

FILE = "transcoder.safetensors"
THRESHOLD = "activation_function.threshold"
REQUIRED = {"W_enc", "W_dec", "b_enc", "b_dec"}
OPTIONAL = {THRESHOLD, "W_skip"}
ARCHS = {
    (True, False): "jumprelu_transcoder",
    (True, True): "jumprelu_skip_transcoder",
    (False, False): "transcoder",
    (False, True): "skip_transcoder",
}
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
        raise SAEFormatError(
            f"{file}: circuit-tracer transcoder tensor(s) {', '.join(unknown)} not known to mechscope "
            f"(it reads {', '.join(sorted(REQUIRED | OPTIONAL))}); not loaded"
        )
    if tensors["W_enc"].ndim != 2:
        raise SAEFormatError(f"{file}: W_enc has shape {tuple(tensors['W_enc'].shape)}, expected [n, d]")
    n, d = tensors["W_enc"].shape
    threshold = tensors.get(THRESHOLD)
    if threshold is not None and bool((threshold < 0).any()):
        raise SAEFormatError(
            f"{file}: {int((threshold < 0).sum())} negative threshold(s) (min {float(threshold.min()):.4g}): "
            "circuit-tracer keeps z·1[z > θ], negative codes included, which mechscope's "
            "JumpReLU (ReLU(z)·1[z > θ]) does not reproduce; not loaded"
        )
    cls = REGISTRY[ARCHS[threshold is not None, "W_skip" in tensors]]
    fields = {"d_in": int(d), "latents": int(n), "d_out": int(d), **({} if threshold is not None else {"k": int(n)})}
    config = _config(cls, lambda: cls.config_cls(**fields), file, "circuit-tracer")
    state = {k: v.t().contiguous() if k in ("W_enc", "W_skip") and v.ndim == 2 else v for k, v in tensors.items()}
    if threshold is not None:
        state["threshold"] = state.pop(THRESHOLD)
    _check_state(cls, config, state, file, "circuit-tracer")
    sae = cls(config)
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    sae.metadata = _layer_metadata(file)
    return sae


def _layer_metadata(file: Path) -> dict:
    """The sites of ``file``'s layer when a transcoder_set config.yaml beside it lists it (or it is its layer_i file)."""
    if not detect_set(file.parent) or not (file.parent / circuittracer_clt.CONFIG).is_file():
        return {}
    files, cfg = set_layers(file.parent)
    layer = next((i for i, f in files.items() if f.resolve() == file.resolve()), None)
    if layer is None:
        return {}
    meta = circuittracer_clt.sites_of(cfg, len(files), file.parent)
    return {k: (v[layer] if isinstance(v, list) else v) for k, v in meta.items()}


def save(sae: SparseAutoencoder, path: Path, name: str = FILE) -> Path:
    """Write ``sae`` as ``path``/``name`` (transcoder.safetensors), the file circuit-tracer's ``load_relu_transcoder`` reads."""
    written = {arch: key for key, arch in ARCHS.items()}
    if sae.arch not in written:
        raise SAEFormatError(
            f"circuit-tracer files hold single-layer transcoders ({', '.join(written)}); "
            f"a {sae.arch!r} dictionary has no such file"
        )
    jump, skip = written[sae.arch]
    k = None if jump else cast(TopKConfig, sae.cfg).k  # the configs of transcoder and skip_transcoder are TopK's
    if k is not None and k != sae.latents:
        raise SAEFormatError(
            f"a circuit-tracer file has no field for k: this TopK {sae.arch} (k={k} < "
            f"latents={sae.latents}) would be read as ReLU; keep it in mechscope's layout"
        )
    if sae.d_out != sae.d_in:
        raise SAEFormatError(
            f"circuit-tracer transcoders write a site of their input's width; this {sae.arch} reads "
            f"d_in={sae.d_in} and writes d_out={sae.d_out}"
        )
    if jump and bool((sae.get_parameter("threshold") < 0).any()):
        raise SAEFormatError("a negative JumpReLU threshold would keep negative codes in circuit-tracer; not written")
    tensors: dict[str, Tensor] = {
        "W_enc": sae.W_enc.detach().t(),
        "W_dec": sae.W_dec.detach(),
        "b_enc": sae.b_enc.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    if jump:
        tensors[THRESHOLD] = sae.get_parameter("threshold").detach()
    if skip:
        tensors["W_skip"] = sae.get_parameter("W_skip").detach().t()
    tensors = {k: v.to(torch.float32).cpu().contiguous() for k, v in tensors.items()}
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / name, tensors, metadata={DIGEST_KEY: tensors_digest(tensors)})
    return path


# ---- transcoder sets: one file per layer and the config.yaml naming them ------------------------------------------

LAYER = re.compile(r"layer_(\d+)\.safetensors")
SET_KIND = "transcoder_set"


def detect_set(path: Path) -> bool:
    """A folder of ``layer_i.safetensors`` files (``TranscoderSet.to_safetensors``) or with a transcoder_set config.yaml."""
    if not path.is_dir() or circuittracer_clt.detect(path):  # a CLT's files: its reader checks the config
        return False
    config = path / circuittracer_clt.CONFIG
    if config.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(config.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            return True  # the set's reader names the damage
        return isinstance(cfg, dict) and cfg.get("model_kind") == SET_KIND
    return (path / "layer_0.safetensors").is_file()


def _member(entry: str, folder: Path) -> Path:
    """A ``transcoders`` entry: an ``hf://org/name/file?revision=…`` URI (read from the hub cache, offline) or a path
    (relative ones from the config's folder)."""
    if entry.startswith("hf://"):
        from urllib.parse import parse_qs, urlparse

        from mechscope.hub import cached_file

        uri = urlparse(entry)
        repo, _, file = uri.path.lstrip("/").partition("/")
        if not uri.netloc or not repo or not file:
            raise SAEFormatError(
                f"{folder / circuittracer_clt.CONFIG}: transcoders entry {entry!r} is not hf://org/name/file"
            )
        revisions = parse_qs(uri.query).get("revision")
        revision = revisions[0] if revisions else None
        return cached_file(f"{uri.netloc}/{repo}", file, SAEFormatError, revision)
    path = Path(entry).expanduser()
    return path if path.is_absolute() else folder / path


def set_layers(path: Path) -> tuple[dict[int, Path], dict]:
    """({layer: its file}, the config) of the set in the folder ``path``: the config's ``transcoders`` list in layer
    order, else ``layer_0 … layer_{L−1}.safetensors``. Gaps, Gemma Scope .npz members and missing files are refused."""
    cfg = circuittracer_clt.read_config(path, SET_KIND)
    if "transcoders" in cfg:
        if not isinstance(cfg["transcoders"], list) or not all(isinstance(e, str) for e in cfg["transcoders"]):
            raise SAEFormatError(f"{path / circuittracer_clt.CONFIG}: transcoders is not a list of paths")
        files = {i: _member(e, path) for i, e in enumerate(cfg["transcoders"])}
    else:
        found = {int(m.group(1)): path / p.name for p in path.iterdir() if (m := LAYER.fullmatch(p.name))}
        gaps = sorted(set(range(max(found, default=-1) + 1)) - set(found))
        if gaps or not found:
            raise SAEFormatError(
                f"{path}: circuit-tracer transcoder set without layer(s) {gaps or [0]} (it needs "
                "layer_0 … layer_{L−1}.safetensors); not loaded"
            )
        files = dict(sorted(found.items()))
    npz = [str(f) for f in files.values() if f.suffix == ".npz"]
    if npz:
        raise SAEFormatError(
            f"{path / circuittracer_clt.CONFIG}: Gemma Scope .npz transcoder(s) ({npz[0]}, …) are read by "
            "circuit-tracer's Gemma Scope loader, which mechscope does not reproduce; not loaded"
        )
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise SAEFormatError(f"{path}: transcoder set member(s) {', '.join(missing)} missing; not loaded")
    return files, cfg


def load_set(path: Path) -> dict[str, SparseAutoencoder]:
    """Every layer of the set in ``path`` ({"layer_i": transcoder}), each with the metadata of its layer (its sites)."""
    files, cfg = set_layers(path)
    meta = circuittracer_clt.sites_of(cfg, len(files), path)
    out = {}
    for i, file in files.items():
        sae = load(file)
        sae.metadata = {k: (v[i] if isinstance(v, list) else v) for k, v in meta.items()}
        out[f"layer_{i}"] = sae
    return out


def load_refused(path: Path) -> SparseAutoencoder:
    n = len(set_layers(path)[0])
    raise SAEFormatError(
        f"{path}: a circuit-tracer transcoder set of {n} layers, not one dictionary: load one layer "
        f"({path}/layer_0.safetensors), or convert it to one folder per layer (mechscope.sae.formats.convert, the command mechscope convert)"
    )


def save_set(saes: dict[str, SparseAutoencoder], path: Path, metadata: dict) -> Path:
    """Write per-layer transcoders as ``layer_i.safetensors`` + config.yaml (model_kind transcoder_set) in ``path``,
    layer i being the one whose metadata site is in block i; the sites must be blocks 0 … L−1 (circuit-tracer attaches
    layer i to ``blocks.i``)."""

    def block(item: tuple[str, SparseAutoencoder]) -> int:
        meta = getattr(item[1], "metadata", None) or {}
        m = re.search(r"\.(\d+)$", str(meta.get("site", "")))
        if m is None:
            raise SAEFormatError(
                f"{item[0]}: no site of the form kind.L in its metadata: a circuit-tracer set orders "
                "its layers by block; record the site (e.g. mlp_in.3) when training or converting"
            )
        return int(m.group(1))

    ordered = [sae for _, sae in sorted(saes.items(), key=block)]
    sites = {key: [(getattr(s, "metadata", None) or {}).get(key) for s in ordered] for key in ("site", "target_site")}
    if circuittracer_clt.hooks_of(sites, len(ordered)) is None:
        raise SAEFormatError(
            "the transcoders' metadata do not name their sites (site, target_site) as mechscope "
            "aliases of blocks 0 … L−1 (mlp_in.L, mlp_out.L); circuit-tracer needs the hooks"
        )
    path.mkdir(parents=True, exist_ok=True)
    for i, sae in enumerate(ordered):
        save(sae, path, name=f"layer_{i}.safetensors")
    model = next(
        (
            m
            for s in ordered
            if (
                m := (getattr(s, "metadata", None) or {}).get("model_id")
                or (getattr(s, "metadata", None) or {}).get("model_name")
            )
        ),
        None,
    )
    circuittracer_clt.write_config(
        path, {**metadata, **sites, **({"model_id": model} if model else {})}, len(ordered), SET_KIND
    )
    return path

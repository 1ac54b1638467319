"""circuit-tracer's cross-layer transcoder folders (PyPI ``circuit-tracer`` 0.5.0), and the ``config.yaml`` beside them.

folder (``CrossLayerTranscoder.to_safetensors``, read by ``load_clt``), for layers i = 0 … L−1:

    W_enc_i.safetensors:  W_enc_i [m, d], b_enc_i [m], b_dec_i [d], threshold_i [m] (JumpReLU only)
    W_dec_i.safetensors:  W_dec_i [m, L − i, d]          layer i's latents → the outputs of layers i, …, L−1
    config.yaml:          model_kind: cross_layer_transcoder, model_name, feature_input_hook, feature_output_hook
                          (optional; hooks relative to ``blocks.i``)

circuit-tracer's maths, layer by layer (one width d in and out; no skip term: ``load_clt`` never reads one):

    z_i = x_i W_enc_iᵀ + b_enc_i;   a_i = z_i·1[z_i > θ_i] (JumpReLU) or ReLU(z_i);   ŷ_t = Σ_{i ≤ t} a_i W_dec_i[:, t − i] + b_dec_t

→ mechscope's ``jumprelu_clt`` (θ ≥ 0: ReLU(z)·1[z > θ] = z·1[z > θ]) or ``clt`` with k = m (ReLU(TopK_m(z)) =
ReLU(z)), with W_enc's diagonal block i = W_enc_iᵀ and W_dec's block (i, t) = W_dec_i[:, t − i]. The number of
layers is the number of W_enc_i files, as circuit-tracer counts them. circuit-tracer has a TopK activation module
that no loader of its files builds: a file has no field for k, so a TopK CLT (k < m) is refused when written.

The config's hooks become the dictionary's ``metadata`` ``site`` / ``target_site`` lists (``mlp_in.i`` …) through
:data:`HOOK_ALIASES`, hooks every family reads the same; any other hook is refused by name, as is any config field
circuit-tracer 0.5.0 does not write. Written: the folder and, when the dictionary's metadata names its sites
(blocks 0 … L−1 in order, as circuit-tracer attaches layer i to ``blocks.i``), its config.yaml.

Refused by name: a negative threshold (circuit-tracer keeps negative codes), layers with and without thresholds,
missing or misnumbered files, unknown or misshapen tensors.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.atomic import atomic_write_bytes, save_safetensors
from mechscope.digest import DIGEST_KEY, tensors_digest
from mechscope.sae import saelens_names
from mechscope.sae.base import REGISTRY, SparseAutoencoder
from mechscope.sae.clt import CrossLayerTranscoderSAE
from mechscope.sae.io import SAEFormatError, _check_state, _config, _read_weights

CONFIG = "config.yaml"
CONFIG_FIELDS = {
    "model_kind",
    "model_name",
    "feature_input_hook",
    "feature_output_hook",
    "transcoders",
    "scan",
    "repo_id",
    "revision",
    "subfolder",
}
"""Every field circuit-tracer 0.5.0 reads from or writes to a transcoder config.yaml."""
HOOK_ALIASES = {
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",
    "hook_mlp_out": "mlp_out",
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
}
"""circuit-tracer hook (relative to ``blocks.i``) → the mechscope alias that reads the same place in every family.
Not here, and refused: ``hook_resid_mid`` (no mechscope site) and ``mlp.hook_out`` (the MLP's own output, before
the post-feedforward norm Gemma 2/3 and OLMo 2 apply; mechscope's ``mlp_out`` is after it)."""
ARCHS = {True: "jumprelu_clt", False: "clt"}
"""Has thresholds → mechscope architecture."""
_ENC = re.compile(r"W_enc_(\d+)\.safetensors")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "W_enc_0.safetensors").is_file()


def read_config(folder: Path, kind: str) -> dict[str, Any]:
    """``folder``/config.yaml (empty when absent), checked: known fields only, ``model_kind`` = ``kind``."""
    import yaml

    file = folder / CONFIG
    if not file.exists():
        return {}
    try:
        cfg = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{file}: not YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{file}: not a circuit-tracer config (a mapping with model_kind)")
    unknown = sorted(set(cfg) - CONFIG_FIELDS)
    if unknown:
        raise SAEFormatError(
            f"{file}: field(s) {', '.join(unknown)} not known to mechscope (it reads circuit-tracer "
            f"0.5.0's {', '.join(sorted(CONFIG_FIELDS))}); not loaded"
        )
    if cfg.get("model_kind") != kind:
        raise SAEFormatError(f"{file}: model_kind={cfg.get('model_kind')!r} beside these files; they are a {kind}")
    return cfg


def sites_of(cfg: dict[str, Any], layers: int, file: Path) -> dict[str, Any]:
    """The metadata of a config: model name and the hooks as mechscope site lists, one per layer."""
    meta: dict[str, Any] = {k: cfg[k] for k in ("model_name", "feature_input_hook", "feature_output_hook") if k in cfg}
    for field, key in (("feature_input_hook", "site"), ("feature_output_hook", "target_site")):
        if field not in cfg:
            continue
        hook = cfg[field]
        if hook not in HOOK_ALIASES:
            raise SAEFormatError(
                f"{file / CONFIG}: {field}={hook!r} reads a place no mechscope site reads on every "
                f"family (it maps {', '.join(HOOK_ALIASES)}); not loaded"
            )
        meta[key] = [f"{HOOK_ALIASES[hook]}.{i}" for i in range(layers)]
    return meta


def hooks_of(metadata: dict[str, Any], layers: int) -> dict[str, str] | None:
    """(feature_input_hook, feature_output_hook) for the config, from the metadata's per-layer site lists; None when
    they cannot be named. Sites on blocks other than 0 … L−1 in order are refused (circuit-tracer attaches layer i
    to ``blocks.i``)."""
    out: dict[str, str] = {}
    for key, field in (("site", "feature_input_hook"), ("target_site", "feature_output_hook")):
        sites = metadata.get(key)
        sites = [sites] if isinstance(sites, str) else sites
        if not isinstance(sites, list) or len(sites) != layers:
            return None
        hooks = [h for h in (saelens_names.hook_name(s) for s in sites) if h is not None]
        if len(hooks) != len(sites):
            return None
        rel = {re.sub(r"^blocks\.\d+\.", "", h) for h in hooks}
        blocks = [int(re.match(r"blocks\.(\d+)\.", h).group(1)) for h in hooks]  # type: ignore[union-attr]
        if blocks != list(range(layers)) or len(rel) != 1:
            raise SAEFormatError(
                f"this dictionary's {key} {sites} are not one hook of blocks 0 … {layers - 1} in order: "
                "circuit-tracer attaches layer i to blocks.i; not written"
            )
        out[field] = rel.pop()
    return out


def write_config(
    path: Path, metadata: dict[str, Any], layers: int, kind: str, extra: dict[str, Any] | None = None
) -> None:
    """config.yaml in ``path`` when the metadata names the sites, else a note on stderr that it was not written."""
    import yaml

    hooks = hooks_of(metadata, layers)
    if hooks is None:
        print(
            f"mechscope: note: no {CONFIG} written in {path}: the dictionary's metadata does not name its sites "
            "(site / target_site); pass circuit-tracer the hooks yourself",
            file=sys.stderr,
        )
        return
    model = metadata.get("model_name") or saelens_names.model_name(metadata.get("model_id"))
    cfg = {"model_kind": kind, **({"model_name": model} if model else {}), **hooks, **(extra or {})}
    atomic_write_bytes(path / CONFIG, yaml.safe_dump(cfg, sort_keys=False).encode())


def _layer_files(path: Path) -> int:
    """L, checking W_enc_0 … W_enc_{L−1} and W_dec_0 … W_dec_{L−1} are all there."""
    found = sorted(int(m.group(1)) for p in path.iterdir() if (m := _ENC.fullmatch(p.name)))
    missing = [f"W_enc_{i}" for i in range(len(found)) if i not in found]
    missing += [f"W_dec_{i}" for i in range(len(found)) if not (path / f"W_dec_{i}.safetensors").is_file()]
    if missing:
        raise SAEFormatError(
            f"{path}: circuit-tracer CLT files {', '.join(missing)}.safetensors missing "
            f"(found W_enc_{{{','.join(map(str, found))}}}); not loaded"
        )
    return len(found)


def _tensor(t: dict[str, Tensor], name: str, shape: tuple[int, ...], file: Path) -> Tensor:
    if name not in t:
        raise SAEFormatError(f"{file}: no tensor {name}")
    if tuple(t[name].shape) != shape:
        raise SAEFormatError(f"{file}: {name} has shape {tuple(t[name].shape)}, expected {shape}")
    return t[name].float()


def _fits_in_memory(path: Path, L: int, m: int, d: int) -> None:
    """Refuse a CLT whose mechscope form (masked dense W_enc [L·d, L·m] and W_dec [L·m, L·d], float32: L² times the
    file's encoder) needs more than this machine's memory, before allocating it."""
    import os

    need = 2 * 4 * (L * d) * (L * m)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise SAEFormatError(
            f"{path}: this {L}-layer CLT (m={m}, d={d}) takes {need / 2**30:.3g} GiB in mechscope's "
            f"masked dense form, more than this machine's {have / 2**30:.3g} GiB; not loaded"
        )


def load(path: Path) -> SparseAutoencoder:
    """The circuit-tracer CLT in the folder ``path`` as a mechscope ``clt`` / ``jumprelu_clt`` (module docstring)."""
    L = _layer_files(path)
    read = {
        name: _read_weights(path / f"{name}.safetensors", (DIGEST_KEY,), note=False)
        for i in range(L)
        for name in (f"W_enc_{i}", f"W_dec_{i}")
    }
    enc, dec = [read[f"W_enc_{i}"][0] for i in range(L)], [read[f"W_dec_{i}"][0] for i in range(L)]
    unverified = sum(DIGEST_KEY not in header for _, header in read.values())
    if unverified:
        print(
            f"mechscope: note: {unverified} of the {2 * L} files in {path} carry no tensor digest (written by another "
            "tool); their tensors are not verified",
            file=sys.stderr,
        )
    first = path / "W_enc_0.safetensors"
    if enc[0].get("W_enc_0") is None or enc[0]["W_enc_0"].ndim != 2:
        raise SAEFormatError(f"{first}: no 2-d tensor W_enc_0 [m, d]")
    m, d = enc[0]["W_enc_0"].shape
    _fits_in_memory(path, L, m, d)
    jump = [f"threshold_{i}" in e for i, e in enumerate(enc)]
    if len(set(jump)) > 1:
        raise SAEFormatError(
            f"{path}: layers {[i for i, j in enumerate(jump) if j]} have thresholds and "
            f"{[i for i, j in enumerate(jump) if not j]} do not; circuit-tracer reads all or none"
        )
    W_enc, W_dec = torch.zeros(L * d, L * m), torch.zeros(L * m, L * d)
    b_enc, b_dec, theta = torch.zeros(L * m), torch.zeros(L * d), torch.zeros(L * m)
    for i in range(L):
        fe, fd = path / f"W_enc_{i}.safetensors", path / f"W_dec_{i}.safetensors"
        known = {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}", f"threshold_{i}"}
        unknown = sorted(set(enc[i]) - known) + sorted(set(dec[i]) - {f"W_dec_{i}"})
        if unknown:
            raise SAEFormatError(
                f"{path}: layer {i} tensor(s) {', '.join(unknown)} not known to mechscope (it reads "
                f"W_enc_i, b_enc_i, b_dec_i, threshold_i, W_dec_i); not loaded"
            )
        rows, cols = slice(i * m, (i + 1) * m), slice(i * d, (i + 1) * d)
        W_enc[cols, rows] = _tensor(enc[i], f"W_enc_{i}", (m, d), fe).t()
        b_enc[rows] = _tensor(enc[i], f"b_enc_{i}", (m,), fe)
        b_dec[cols] = _tensor(enc[i], f"b_dec_{i}", (d,), fe)
        if jump[0]:
            theta[rows] = _tensor(enc[i], f"threshold_{i}", (m,), fe)
        W_dec[rows, i * d :] = _tensor(dec[i], f"W_dec_{i}", (m, L - i, d), fd).reshape(m, (L - i) * d)
    if jump[0] and bool((theta < 0).any()):
        raise SAEFormatError(
            f"{path}: {int((theta < 0).sum())} negative threshold(s) (min {float(theta.min()):.4g}): "
            "circuit-tracer keeps z·1[z > θ], negative codes included, which mechscope's JumpReLU "
            "(ReLU(z)·1[z > θ]) does not reproduce; not loaded"
        )
    cls = REGISTRY[ARCHS[jump[0]]]
    fields = {"d_in": L * d, "latents": L * m, "d_out": L * d, "layers": L, **({} if jump[0] else {"k": m})}
    config = _config(cls, lambda: cls.config_cls(**fields), path, "circuit-tracer CLT")
    state = {
        "W_enc": W_enc,
        "b_enc": b_enc,
        "W_dec": W_dec,
        "b_dec": b_dec,
        **({"threshold": theta} if jump[0] else {}),
    }
    _check_state(cls, config, state, path, "circuit-tracer CLT")
    sae = cls(config)
    sae.load_state_dict(state)
    sae.metadata = sites_of(read_config(path, "cross_layer_transcoder"), L, path)
    return sae


def save(sae: SparseAutoencoder, path: Path, metadata: dict[str, Any]) -> Path:
    """Write ``sae`` as the folder circuit-tracer's ``load_clt`` reads, with its config.yaml (module docstring)."""
    jumps = {arch: jump for jump, arch in ARCHS.items()}
    if sae.arch not in jumps:
        raise SAEFormatError(
            f"circuit-tracer CLT folders hold cross-layer transcoders ({', '.join(jumps)}); "
            f"a {sae.arch!r} dictionary has no such folder"
        )
    assert isinstance(sae, CrossLayerTranscoderSAE)  # clt, and jumprelu_clt which derives from it
    jump, L = jumps[sae.arch], sae.cfg.layers
    m, d = sae.latents // L, sae.d_in // L
    if not jump and sae.cfg.k != m:
        raise SAEFormatError(
            f"a circuit-tracer CLT has no field for k: this TopK clt (k={sae.cfg.k} < {m} latents per "
            "layer) would be read as ReLU; keep it in mechscope's layout"
        )
    if sae.d_out != sae.d_in:
        raise SAEFormatError(
            f"circuit-tracer CLTs read and write one width per layer; this {sae.arch} reads "
            f"{d} and writes {sae.d_out // L} columns per layer"
        )
    if jump and bool((sae.get_parameter("threshold") < 0).any()):
        raise SAEFormatError("a negative JumpReLU threshold would keep negative codes in circuit-tracer; not written")
    path.mkdir(parents=True, exist_ok=True)
    W_enc, W_dec = sae.W_enc.detach().float().cpu(), sae.W_dec.detach().float().cpu()
    for i in range(L):
        rows, cols = slice(i * m, (i + 1) * m), slice(i * d, (i + 1) * d)
        enc = {
            f"W_enc_{i}": W_enc[cols, rows].t(),
            f"b_enc_{i}": sae.b_enc.detach()[rows],
            f"b_dec_{i}": sae.b_dec.detach()[cols],
        }
        if jump:
            enc[f"threshold_{i}"] = sae.get_parameter("threshold").detach()[rows]
        dec = {f"W_dec_{i}": W_dec[rows, i * d :].reshape(m, L - i, d)}
        for name, tensors in ((f"W_enc_{i}", enc), (f"W_dec_{i}", dec)):
            tensors = {k: v.to(torch.float32).cpu().contiguous() for k, v in tensors.items()}
            save_safetensors(path / f"{name}.safetensors", tensors, metadata={DIGEST_KEY: tensors_digest(tensors)})
    write_config(path, {**(getattr(sae, "metadata", None) or {}), **metadata}, L, "cross_layer_transcoder")
    return path

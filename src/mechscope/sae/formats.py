"""Every on-disk dictionary format mechscope reads or writes, in one registry.

:data:`FORMATS` maps a format's name to how to recognise it, read it and (where mechscope can) write it;
:func:`mechscope.sae.io.load_sae` picks the one format whose ``detect`` accepts the path, and
``mechscope convert SRC DST --to NAME`` writes through ``save``. Adding a format is one entry here and one
module beside this one; nothing branches on a format's name.

| name          | files                                        | read | write |
|---------------|----------------------------------------------|------|-------|
| mechscope     | cfg.json (``format: mechscope-sae``) + sae.safetensors | yes | yes |
| saelens       | cfg.json + sae_weights.safetensors           | yes  | yes   |
| sparsify      | cfg.json + sae.safetensors (EleutherAI)      | yes  | yes (topk, transcoders) |
| gemmascope    | params.npz (Gemma Scope raw parameters)      | yes  | no    |
| dictlearn     | ae.pt + config.json (dictionary_learning)    | yes  | no    |
| circuittracer | a layer's .safetensors (circuit-tracer)      | yes  | yes (single-layer transcoders) |
| circuittracer-clt | W_enc_i / W_dec_i .safetensors + config.yaml (circuit-tracer) | yes | yes (ReLU and JumpReLU CLTs) |
| circuittracer-set | layer_i.safetensors + config.yaml (circuit-tracer) | yes, per layer | yes, from a folder of per-layer transcoders |

A set (several dictionaries, one per layer) is converted member by member: from a format's ``load_set``, or from a
folder whose subfolders each hold one dictionary (what ``mechscope graph --transcoders`` reads); it is written by the
target's ``save_set``, else one subfolder per member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechscope.sae import (
    circuittracer_clt,
    circuittracer_files,
    dictlearn_files,
    gemmascope_files,
    io,
    sparsify_files,
)
from mechscope.sae.base import SparseAutoencoder


@dataclass(frozen=True)
class SAEFormat:
    """One on-disk format."""

    name: str
    """Registry key, the value of ``convert --to``."""
    files: str
    """What a saved dictionary of this format looks like (for messages and docs)."""
    detect: Callable[[Path], bool]
    """True for a path (file or folder) holding this format."""
    load: Callable[[Path, float | None], SparseAutoencoder]
    """(path, scaling_factor) → the dictionary, identical codes and outputs, or :class:`SAEFormatError`."""
    save: Callable[[SparseAutoencoder, Path, dict[str, Any]], Path] | None = None
    """(dictionary, folder, metadata) → the folder written; None for a format mechscope only reads."""
    load_set: Callable[[Path], dict[str, SparseAutoencoder]] | None = None
    """For a format of several dictionaries (one per layer): path → {name: dictionary}, each with its ``metadata``."""
    save_set: Callable[[dict[str, SparseAutoencoder], Path, dict[str, Any]], Path] | None = None
    """({name: dictionary}, folder, metadata) → the folder written as one set."""


def _no_scale(
    load: Callable[[Path], SparseAutoencoder], name: str
) -> Callable[[Path, float | None], SparseAutoencoder]:
    """A loader for a format whose files say everything about the input: a scaling factor is refused."""

    def run(path: Path, scaling_factor: float | None) -> SparseAutoencoder:
        if scaling_factor is not None:
            raise io.UsageError(
                f"{path}: a {name} dictionary reads raw activations; drop the scaling factor (`scaling_factor`)"
            )
        return load(path)

    return run


FORMATS: dict[str, SAEFormat] = {
    f.name: f
    for f in (
        SAEFormat(
            "mechscope",
            f"{io.CFG} (format {io.OWN_FORMAT!r}) + {io.OWN_WEIGHTS}",
            io.is_own,
            _no_scale(io.load_own, "mechscope"),
            lambda sae, path, meta: io.save_sae(sae, path, meta),
        ),
        SAEFormat(
            "saelens",
            f"{io.CFG} + {io.SAELENS_WEIGHTS}",
            io.is_saelens,
            io.load_saelens,
            lambda sae, path, meta: io.save_sae(sae, path, meta, layout="saelens"),
        ),
        SAEFormat(
            "sparsify",
            f"cfg.json + {sparsify_files.WEIGHTS} (EleutherAI sparsify)",
            sparsify_files.detect,
            _no_scale(sparsify_files.load, "sparsify"),
            lambda sae, path, meta: sparsify_files.save(sae, path),
        ),
        SAEFormat(
            "gemmascope",
            f"{gemmascope_files.PARAMS} (Gemma Scope raw parameters)",
            gemmascope_files.detect,
            _no_scale(gemmascope_files.load, "Gemma Scope"),
        ),
        SAEFormat(
            "dictlearn",
            f"{dictlearn_files.WEIGHTS} + {dictlearn_files.CONFIG} (dictionary_learning)",
            dictlearn_files.detect,
            _no_scale(dictlearn_files.load, "dictionary_learning"),
        ),
        SAEFormat(
            "circuittracer",
            f"one safetensors per layer, or {circuittracer_files.FILE} (circuit-tracer)",
            circuittracer_files.detect,
            _no_scale(circuittracer_files.load, "circuit-tracer"),
            lambda sae, path, meta: circuittracer_files.save(sae, path),
        ),
        SAEFormat(
            "circuittracer-clt",
            "W_enc_i.safetensors + W_dec_i.safetensors per layer, config.yaml (circuit-tracer CLT)",
            circuittracer_clt.detect,
            _no_scale(circuittracer_clt.load, "circuit-tracer"),
            circuittracer_clt.save,
        ),
        SAEFormat(
            "circuittracer-set",
            "layer_i.safetensors per layer + config.yaml (circuit-tracer transcoder set)",
            circuittracer_files.detect_set,
            _no_scale(circuittracer_files.load_refused, "circuit-tracer"),
            load_set=circuittracer_files.load_set,
            save_set=circuittracer_files.save_set,
        ),
    )
}


def detect_format(path: Path) -> SAEFormat:
    """The one format whose ``detect`` accepts ``path``; :class:`SAEFormatError` naming what was looked for
    when none does (or, never expected, when several do)."""
    found = [f for f in FORMATS.values() if f.detect(path)]
    if len(found) == 1:
        return found[0]
    if found:
        raise io.SAEFormatError(
            f"{path}: looks like several formats ({', '.join(f.name for f in found)}); keep one dictionary per folder"
        )
    unsafe = sorted(p.name for p in path.iterdir() if p.suffix in io.UNSAFE) if path.is_dir() else []
    if unsafe:
        raise io.SAEFormatError(
            f"{path}: refusing to load {', '.join(unsafe)}: only safetensors weights, Gemma Scope's "
            f"{gemmascope_files.PARAMS} and dictionary_learning's {dictlearn_files.WEIGHTS} load "
            "(pickle can run code); convert them to a known format first"
        )
    missing = f"no {io.CFG}, " if path.is_dir() and not (path / io.CFG).exists() else ""
    raise io.SAEFormatError(
        f"{path}: {missing}no dictionary of a known format ("
        + "; ".join(f"{f.name}: {f.files}" for f in FORMATS.values())
        + ")"
    )


def writable() -> list[str]:
    """Names of the formats ``convert`` writes."""
    return [f.name for f in FORMATS.values() if f.save is not None or f.save_set is not None]


def load_members(path: Path) -> dict[str, SparseAutoencoder] | None:
    """The dictionaries of a set at ``path`` ({name: dictionary}): a format's set, or a folder no format reads whose
    subfolders each hold one dictionary; None for a single dictionary."""
    found = [f for f in FORMATS.values() if f.detect(path)]
    if len(found) == 1 and found[0].load_set is not None:
        return found[0].load_set(path)
    if found or not path.is_dir():
        return None
    subs = sorted(p for p in path.iterdir() if p.is_dir() and any(f.detect(p) for f in FORMATS.values()))
    return {p.name: io.load_sae(p) for p in subs} or None


def convert(src: str | Path, dst: str | Path, to: str, *, scaling_factor: float | None = None) -> tuple[str, Path]:
    """Load the dictionary at ``src`` (any readable format, a hub id included) and write it to the folder ``dst`` in
    format ``to``; returns (the source's format, the folder written). The written dictionary has the same codes and
    outputs; the source's metadata (a mechscope cfg.json's, a foreign config's sites) is carried over, beside
    ``converted_from`` and ``source_format``. A set (:func:`load_members`) is converted member by member."""
    if to not in writable():
        raise io.UsageError(f"`to`={to!r} is not a format mechscope writes; choose one of {', '.join(writable())}")
    target = FORMATS[to]
    where = io.sae_location(src)
    there = [f.name for f in FORMATS.values() if Path(dst).is_dir() and f.detect(Path(dst))]
    if there and there != [to]:
        raise io.SAEFormatError(
            f"{dst}: already holds a {there[0]} dictionary; writing a {to} one beside it would "
            "leave a folder no reader can tell apart; choose an empty folder"
        )
    members = load_members(where) if scaling_factor is None else None
    if members is not None:
        source = (
            "set"
            if not where.is_dir() or not any(f.detect(where) for f in FORMATS.values())
            else detect_format(where).name
        )
        meta = {"converted_from": str(src), "source_format": source}
        if target.save_set is not None:
            return source, target.save_set(members, Path(dst), meta)
        assert target.save is not None
        for name, sae in members.items():
            target.save(sae, Path(dst) / name, {**(getattr(sae, "metadata", None) or {}), **meta})
        return source, Path(dst)
    sae = io.load_sae(src, scaling_factor=scaling_factor)
    if target.save is None:
        raise io.SAEFormatError(
            f"{src}: one dictionary; {to} holds a set of them: convert a folder of per-layer "
            "dictionaries (one subfolder each)"
        )
    source = sae.file_format
    carried = dict(getattr(sae, "metadata", None) or {})  # a mechscope cfg.json's metadata, a foreign config's sites
    out = target.save(sae, Path(dst), {**carried, "converted_from": str(src), "source_format": source})
    return source, out

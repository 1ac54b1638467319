"""Checks a command makes before it starts its work, so that a mistake costs seconds, not a run.

- :func:`writable_folder` / :func:`writable_file`: an output path can be created and written
  (probed by creating and removing a temporary file in the nearest existing folder, which is what
  counts for root too, where permission bits say little); an empty path is refused, never read as
  the current folder;
- :func:`check_outputs`: every output flag a command was given, checked with those two before any
  model loads or training starts (the one output-path check of every command);
- :func:`check_device`: a torch device this build and machine can use;
- :func:`sae_fits_store`: an SAE's width and recorded site agree with the store it is used on.

Each raises :class:`~mechscope.errors.UsageError` (exit 2) naming the flag, the problem and the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mechscope.errors import MechscopeError, UsageError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _probe(folder: Path, flag: str, target: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"{flag} {target}: {folder} is a file, not a folder; choose another path")
    try:
        fd, name = tempfile.mkstemp(prefix=".mechscope-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UsageError(
            f"{flag} {target}: cannot write in {folder} ({err.strerror or err}); choose a writable path"
        ) from err


def _not_empty(path: str | os.PathLike, flag: str, what: str) -> Path:
    # Path("") is Path("."): an empty flag would quietly write into the current folder.
    if not os.fspath(path).strip():
        raise UsageError(
            f"{flag} is empty; give a {what} path" + (" (. for the current folder)" if what == "folder" else "")
        )
    return Path(path)


def writable_folder(path: str | os.PathLike, flag: str = "`out`") -> Path:
    """Check that ``path`` is (or can become) a folder we can write in; creates nothing. ``flag`` names it in errors."""
    path = _not_empty(path, flag, "folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder (new or existing)")
    _probe(_nearest_existing(path), flag, path)
    return path


def writable_file(path: str | os.PathLike, flag: str = "`out`") -> Path:
    """Check that the file ``path`` can be written (its folder created if missing); creates nothing. ``flag`` names
    it in errors."""
    path = _not_empty(path, flag, "file")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    _probe(_nearest_existing(path.parent), flag, path)
    return path


def check_outputs(args: argparse.Namespace, folders: Iterable[str] = (), files: Iterable[str] = ()) -> None:
    """Check every output a command was given: ``folders`` and ``files`` are the argparse ``dest`` names of
    its output flags (flag ``--report`` for ``report``). A flag left out (absent from ``args``, or None) is
    skipped; an empty one is refused. Call it first in a command's run function, before any model loads."""
    for dests, check in ((folders, writable_folder), (files, writable_file)):
        for dest in dests:
            value = getattr(args, dest, None)
            if value is not None:
                check(value, "--" + dest.replace("_", "-"))


def check_device(spec: str, flag: str = "`device`") -> None:
    """Refuse a device string torch cannot parse, or a GPU type this build or machine does not have.
    ``auto`` (pick CUDA when available) is always accepted."""
    import torch

    if spec == "auto":
        return
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"{flag} {spec!r} is not a torch device; use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cpu":
        return
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", lambda: False)()
    if not available:
        build = (
            "has no CUDA support (a CPU build)"
            if dev.type == "cuda" and torch.version.cuda is None
            else "sees no such device"
        )
        raise UsageError(f"{flag} {spec}: this torch {torch.__version__} {build}; use {flag} cpu (or auto)")
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise UsageError(f"{flag} {spec}: only {count} {dev.type} device(s) visible (0..{count - 1})")


def sae_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` of a saved SAE's cfg.json merged over its top level ({} when unreadable:
    :func:`mechscope.sae.load_sae` reports that)."""
    from mechscope.sae.io import sae_location  # a hub id names a folder in the Hugging Face cache

    try:
        cfg = json.loads((sae_location(os.fspath(folder)) / "cfg.json").read_text())
    except (OSError, ValueError, MechscopeError):
        return {}
    if not isinstance(cfg, dict):
        return {}
    meta = cfg.get("metadata")
    return {**cfg, **(meta if isinstance(meta, dict) else {})}


def sae_fits_store(
    sae: Any,
    sae_folder: str | os.PathLike,
    store: Any,
    site: str,
    force_site: bool = False,
    target_site: str | None = None,
) -> str:
    """The store's name for ``site`` after checking that ``sae`` reads it: the widths agree and, unless
    ``force_site``, the site recorded in the SAE's cfg.json (mechscope's ``metadata.site``) is the same
    site of this store. A transcoder also writes ``target_site``, whose width must be its output's.
    Returns the canonical site name."""
    name = store.site_name(site)
    if target_site is not None:
        d_out, d_target = int(sae.W_dec.shape[-1]), int(store.d(store.site_name(target_site)))
        if d_out != d_target:
            raise UsageError(
                f"the transcoder in {sae_folder} writes {d_out}-wide activations but target site {target_site} "
                f"of store {store.path} is {d_target} wide; pass the `target_site` it was trained to predict"
            )
    # W_dec [n, d] on every SAE; a transcoder reads W_enc [d_in, n] and writes d_out
    d_sae, d_store = (
        int(sae.W_enc.shape[0] if getattr(sae, "paired", False) else sae.W_dec.shape[-1]),
        int(store.d(name)),
    )
    if d_sae != d_store:
        raise UsageError(
            f"the SAE in {sae_folder} reads {d_sae}-wide activations but site {name} of store {store.path} "
            f"is {d_store} wide; use the SAE trained on this site (or a store harvested at the SAE's site)"
        )
    recorded = sae_metadata(sae_folder).get("site")
    if recorded and not force_site:
        try:
            same = store.site_name(str(recorded)) == name
        except KeyError:
            same = str(recorded) == name
        if not same:
            raise UsageError(
                f"the SAE in {sae_folder} was trained at site {recorded!r}, not {site!r}; "
                f"pass `site` {recorded} (or set `force_site` to evaluate it at {site} anyway)"
            )
    return name


def check_inputs(args: Any, names: list[str]) -> None:
    """Refuse an input flag given as an empty string (``--sae ''`` would otherwise read the current folder, and
    ``--store ''`` silently mean "no store"). ``names`` are argparse destinations; absent or None ones pass."""
    for name in names:
        if getattr(args, name, None) == "":
            raise UsageError(f"--{name.replace('_', '-')} is empty; give a path (or leave the flag out)")

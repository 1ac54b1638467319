"""One cache of the models mechscope trains itself: a key names a file (or a folder), trained once, written
atomically under a lock, and used only if its tensors still match the digest written beside them.

Where: :func:`cache_dir` — ``$MECHSCOPE_CACHE``, else ``$XDG_CACHE_HOME/mechscope``, else
``~/.cache/mechscope``. A location that is a file, cannot be read, or cannot be written when a write is
needed is refused by :class:`CacheError`, naming MECHSCOPE_CACHE.

Users: the zoo (a folder per model, :mod:`mechscope.zoo.store`), the toy models (``toy/``), the anomaly
tasks' models (``anomaly/``) and the resid-MLP of the decomposition toys (``decompose/``); each builds its
key from everything that shapes the weights plus a format number it bumps when its storage changes, so an
older cache is trained again, never misread.

Every cached safetensors file carries the digest of its tensors (:func:`mechscope.digest.tensors_digest`,
under :data:`~mechscope.digest.DIGEST_KEY`) and the key fields its writer chose (a recipe digest, a
step, …) in its header. :func:`read_tensors` is the one reader: a missing, truncated or foreign file, a
digest that does not match (a flipped bit, an edited weight, a NaN written in) or a key field of another
recipe raises :class:`CacheError` with the file and the fix.

Writers: :func:`train_once` for a single file (read it if present, else lock, train, save); for a folder
of files, :func:`locked` and :func:`new_folder` (built beside the old one, renamed into place). Under a
key's lock, the temporaries a killed writer of that key left behind are removed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from mechscope.atomic import save_safetensors
from mechscope.digest import DIGEST_KEY, tensors_digest
from mechscope.errors import MechscopeError

RETRAIN = "delete it to retrain (the next use trains it again)"
"""The fix named for a damaged file of a cache that trains on its own when its file is absent."""
LOCKS = ".locks"
"""Folder (in each area of the cache) of the lock files, one per key."""


class CacheError(MechscopeError):
    """A cached model that is damaged, foreign or of another recipe, or a cache location we cannot use."""


def _location() -> tuple[Path, str]:
    if os.environ.get("MECHSCOPE_CACHE"):
        path = Path(os.environ["MECHSCOPE_CACHE"])
        return path, f"MECHSCOPE_CACHE={path}"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "mechscope"
    return path, f"the mechscope cache {path} (MECHSCOPE_CACHE is not set)"


def cache_dir(write: bool = False) -> Path:
    """The cache folder, checked: it must be a readable folder if it exists and, with ``write``, a folder
    this process can write in (it is created then)."""
    path, where = _location()
    fix = "set MECHSCOPE_CACHE to a folder you can read and write"
    try:
        exists = path.exists()
        if exists and not path.is_dir():
            raise CacheError(f"{where} is a file, not a folder; {fix}")
        if exists and not os.access(path, os.R_OK | os.X_OK):
            raise CacheError(f"{where} is not readable; {fix}")
    except OSError as e:
        raise CacheError(f"{where} cannot be read ({e.strerror or e}); {fix}") from e
    if write:
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".mechscope-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise CacheError(f"{where} is not writable ({e.strerror or e}); {fix}") from e
    return path


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of a cache file into one line naming it and MECHSCOPE_CACHE."""
    try:
        yield
    except OSError as e:
        raise CacheError(
            f"cannot write {path} in the mechscope cache ({e.strerror or e}); "
            "set MECHSCOPE_CACHE to a folder you can write"
        ) from e


def remove_stale(path: Path) -> None:
    """Remove what a killed writer of ``path`` left: folders ``.<name>.*`` (:func:`new_folder`) and files
    ``<name>.*.tmp`` (:func:`mechscope.atomic.atomic_path`). Call it holding :func:`locked` (``path``)."""
    for stale in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*")):
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale, ignore_errors=True)
    for stale in glob.glob(os.path.join(glob.escape(str(path.parent)), f"{glob.escape(path.name)}.*.tmp")):
        with contextlib.suppress(OSError):
            os.unlink(stale)


WAITS_LOG = "MECHSCOPE_LOCK_WAITS"
"""Environment variable: a file to which every wait for a cache entry's lock appends one line, ``<seconds>\t<entry
path>\t<pid>`` (tests/conftest.py sets it and prints the waits: a test blocked while the warm cache writes the
entry it needs is wall time with an idle core)."""


def _lock_and_log_wait(f: IO[str], path: Path) -> None:
    """Take the exclusive lock on the open lock file ``f``; when another process holds it and $MECHSCOPE_LOCK_WAITS
    names a file, append how long this process waited for ``path`` to that file."""
    log = os.environ.get(WAITS_LOG)
    if not log:
        fcntl.flock(f, fcntl.LOCK_EX)
        return
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        start = time.monotonic()
    fcntl.flock(f, fcntl.LOCK_EX)
    with open(log, "a") as out:  # one short line in append mode: lines of several processes do not interleave
        out.write(f"{time.monotonic() - start:.1f}\t{path}\t{os.getpid()}\n")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the cache entry ``path`` (blocks while another process writes it); stale
    temporaries of ``path`` are removed once it is held."""
    cache_dir(write=True)
    lock = path.parent / LOCKS / f"{path.name}.lock"
    with _writing(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a")
    with f:
        _lock_and_log_wait(f, path)
        try:
            remove_stale(path)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """A fresh folder beside ``path`` that replaces it when the block ends without error (a crash leaves the
    old folder or none, never half of one). Call it holding :func:`locked` (``path``)."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        with _writing(path):
            if old.exists():
                shutil.rmtree(old)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` atomically with their digest and ``metadata`` (the key fields) in the header."""
    with _writing(path):
        save_safetensors(path, dict(tensors), metadata={**(metadata or {}), DIGEST_KEY: tensors_digest(dict(tensors))})


def read_tensors(
    path: Path, fix: str, expect: Mapping[str, str] | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, header metadata) of the cached file ``path``, refused with :class:`CacheError` (naming the
    file, then ``fix``) unless it is a readable safetensors file whose tensors match their recorded digest
    and whose metadata holds ``expect``."""
    if not path.is_file():
        raise CacheError(f"{path} is missing; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # safetensors' own errors name no file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CacheError(f"{path} is not a readable safetensors file ({first}); {fix}") from e
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:
        raise CacheError(f"{path} carries no tensor digest (written by an older mechscope or another tool); {fix}")
    got = tensors_digest(tensors)
    if got != recorded:
        raise CacheError(
            f"{path}: tensor digest mismatch (sha256 {got[:12]}…, recorded {recorded[:12]}…): "
            f"the weights changed after training; {fix}"
        )
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CacheError(f"{path} was written for another {key} ({meta.get(key)!r}, expected {want!r}); {fix}")
    return tensors, meta


def load_state(module: nn.Module, tensors: Mapping[str, Tensor], path: Path, fix: str) -> nn.Module:
    """``module`` with ``tensors`` loaded strictly (the same names and shapes as its state), in eval mode."""
    own = module.state_dict()
    unknown, missing = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
    if unknown or missing:
        raise CacheError(
            f"{path}: unknown tensors {unknown[:5]}, missing tensors {missing[:5]} for a {type(module).__name__}; {fix}"
        )
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise CacheError(
                f"{path}: tensor {k} has shape {tuple(v.shape)}, a {type(module).__name__} needs "
                f"{tuple(own[k].shape)}; {fix}"
            )
    module.load_state_dict(dict(tensors), strict=True)
    return module.eval()


def train_once(
    path: Path,
    train: Callable[[], Mapping[str, Tensor]],
    metadata: Mapping[str, str] | None = None,
    fix: str | None = None,
) -> dict[str, Tensor]:
    """The tensors cached at ``path`` (checked by :func:`read_tensors` against their digest and ``metadata``),
    or, when there are none, ``train()``'s, trained once under the lock and saved with ``metadata``."""
    fix = fix or RETRAIN
    cache_dir()
    if path.exists():  # reading needs no lock (files appear by atomic rename), so a read-only cache works
        return read_tensors(path, fix, metadata)[0]
    with locked(path):
        if path.exists():  # another process trained it while we waited
            return read_tensors(path, fix, metadata)[0]
        tensors = dict(train())
        save_tensors(path, tensors, metadata)
    return tensors

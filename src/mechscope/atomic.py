"""Atomic writes: a crash at any moment leaves either the old file or the new one, never half of one.

Write to a temporary file in the same folder, fsync it, ``os.replace`` it over the target, and fsync
the folder so the rename itself is durable. Every file mechscope writes that a crash could corrupt
(store shards and manifests, checkpoints, caches, results, plots, reports) goes through :func:`atomic_path`.

A write that fails (a full disk, a read-only or unwritable folder, a folder where the file should go)
raises :class:`WriteError`, one line naming the path and the fix, whatever the writer inside the block
was: commands check their outputs before they start (:mod:`mechscope.preflight`), and this covers what
can still go wrong later. A run killed mid-write leaves ``<name>.XXXXXXXX.tmp`` beside ``<name>``;
:func:`remove_stale_temporaries` clears those of a command's own outputs when it starts again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from mechscope import faults
from mechscope.errors import MechscopeError

_FIXES = {
    errno.ENOSPC: "free space on that disk or choose another path",
    errno.EDQUOT: "free space or choose another path",
    errno.EROFS: "choose a writable path",
    errno.EACCES: "choose a writable path",
    errno.EPERM: "choose a writable path",
    errno.EISDIR: "move that folder away or choose another path",
    errno.ENOTDIR: "part of it is a file; choose another path",
    errno.EEXIST: "a file is in the way; choose another path",
}


class WriteError(MechscopeError):
    """A file could not be written (full disk, read-only or unwritable folder, a folder in the way).
    ``path`` is the file that was being written, ``errno`` the operating system's error number."""

    def __init__(self, path: str | os.PathLike, err: OSError) -> None:
        self.path, self.errno = Path(path), err.errno
        fix = _FIXES.get(err.errno, "choose another path") if err.errno is not None else "choose another path"
        super().__init__(f"cannot write {self.path}: {err.strerror or err}; {fix}")


@contextlib.contextmanager
def _named(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError inside the block into a :class:`WriteError` naming ``path``."""
    try:
        yield
    except OSError as err:
        raise WriteError(path, err) from err


def ensure_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``, failing as a :class:`WriteError` naming it."""
    path = Path(path)
    with _named(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; after the block it becomes ``path`` (or is removed on error).
    An OSError anywhere (creating the folder, writing inside the block, syncing, renaming) is a :class:`WriteError`."""
    path = Path(path)
    with _named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with _named(path):
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            faults.point(f"atomic:{path.name}")  # a kill here leaves the old file and a stray *.tmp
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(OSError):  # a failed clean-up must not hide why the write failed
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` leaves when a run is killed mid-write: files
    ``NAME.XXXXXXXX.tmp`` in ``folder`` for each output file name in ``names``, nothing else. A command
    calls it on its output folder when it starts (a concurrent run writing the same files would lose its
    temporaries, but two runs writing one folder already overwrite each other). Returns what was removed."""
    folder, names = Path(folder), list(names)
    if not folder.is_dir() or not names:
        return []
    ours = re.compile("(?:" + "|".join(re.escape(n) for n in names) + r")\.[a-z0-9_]{8}\.tmp")  # mkstemp's 8 characters
    removed = [p for p in sorted(folder.iterdir()) if ours.fullmatch(p.name) and p.is_file()]
    for p in removed:
        with _named(p):
            p.unlink()
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def save_safetensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` made atomic (tensors are made contiguous and moved to the CPU)."""
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as err:  # its I/O errors carry the OS error only in the text: "... (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from err

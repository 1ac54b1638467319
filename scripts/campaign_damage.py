"""Damage for the campaign (scripts/campaign.py): corrupt a file in place, make a path unreadable or a folder
read-only, fill a disk. Every function works on a throwaway copy the campaign made; nothing here knows a command.

Safetensors layout used below: 8 bytes little-endian header length n, then n bytes of JSON (tensor name →
dtype, shape, data_offsets; optional ``__metadata__``), then the tensor bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

SAFETENSORS_DAMAGE = (
    "truncated",
    "header-flipped",
    "weight-exponent-bit",
    "weight-low-mantissa-bit",
    "metadata-key-renamed",
)
JSON_DAMAGE = ("truncated", "first-byte-flipped", "key-renamed", "number-changed")


def _header(data: bytes) -> tuple[int, dict]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8 : 8 + n])


def _rename_in_place(data: bytearray, start: int, stop: int, name: str) -> bool:
    """Change the last letter of the JSON key ``name`` found in data[start:stop], keeping every length."""
    needle = json.dumps(name).encode()
    at = data.find(needle, start, stop)
    if at < 0 or len(name) == 0:
        return False
    last = at + len(needle) - 2  # the key's last character (before the closing quote)
    data[last] = ord("Q") if data[last] != ord("Q") else ord("R")
    return True


def damage_safetensors(path: Path, how: str) -> str:
    """Damage ``path`` (a safetensors file) one way; returns what was done, in words."""
    data = bytearray(path.read_bytes())
    n, header = _header(data)
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return f"cut to {len(data) // 2} of {len(data)} bytes"
    if how == "header-flipped":
        data[8] ^= 0xFF  # the header's opening brace: the JSON no longer parses
        path.write_bytes(bytes(data))
        return "first header byte flipped"
    if how in ("weight-exponent-bit", "weight-low-mantissa-bit"):
        floats = {k: v for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"}
        if not floats:
            raise ValueError(f"{path} holds no float32 tensor")
        name = max(floats, key=lambda k: floats[k]["data_offsets"][1] - floats[k]["data_offsets"][0])
        lo, hi = floats[name]["data_offsets"]
        elem = ((hi - lo) // 4) // 2  # the middle element of the largest float32 tensor
        at = 8 + n + lo + 4 * elem
        if how == "weight-exponent-bit":
            data[at + 3] ^= 0x40  # bit 30: the exponent's top bit (a value × 2^±128)
        else:
            data[at] ^= 0x01  # bit 0: the lowest mantissa bit (one ulp)
        path.write_bytes(bytes(data))
        return f"{name}[{elem}]: bit {30 if how == 'weight-exponent-bit' else 0} flipped"
    if how == "metadata-key-renamed":
        meta = header.get("__metadata__") or {}
        key = next(iter(sorted(meta)), None)
        if key is not None and _rename_in_place(data, 8, 8 + n, key):
            path.write_bytes(bytes(data))
            return f"metadata key {key!r} renamed"
        name = next(k for k in sorted(header) if k != "__metadata__")
        _rename_in_place(data, 8, 8 + n, name)
        path.write_bytes(bytes(data))
        return f"no metadata: tensor {name!r} renamed"
    raise ValueError(how)


def damage_json(path: Path, how: str) -> str:
    """Damage ``path`` (a JSON file) one way; returns what was done, in words."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return f"cut to {len(data) // 2} of {len(data)} bytes"
    if how == "first-byte-flipped":
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        return "first byte flipped"
    obj = json.loads(data)
    if how == "key-renamed":
        key = sorted(obj)[0] if isinstance(obj, dict) and obj else None
        if key is None or not _rename_in_place(data, 0, len(data), key):
            raise ValueError(f"{path}: no key to rename")
        path.write_bytes(bytes(data))
        return f"key {key!r} renamed"
    if how == "number-changed":
        m = re.search(rb":\s*(-?)([1-9])", bytes(data))  # the first number that starts with a non-zero digit
        if m is None:
            raise ValueError(f"{path}: no number to change")
        at = m.start(2)
        data[at] = ord("2") if data[at] != ord("2") else ord("3")
        path.write_bytes(bytes(data))
        return f"one digit changed at byte {at}"
    raise ValueError(how)


def damage(path: Path, how: str) -> str:
    return damage_safetensors(path, how) if path.suffix == ".safetensors" else damage_json(path, how)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def cache_with(base: Path, dst: Path, own: tuple[str, ...] = (), leave_out: tuple[str, ...] = ()) -> Path:
    """A cache folder ``dst`` mirroring ``base``: real folders holding links to its files, except the relative
    paths in ``own`` (copied, so they can be damaged) and ``leave_out`` (absent, so they are rebuilt). A command
    that retrains or rewrites something then replaces links in ``dst``; nothing reaches ``base``."""
    own_p, out_p = {Path(p) for p in own}, {Path(p) for p in leave_out}

    def fill(src: Path, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for entry in sorted(src.iterdir()):
            rel = entry.relative_to(base)
            if rel in out_p:
                continue
            if rel in own_p:
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry.resolve(), out / entry.name)
            elif entry.is_dir():
                fill(entry, out / entry.name)
            else:
                (out / entry.name).symlink_to(entry.resolve())

    fill(base, dst)
    return dst


def unreadable(path: Path) -> Path:
    """Mode 000 (a folder can then be neither listed nor entered)."""
    os.chmod(path, 0)
    return path


def read_only(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def restore_modes(root: Path) -> None:
    """Give back every permission under ``root`` so that it can be deleted."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


def permissions_bite() -> bool:
    """Whether mode bits stop this process (false for root with CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "probe"
        p.write_text("x")
        os.chmod(p, 0)
        try:
            p.read_text()
            return False
        except PermissionError:
            return True
        finally:
            os.chmod(p, 0o600)


def mount_full_disk(folder: Path, folders: list[str]) -> str | None:
    """Mount a 256 KiB tmpfs on ``folder``, create ``folders`` in it, then fill it to the last byte (ENOSPC
    for any further write). Returns None, or why it could not (not root, no private mount namespace)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,nr_inodes=4096", "campaign-full", str(folder)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"mount failed: {proc.stderr.strip() or proc.returncode}"
    for name in folders:
        (folder / name).mkdir(parents=True, exist_ok=True)
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return None


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)

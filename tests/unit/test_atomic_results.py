"""Every result file a crash could leave half-written goes through mechscope.atomic (issue 8, item 12), and a
write that fails there is one line naming the file (issue 24, items 9 and 15).

A scan of the package's source for plain writes: ``Path.write_text``/``write_bytes``, ``open(.., "w")`` and
matplotlib's ``savefig``. The allowed exceptions are listed with their reason; a new plain write fails here
until it is made atomic or listed. Then the failures of :mod:`mechscope.atomic` itself: a full disk, a
read-only or unwritable folder, a folder in the way, and the temporaries a killed run leaves."""

from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import mechscope
from mechscope import atomic
from mechscope.atomic import (
    WriteError,
    atomic_write_bytes,
    atomic_write_json,
    ensure_folder,
    remove_stale_temporaries,
    save_safetensors,
)
from mechscope.errors import MechscopeError

ALLOWED = {
    (
        "jsonout.py",
        "open",
    ): "JSON-lines logs are appended row by row; cut_rows() cuts them back on resume and drops a torn last line",
    ("cache.py", "open"): "an empty lock file opened for flock, never written",
    ("report/figures.py", "savefig"): "png_bytes renders into memory; save_png writes those bytes atomically",
    ("graph/memory.py", "open"): "writes '5' to /proc/self/clear_refs (resets the peak-RSS counter), not a file",
}


def plain_writes(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes", "savefig"):
            found.append((f.attr, node.lineno))
        elif isinstance(f, ast.Name) and f.id == "open":
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if any(set(m) & set("wax") for m in modes):
                found.append(("open", node.lineno))
    return found


def test_result_files_are_written_atomically():
    root = Path(mechscope.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "atomic.py":
            continue
        offenders += [f"{rel}:{line} {call}" for call, line in plain_writes(path) if (rel, call) not in ALLOWED]
    assert not offenders, "plain writes (use mechscope.atomic): " + ", ".join(offenders)


FAILURES = [errno.ENOSPC, errno.EROFS, errno.EACCES]


def _fail_writes_under(monkeypatch, root: Path, code: int) -> None:
    """Make every ``Path.write_bytes`` below ``root`` fail with ``code``, as a full or read-only disk would."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if str(self).startswith(str(root)):
            raise OSError(code, os.strerror(code))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("code", FAILURES)
def test_a_failed_write_is_one_line_naming_the_file_and_leaves_the_old_one(tmp_path, monkeypatch, code):
    target = tmp_path / "out" / "result.json"
    atomic_write_json(target, {"old": 1})
    _fail_writes_under(monkeypatch, tmp_path, code)
    with pytest.raises(WriteError) as info:
        atomic_write_json(target, {"new": 2})
    msg = str(info.value)
    assert isinstance(info.value, MechscopeError) and info.value.errno == code and info.value.path == target
    assert msg.startswith(f"cannot write {target}: {os.strerror(code)}; ") and "\n" not in msg
    assert ("free space" in msg) == (code == errno.ENOSPC)
    assert target.read_text() == '{\n "old": 1\n}\n' and sorted(p.name for p in target.parent.iterdir()) == [
        "result.json"
    ]


def test_every_step_of_a_write_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(WriteError, match=r"cannot write .*a-file/sub: .*part of it is a file"):
        ensure_folder(tmp_path / "a-file" / "sub")
    with pytest.raises(WriteError, match=r"cannot write .*a-file/x\.json: "):
        atomic_write_json(tmp_path / "a-file" / "x.json", {})
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(WriteError, match=r"cannot write .*dir\.json: Is a directory; move that folder away"):
        atomic_write_bytes(tmp_path / "dir.json", b"{}")
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(WriteError, match=r"cannot write .*late\.bin: Input/output error; choose another path"):
        atomic_write_bytes(tmp_path / "late.bin", b"x")
    monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "dir.json"]  # no temporaries left


def test_safetensors_io_errors_become_write_errors(tmp_path, monkeypatch):
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(atomic, "save_file", full)
    with pytest.raises(WriteError, match=r"cannot write .*w\.safetensors: No space left on device; free space"):
        save_safetensors(tmp_path / "w.safetensors", {"w": torch.zeros(3)})
    monkeypatch.setattr(
        atomic, "save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError("some other failure"))
    )
    with pytest.raises(SafetensorError, match="some other failure"):  # not an I/O error: our bug, left as it is
        save_safetensors(tmp_path / "w.safetensors", {"w": torch.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_our_outputs_are_removed_and_nothing_else(tmp_path):
    ours = ["llc.json.k2j4_x9a.tmp", "report.html.abcdefgh.tmp"]
    others = [
        "llc.json",
        "llc.json.tmp",
        "other.json.abcdefgh.tmp",
        "llc.json.abcdefgh.tmp.keep",
        "llcxjson.abcdefgh.tmp",
        "llc.json.abc.tmp",
        "notes.txt",
    ]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / "report.html.12345678.tmp").mkdir()  # a folder is never ours
    removed = remove_stale_temporaries(tmp_path, ("llc.json", "report.html"))
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + ["report.html.12345678.tmp"])
    assert remove_stale_temporaries(tmp_path / "missing", ("llc.json",)) == []
    assert remove_stale_temporaries(tmp_path, ()) == []

"""Every result file a crash could leave half-written goes through mechscope.atomic (issue 8, item 12).

A scan of the package's source for plain writes: ``Path.write_text``/``write_bytes`` and ``open(.., "w")``.
The allowed exceptions are listed with their reason; a new plain write fails here until it is made
atomic or listed."""

from __future__ import annotations

import ast
from pathlib import Path

import mechscope

ALLOWED = {
    ("sae/trainer.py", "open"): "train_log.jsonl is appended line by line; resume() cuts it back and drops a torn last line",
    ("cache.py", "open"): "an empty lock file opened for flock, never written",
}


def plain_writes(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes"):
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

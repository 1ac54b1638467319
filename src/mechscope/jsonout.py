"""``--json`` for the core commands: one JSON object on stdout, the human-readable lines on stderr.

A command run with ``--json`` keeps printing its progress lines, but into stderr
(:func:`human_lines_to_stderr`), so that stdout carries exactly one JSON object (:func:`print_json`) which a
script can read with ``json.loads(proc.stdout)``. Non-finite floats become ``null`` (strict JSON has no NaN;
a missing metric is never a made-up number), paths become strings, tensors and NumPy scalars become numbers.

Training logs are JSON-lines files written the same way, one row per line as training goes (:func:`append_row`);
a resumed run first cuts its log back to the checkpoint's step (:func:`cut_rows`), so that the steps it replays
are logged once and a killed-and-resumed run ends with the log of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from mechscope.errors import MechscopeError


def add_json_flag(parser: Any) -> None:
    """The one ``--json`` flag every result-printing command takes."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the results on stdout (progress lines go to stderr)",
    )


@contextlib.contextmanager
def human_lines_to_stderr(enabled: bool) -> Iterator[TextIO]:
    """Inside, ``print`` goes to stderr when ``enabled``; yields the real stdout for :func:`print_json`."""
    real = sys.stdout
    if not enabled:
        yield real
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def plain(obj: Any) -> Any:
    """``obj`` with every value JSON can hold as itself: NaN/inf → None, Path → str, tensors/NumPy → lists/numbers."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return plain(obj.tolist())
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def print_json(obj: dict[str, Any], stream: TextIO | None = None) -> None:
    """One line, one object, on ``stream`` (default stdout)."""
    print(json.dumps(plain(obj), allow_nan=False), file=stream or sys.stdout, flush=True)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the JSON-lines log ``path`` (created with its folder) as one strict-JSON line. The file
    is closed before returning, so the line survives a kill of the process that comes after."""
    from mechscope.atomic import WriteError

    line = json.dumps(plain(row), allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line)
    except OSError as err:  # a full disk fails in write() or close(), where the OS names no file
        raise WriteError(path, err) from err


def cut_rows(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Keep only the rows of the log ``path`` whose ``step`` is ≤ ``last_step`` (−1: none), rewriting it
    atomically when that drops any; a last line cut short by a kill is dropped too. Returns the rows kept
    (none when there is no log)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    kept, rows = [], []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # the line a kill cut short
            raise MechscopeError(
                f"{path} line {number} is not JSON; delete the log (it is rewritten) or fix that line"
            ) from err
        if int(row.get("step", 0)) <= last_step:
            kept.append(raw)
            rows.append(row)
    if len(kept) != len(lines):
        from mechscope.atomic import atomic_write_bytes  # torch-free import of this module for the light commands

        atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())
    return rows

"""``--json`` for the core commands: one JSON object on stdout, the human-readable lines on stderr.

A command run with ``--json`` keeps printing its progress lines, but into stderr
(:func:`human_lines_to_stderr`), so that stdout carries exactly one JSON object (:func:`print_json`) which a
script can read with ``json.loads(proc.stdout)``. Non-finite floats become ``null`` (strict JSON has no NaN;
a missing metric is never a made-up number), paths become strings, tensors and NumPy scalars become numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, TextIO


def add_json_flag(parser: Any) -> None:
    """The one ``--json`` flag every result-printing command takes."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the results on stdout (progress lines go to stderr)")


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

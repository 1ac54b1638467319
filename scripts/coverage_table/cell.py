"""One cell of the coverage table (:class:`Cell`) and the ``mechscope`` command run in this process (:func:`cli`)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any


def flags(settings: dict[str, Any]) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


@dataclass
class Cell:
    """One (row, method) result."""

    status: str
    """ok | refused | FAIL | blocked."""
    text: str
    """The sanity number (ok), the one-line message (refused, FAIL) or what is missing (blocked)."""
    seconds: float = 0.0
    """Wall-clock seconds the cell took."""
    cpu_seconds: float = 0.0
    """CPU seconds of this process during the cell (the machine may be shared)."""

    def __str__(self) -> str:
        return f"{self.status}: {self.text}" if self.text else self.status


# --- running one cell ----------------------------------------------------------------------------------------------


class _NonZeroExit(RuntimeError):
    pass


def cli(command: str, *argv: Any) -> dict[str, Any]:
    """``mechscope COMMAND ARGV --json`` in this process; its JSON. A MechscopeError propagates (the command line
    would print it as its one-line error); a rejected flag or a non-zero exit code is :class:`_NonZeroExit`."""
    from mechscope.cli import command_parser

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = command_parser(command).parse_args([str(a) for a in argv] + ["--json"])
            rc = int(args._run(args) or 0)
        except SystemExit as e:  # argparse refused a flag
            rc = e.code if isinstance(e.code, int) else 2
    if rc:
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        raise _NonZeroExit(f"mechscope {command} exited {rc}: {last}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def names_model(message: str, names: tuple[str, ...]) -> bool:
    """Whether ``message`` names one of ``names`` as a word of its own (not inside another word)."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message, re.IGNORECASE) for n in names)

"""Small, always-present material for tests and examples (no downloads)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL_TEXT = str(STDLIB / "email" / "*.py")
"""A small text source on every machine: the sources of the standard library's email package."""

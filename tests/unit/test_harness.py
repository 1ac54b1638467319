"""The tests' machinery lives in tests/harness.py, outside the package: an installed mechscope ships none of it."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_ships_no_test_machinery():
    assert importlib.util.find_spec("mechscope.testing") is None
    importers = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "tests" or n.startswith(("tests.", "mechscope.testing")) for n in names):
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []


@pytest.mark.slow  # the server imports every command module and transformers' Llama (tens of seconds)
def test_the_fork_server_runs_from_any_folder(tmp_path):
    from tests.harness import run_cli_many

    done = run_cli_many([["--help"], ["no-such-command"]], cwd=str(tmp_path))
    assert [d.returncode for d in done] == [0, 2]
    assert "usage: mechscope" in done[0].stdout
    assert "invalid choice: 'no-such-command'" in done[1].stderr

"""docs/quickstart.md runs as written: every ```python block, in order, in one namespace, in a fresh folder.

Each block is compiled with its place in the file as the file name, so a failure's traceback points at the
block and line of the page. The "Lines you write" the page states for each block are checked against the block.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
BUDGET_S = 300  # the whole page: 130 s measured on a 2-core CPU shared with other jobs; far above it means a cell grew

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[int, str]]:
    """(line number of the block's first code line, its code) of every python block."""
    text = QUICKSTART.read_text()
    return [(text[: m.start(1)].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_page_has_the_methods_and_counts_its_lines():
    text = QUICKSTART.read_text()
    found = blocks()
    assert len(found) >= 12
    stated = [int(n) for n in re.findall(r"Lines you write: (\d+)", text)]
    code_lines = [
        len([ln for ln in code.splitlines() if ln.strip()]) for _, code in found[1:]
    ]  # block 0 is the stand-in model
    assert stated == code_lines, "a 'Lines you write' count disagrees with its block"
    table = [int(n) for n in re.findall(r"^\|[^|\n]+\| (\d+) \|$", text, re.M)]
    assert table == stated, "the table of lines per method disagrees with the sections"


@pytest.mark.slow
def test_every_code_block_runs_in_order(tmp_path, monkeypatch, smollm2):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "quickstart"}
    t0 = time.perf_counter()
    for line, code in blocks():
        exec(compile("\n" * (line - 1) + code, str(QUICKSTART), "exec"), namespace)
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "frontier" / "frontier.json").is_file()
    assert time.perf_counter() - t0 < BUDGET_S

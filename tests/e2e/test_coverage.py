"""The coverage table (issue 23): every method, end to end, on a tiny random model of every family, plus a
TransformerLens-layout stub and a plain ``nn.Module``. A cell is ok, refused by name, blocked, or FAIL
(scripts/coverage.py says which is which); a FAIL is a defect.

Today's crashes are listed in :data:`KNOWN_CRASHES`. A FAIL cell outside the list fails the suite; so does a
listed cell that no longer fails (remove it from the list), and a docs/coverage.md whose cells no longer say
what the run says (re-run ``scripts/coverage.py``). The table takes about two and a half CPU-minutes, hence
``slow``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from mechscope.errors import MechscopeError, UsageError

ROOT = Path(__file__).resolve().parents[2]

KNOWN_CRASHES: dict[tuple[str, str], str] = {}
"""(row, method) → why it crashes today. Strict: a listed cell that stops failing fails the test."""


def _script():
    """scripts/coverage.py as a module (the table's one implementation)."""
    name = "mechscope_coverage_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "coverage.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return _script().run_table(tmp_path_factory.mktemp("coverage"), workers=2)  # one thread each: both cores


def _cells(table, status: str) -> dict[tuple[str, str], str]:
    return {(r, m): c.text for r, cells in table.items() for m, c in cells.items() if c.status == status}


@pytest.mark.slow
def test_every_cell_is_ok_refused_or_a_known_crash(table):
    new = {k: v for k, v in _cells(table, "FAIL").items() if k not in KNOWN_CRASHES}
    assert not new, "cells that crash (a refusal must name the family):\n" + "\n".join(
        f"  {r}/{m}: {t}" for (r, m), t in new.items()
    )


@pytest.mark.slow
def test_known_crashes_still_crash(table):
    fixed = {k: str(table[k[0]][k[1]]) for k in KNOWN_CRASHES if table[k[0]][k[1]].status != "FAIL"}
    assert not fixed, (
        "known crashes that no longer crash: remove them from KNOWN_CRASHES and re-run scripts/coverage.py:\n"
        + "\n".join(f"  {r}/{m}: {t}" for (r, m), t in fixed.items())
    )


@pytest.mark.slow
def test_every_family_runs_the_core_path(table):
    """The Hugging Face families all get through harvest, train, evaluate, report, frontier, scrub, graph, detect and llc."""
    core = ("sites", "harvest", "train", "evaluate", "report", "frontier", "scrub", "graph", "detect", "llc")
    broken = {(r, m): str(table[r][m]) for r in _script().HF_ROWS for m in core if table[r][m].status != "ok"}
    assert not broken, broken


@pytest.mark.slow
def test_explain_and_probe_run_on_every_family_and_the_doc_has_their_columns(table):
    """Issue 28: explain (the row's own model writing and judging) and probe (latents and the site's activations)
    finish on every Hugging Face family but the listed crashes; the two rows outside the family table are refused or
    blocked, never ok on a guess."""
    cov = _script()
    header = next(ln for ln in (ROOT / "docs" / "coverage.md").read_text().splitlines() if ln.startswith("| model"))
    assert {"explain", "probe"} <= {c.strip() for c in header.split("|")}
    broken = {
        (r, m): str(table[r][m])
        for r in cov.HF_ROWS
        for m in ("explain", "probe")
        if table[r][m].status != "ok" and (r, m) not in KNOWN_CRASHES and (r, m) not in SHORT_POSITIONS
    }
    assert not broken, broken
    # the tiny GPT-2's 64 learned positions cannot hold the explainer's prompt: refused by name, not an IndexError
    for r, m in SHORT_POSITIONS:
        assert table[r][m].status == "refused" and "learned table of 64" in table[r][m].text, table[r][m]
    outside = {(r, m): table[r][m].status for r in ("transformer_lens", "nn_module") for m in ("explain", "probe")}
    assert set(outside.values()) <= {"refused", "blocked"}, outside
    scored = [
        r for r in cov.HF_ROWS if table[r]["explain"].status == "ok" and " 0 scored" not in table[r]["explain"].text
    ]
    assert scored, "no row's explanations were scored: the judge path never ran"


SHORT_POSITIONS = {("gpt2", "explain")}
"""Cells refused because the row's tiny model (64 learned positions) is shorter than the explainer's prompt."""


def _doc_statuses(text: str) -> dict[tuple[str, str], str]:
    """(row label, method) → status, read back from docs/coverage.md's table."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in re.split(r"(?<!\\)\|", lines[0])[1:-1]]
    out = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
        for method, cell in zip(header[1:], cells[1:]):
            out[(cells[0], method)] = cell.split(":", 1)[0]
    return out


@pytest.mark.slow
def test_docs_coverage_md_says_what_the_run_says(table):
    cov = _script()
    doc = _doc_statuses((ROOT / "docs" / "coverage.md").read_text())
    run = {(cov.ROWS[r], m): s for (r, m), s in cov.statuses(table).items()}
    changed = {k: f"{doc.get(k)} in the doc, {v} now" for k, v in run.items() if doc.get(k) != v}
    assert not changed, f"docs/coverage.md is stale (re-run scripts/coverage.py): {changed}"


# --- the harness's own rules (fast) ---------------------------------------------------------------------------------


def _row(cov, tmp_path):
    import torch
    from torch import nn

    row = cov.Row("gpt2", tmp_path, tokenizer=None, contexts=torch.zeros(1, 1, dtype=torch.long))
    row.model = nn.Identity()
    return row


@pytest.mark.parametrize(
    ("raise_", "status"),
    [
        (UsageError("attribution graphs cannot yet freeze 'gpt2' models; use smollm2"), "refused"),
        (MechscopeError("GPT-2 is not supported here"), "refused"),
        (UsageError("--targets matches no Linear layer; choose among: transformer.wte"), "FAIL"),  # names no model
        (UsageError("no gpt2x layer"), "FAIL"),  # a longer word is not the name
        (AttributeError("'Block' object has no attribute 'heads'"), "FAIL"),
    ],
)
def test_a_cell_is_refused_only_when_the_error_names_the_model(tmp_path, monkeypatch, raise_, status):
    cov = _script()

    def method(row):
        raise raise_

    monkeypatch.setitem(cov.CELLS, "sites", method)
    cell = cov.run_cell(_row(cov, tmp_path), "sites", {})
    assert cell.status == status and str(raise_) in cell.text


def test_a_cell_whose_input_did_not_finish_is_blocked_by_the_first_failure(tmp_path):
    cov = _script()
    row = _row(cov, tmp_path)
    results = {"harvest": cov.Cell("FAIL", "TypeError: x")}
    results["train"] = cov.run_cell(row, "train", results)
    assert str(results["train"]) == "blocked: needs harvest (FAIL)"
    assert str(cov.run_cell(row, "evaluate", results)) == "blocked: needs harvest (FAIL)"


def test_markdown_escapes_pipes_and_reads_back(tmp_path):
    cov = _script()
    table = {
        "gpt2": {"sites": cov.Cell("ok", "err 1e-9"), "graph": cov.Cell("refused", "a | b names gpt2")},
        "nn_module": {"sites": cov.Cell("FAIL", "TypeError: x"), "graph": cov.Cell("blocked", "needs harvest (FAIL)")},
    }
    doc = _doc_statuses(cov.markdown(table, 1.0, 1.0))
    assert doc == {
        ("GPT-2", "sites"): "ok",
        ("GPT-2", "graph"): "refused",
        ("plain nn.Module", "sites"): "FAIL",
        ("plain nn.Module", "graph"): "blocked",
    }

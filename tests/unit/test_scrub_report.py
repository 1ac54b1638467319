"""``--report``: each scrub adds its row to the report's table; a sidecar we cannot read is refused by name."""

from __future__ import annotations

import pytest

from mechscope.errors import UsageError
from mechscope.scrub.report import add_to_report, read_rows, sidecar
from tests.helpers_report import assert_offline


def row(name: str, scrubbed: float, rock: float = 0.6) -> dict:
    return {
        "hypothesis": name,
        "model": "zoo:parens",
        "description": f"claims {name}",
        "loss_clean": 0.01,
        "loss_scrubbed": scrubbed,
        "loss_scrubbed_ci": [scrubbed - 0.01, scrubbed + 0.01],
        "loss_baseline": 1.0,
        "loss_rock": rock,
        "recovered": (1.0 - scrubbed) / 0.99,
        "recovered_ci": [0.0, 1.0],
        "worse_than_rock": scrubbed > rock,
        "verdict": f"verdict of {name}",
    }


def test_rows_accumulate_and_a_rerun_replaces_its_row(tmp_path):
    path = tmp_path / "r.html"
    add_to_report(path, row("right.yaml", 0.05))
    add_to_report(path, row("wrong.yaml", 0.8))
    add_to_report(path, row("right.yaml", 0.04))
    rows = read_rows(path)
    assert [(r["hypothesis"], r["loss_scrubbed"]) for r in rows] == [("wrong.yaml", 0.8), ("right.yaml", 0.04)]
    page = path.read_text()
    assert page.count("<tr") == 3 and "verdict of wrong.yaml" in page and "claims right.yaml" in page
    assert "0.0400 [0.0300, 0.0500]" in page and "0.0500 [" not in page
    assert "<tr class='bad'>" in page  # the wrong one is worse than the rock
    assert_offline(page)


def test_a_foreign_sidecar_is_refused(tmp_path):
    path = tmp_path / "r.html"
    sidecar(path).write_text('{"not": "rows"}')
    with pytest.raises(UsageError, match=r"r.html.scrub.json is not a mechscope scrub table"):
        add_to_report(path, row("a.yaml", 0.1))

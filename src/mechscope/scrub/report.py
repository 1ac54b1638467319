"""``mechscope scrub … --report PATH``: the scrubbing table in a single-file HTML report.

Each run adds its row to the report at PATH: the rows live in a sidecar ``PATH.scrub.json`` (ours, read
strictly: a file we cannot read is a one-line error naming it, never silently replaced) and the page is
rewritten from all of them, so a correct and a wrong hypothesis scrubbed one after the other end up side by
side. A row with the same hypothesis file and model replaces the old one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechscope.atomic import atomic_write_json
from mechscope.errors import UsageError
from mechscope.evals.metrics import percent

COLUMNS = ("hypothesis", "model", "clean", "scrubbed (95% CI)", "baseline", "rock", "recovered (95% CI)", "verdict")
KEYS = (
    "hypothesis",
    "model",
    "loss_clean",
    "loss_scrubbed",
    "loss_scrubbed_ci",
    "loss_baseline",
    "loss_rock",
    "recovered",
    "recovered_ci",
    "worse_than_rock",
    "verdict",
)


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".scrub.json")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows already in the report at ``path`` ([] when there is none yet)."""
    side = sidecar(path)
    if not side.exists():
        return []
    try:
        rows = json.loads(side.read_text())
        ok = isinstance(rows, list) and all(isinstance(r, dict) and set(KEYS) <= set(r) for r in rows)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise UsageError(f"{side} is not a mechscope scrub table; move it away or pick another `report` path")
    return rows


def _cells(r: dict[str, Any]) -> tuple:
    from mechscope.report.markup import Markup, e

    lo, hi = r["loss_scrubbed_ci"]
    rlo, rhi = r["recovered_ci"]
    return (
        Markup(f"<span title='{e(r.get('description', ''))}'>{e(r['hypothesis'])}</span>"),
        r["model"],
        f"{r['loss_clean']:.4f}",
        f"{r['loss_scrubbed']:.4f} [{lo:.4f}, {hi:.4f}]",
        f"{r['loss_baseline']:.4f}",
        f"{r['loss_rock']:.4f}",
        f"{percent(r['recovered'])} [{percent(rlo)}, {percent(rhi)}]",
        r["verdict"],
    )


def table_html(rows: list[dict[str, Any]]) -> str:
    """The scrubbing table: one row per (hypothesis, model); rows worse than the rock get the class ``bad``."""
    from mechscope.report.markup import table

    return table(COLUMNS, [_cells(r) for r in rows], row_classes=["bad" if r["worse_than_rock"] else "" for r in rows])


def add_to_report(path: str | Path, row: dict[str, Any]) -> Path:
    """Add ``row`` (the ``--json`` object of one scrub) to the report at ``path`` and rewrite the page."""
    from mechscope.report.html import Section, write_report
    from mechscope.report.markup import e

    rows = [r for r in read_rows(path) if (r["hypothesis"], r["model"]) != (row["hypothesis"], row["model"])] + [row]
    atomic_write_json(sidecar(path), rows)
    text = (
        "Losses in nats on the same references. clean: the model untouched; scrubbed: under the hypothesis, mean "
        "over resampling seeds with a 95% t-interval; baseline: the output resampled unconditionally; rock: a constant "
        "predictor fit on the training targets; recovered = (baseline − scrubbed) / (baseline − clean). A scrubbed loss "
        "above the rock explains nothing, whatever it recovers."
    )
    descriptions = "".join(f"<li><b>{e(r['hypothesis'])}</b>: {e(r.get('description', ''))}</li>" for r in rows)
    return write_report(
        path,
        title="mechscope causal scrubbing",
        sections=[
            Section("Scrubbed losses", text=text, html=table_html(rows)),
            Section("What each hypothesis claims", html=f"<ul>{descriptions}</ul>"),
        ],
    )

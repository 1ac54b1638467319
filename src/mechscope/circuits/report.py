"""The HTML report of one circuit: configuration, faithfulness table, agreement, cost, and the SVG graph."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechscope.circuits.svg import circuit_svg
from mechscope.evals.metrics import percent, percent_interval
from mechscope.report.html import Section, write_report
from mechscope.report.markup import table


def write_circuit_report(path: str | Path, result: dict[str, Any], config: Mapping[str, Any]) -> Path:
    f = result["faithfulness"]
    rows = [
        (k, f"{f[f'loss_{k}']:.4f}  (95% CI {f[f'loss_{k}_ci'][0]:.4f}–{f[f'loss_{k}_ci'][1]:.4f})")
        for k in ("full", "circuit", "empty", "rock")
    ]
    rows.append(
        (
            "recovered",
            f"{percent(f['recovered'])}  (95% CI {percent_interval(*f['recovered_ci'])})"
            + (f"; n/a: {f['recovered_note']}" if f.get("recovered_note") else ""),
        )
    )
    rows.append(("worse than the rock", str(f["worse_than_rock"])))
    ag = result.get("agreement_with_exact")
    ag_rows = (
        [
            ("budget (exact patches)", str(ag["budget"])),
            ("Spearman", f"{ag['spearman']:.3f}"),
            ("AUC of the top exact effects", f"{ag['auc_top']:.3f}"),
        ]
        if ag
        else [("exact method", "—")]
    )
    c = result["cost"]
    cost = [("forwards", str(c["forwards"])), ("backwards", str(c["backwards"])), ("wall time", f"{c['wall_s']:.2f} s")]
    scores = table(
        None,
        ((s.get("name") or s["writer"] + " → " + s["reader"], f"{s['effect']:+.4g}") for s in result["scores"][:40]),
        classes=("", "num"),
    )
    sections = [
        Section(
            "Circuit",
            text=f"{result['method']} on {result['task']}: {len(result['nodes'])} nodes, {len(result['edges'])} edges. "
            "Edge width ∝ |effect|; hover for names and scores.",
            html=circuit_svg(result),
        ),
        Section(f"Faithfulness ({f['ablation']} ablation, loss in nats)", html=table(None, rows)),
        Section("Agreement with exact patching", html=table(None, ag_rows)),
        Section("Cost", html=table(None, cost)),
        Section("Scores (first 40)", html=scores),
    ]
    return write_report(
        path, title=f"circuit: {result['method']} on {result['task']}", config=dict(config), sections=sections
    )

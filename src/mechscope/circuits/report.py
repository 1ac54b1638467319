"""The HTML report of one circuit: configuration, faithfulness table, agreement, cost, and the SVG graph."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechscope.circuits.svg import circuit_svg
from mechscope.evals.metrics import percent, percent_interval
from mechscope.report.html import Section, write_report

e = html.escape


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in rows) + "</table>"


def write_circuit_report(path: str | Path, result: dict[str, Any], config: Mapping[str, Any]) -> Path:
    f = result["faithfulness"]
    rows = [(k, f"{f[f'loss_{k}']:.4f}  (95% CI {f[f'loss_{k}_ci'][0]:.4f}–{f[f'loss_{k}_ci'][1]:.4f})")
            for k in ("full", "circuit", "empty", "rock")]
    rows.append(("recovered", f"{percent(f['recovered'])}  (95% CI {percent_interval(*f['recovered_ci'])})"
                 + (f"; n/a: {f['recovered_note']}" if f.get("recovered_note") else "")))
    rows.append(("worse than the rock", str(f["worse_than_rock"])))
    ag = result.get("agreement_with_exact")
    ag_rows = [("budget (exact patches)", str(ag["budget"])), ("Spearman", f"{ag['spearman']:.3f}"),
               ("AUC of the top exact effects", f"{ag['auc_top']:.3f}")] if ag else [("exact method", "—")]
    c = result["cost"]
    cost = [("forwards", str(c["forwards"])), ("backwards", str(c["backwards"])), ("wall time", f"{c['wall_s']:.2f} s")]
    scores = "".join(f"<tr><td>{e(s.get('name') or s['writer'] + ' → ' + s['reader'])}</td><td>{s['effect']:+.4g}</td></tr>"
                     for s in result["scores"][:40])
    sections = [
        Section("Circuit", text=f"{result['method']} on {result['task']}: {len(result['nodes'])} nodes, {len(result['edges'])} edges. "
                "Edge width ∝ |effect|; hover for names and scores.", html=circuit_svg(result)),
        Section(f"Faithfulness ({f['ablation']} ablation, loss in nats)", html=_table(rows)),
        Section("Agreement with exact patching", html=_table(ag_rows)),
        Section("Cost", html=_table(cost)),
        Section("Scores (first 40)", html=f"<table>{scores}</table>"),
    ]
    return write_report(path, title=f"circuit: {result['method']} on {result['task']}", config=dict(config), sections=sections)

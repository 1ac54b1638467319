"""The detection report: the detectors × benchmarks table with intervals, then per benchmark the ROC curves of
every detector and each detector's score histograms (built on :mod:`mechscope.report`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mechscope.anomaly.evaluate import DetectResult
from mechscope.anomaly.plots import histogram, histogram_grid, roc
from mechscope.atomic import atomic_write_bytes
from mechscope.report.figures import png_bytes
from mechscope.report.html import Section, write_report
from mechscope.report.markup import table


def table_html(results: Sequence[DetectResult]) -> str:
    """An HTML table: one row per (benchmark, detector) with AUROC, its interval, AP and the best site."""
    rows = []
    for r in results:
        s = r.summary
        tag = (
            "supervised ceiling"
            if s["supervised_ceiling"]
            else ("sees untrusted batch" if s["sees_untrusted_batch"] else "")
        )
        rows.append(
            (
                s["benchmark"],
                s["detector"],
                f"{s['auroc']:.3f}",
                f"[{s['auroc_ci'][0]:.3f}, {s['auroc_ci'][1]:.3f}]",
                f"{s['ap']:.3f}",
                f"{s['best_site']} ({s['best_site_auroc']:.3f})",
                tag,
            )
        )
    return table(("benchmark", "detector", "AUROC", "95% CI", "AP", "best site (AUROC)", "note"), rows)


def write_detect_report(path: str | Path, results: Sequence[DetectResult]) -> Path:
    benchmarks = list(dict.fromkeys(r.benchmark for r in results))
    sections = [
        Section(
            "Detectors × benchmarks",
            text="AUROC and AP of anomalous vs clean test inputs; 95% stratified "
            "bootstrap intervals. Probe rows are a supervised ceiling, not a detector.",
            html=table_html(results),
        )
    ]
    for t in benchmarks:
        rs = [r for r in results if r.benchmark == t]
        info = "; ".join(
            f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in rs[0].summary["benchmark_info"].items()
        )
        figs = [("ROC curves", roc(rs))] + [(f"{r.detector}: score histograms", histogram(r)) for r in rs]
        sections.append(Section(f"Benchmark {t}", text=info, figures=tuple(figs)))
    return write_report(path, title="mechscope anomaly detection", sections=sections)


def save_plots(folder: str | Path, results: Sequence[DetectResult], dpi: int = 80) -> list[Path]:
    """Per benchmark: ``anomaly-roc-BENCHMARK.png`` (every detector's ROC) and ``anomaly-hist-BENCHMARK.png`` (a histogram grid)."""
    folder = Path(folder)
    out = []
    for t in dict.fromkeys(r.benchmark for r in results):
        rs = [r for r in results if r.benchmark == t]
        for kind, fig in (("roc", roc(rs)), ("hist", histogram_grid(rs))):
            path = folder / f"anomaly-{kind}-{t}.png"
            atomic_write_bytes(path, png_bytes(fig, dpi))
            out.append(path)
    return out

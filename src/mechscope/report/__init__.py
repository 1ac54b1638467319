"""Single-file HTML reports: metrics beside their baselines, plots, distributions, latent dashboards.

- :func:`mechscope.report.html.write_report` writes the page from results already computed;
- :func:`mechscope.report.build.build_report` computes them from a dictionary, held-out rows and a model;
- :func:`mechscope.report.from_store.report_from_store` takes those from an activation store and a loaded model;
- :mod:`mechscope.cli.report` is ``mechscope report`` (loads an SAE, a store and a model, then builds).
"""

from mechscope.report.build import ReportConfig, ReportOutcome, build_report, frontier_points
from mechscope.report.html import Section, write_report

__all__ = ["ReportConfig", "ReportOutcome", "Section", "build_report", "frontier_points", "write_report"]

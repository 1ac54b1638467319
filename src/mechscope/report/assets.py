"""The report's stylesheets and scripts: package files under ``report/static/``, read once and inlined into
every page (a report is one file that opens offline).

- ``report.css`` / ``report.js``: the page, tables, figures, latent cards and the latent search (a query of
  digits, optionally after ``#``, matches that latent index; other text matches a card's contexts; the query
  lives in the URL fragment as ``#q=<query>``, so a filtered view can be linked);
- ``graph.css`` / ``graph.js``: the graph drawing of :mod:`mechscope.report.graph_svg` (click a node: its edges
  stand out and its card shows).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

STATIC = ("report.css", "graph.css", "report.js", "graph.js")
"""Every static file, in the order it is inlined."""


@cache
def static_text(name: str) -> str:
    """The text of ``report/static/<name>`` (found through importlib.resources, so it works from a wheel)."""
    return resources.files("mechscope.report").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def css() -> str:
    """Every stylesheet, concatenated."""
    return "\n".join(static_text(n) for n in STATIC if n.endswith(".css"))


def js() -> str:
    """Every script, concatenated (each one an IIFE that does nothing on a page without its elements)."""
    return "\n".join(static_text(n) for n in STATIC if n.endswith(".js"))

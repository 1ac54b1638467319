"""The small pieces every report's HTML is made of: escaping, visible token text, and the one table builder.

Every HTML table mechscope writes comes from :func:`table`; a cell is escaped unless the caller marks it as
:class:`Markup` (HTML it built itself from escaped parts).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

e = html.escape


class Markup(str):
    """Trusted HTML: a table cell or card part written as is (only for markup the caller built and escaped)."""


Cell = str | int | float | None
"""A table cell: text (escaped unless :class:`Markup`), a number (formatted, right-aligned) or None (empty)."""


def cell_text(v: Cell, fmt: str = "{:.4g}") -> str:
    """The HTML of one cell's content: Markup as is, text escaped, bools as words, ints with thousands
    separators, floats through ``fmt`` (NaN as "n/a"), None as nothing."""
    if isinstance(v, Markup):
        return str(v)
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else e(fmt.format(v))
    return e(str(v))


def _attr(classes: str) -> str:
    return f" class='{e(classes)}'" if classes else ""


def table(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[Cell]],
    *,
    fmt: str = "{:.4g}",
    classes: Sequence[str] = (),
    row_headers: bool = False,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML ``<table>``: ``header`` (escaped) as the first row of ``<th>`` (None: no header row), then one
    ``<tr>`` per row of ``rows``.

    Cells go through :func:`cell_text` (``fmt`` formats floats); numbers get the class ``num``. ``classes``: a
    class per column (e.g. "num", "note"; "" for none), added to every cell of that column. ``row_headers``: the
    first cell of each row is a ``<th>`` (a table of name → value). ``row_classes``: a class per row ("" for none)."""
    head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" if header is not None else ""
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, v in enumerate(row):
            cls = " ".join(
                x
                for x in (
                    "num" if isinstance(v, (int, float)) and not isinstance(v, bool) else "",
                    classes[c] if c < len(classes) else "",
                )
                if x
            )
            tag = "th" if row_headers and c == 0 else "td"
            cells.append(f"<{tag}{_attr(cls)}>{cell_text(v, fmt)}</{tag}>")
        cls = row_classes[r] if row_classes is not None and r < len(row_classes) else ""
        body.append(f"<tr{_attr(cls)}>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def tok(t: str) -> str:
    """Token text made visible and escaped: newlines and tabs as symbols, other control characters as U+2400 pictures."""
    return e("".join(_VISIBLE.get(ch, chr(0x2400 + ord(ch)) if ord(ch) < 32 else ch) for ch in t))

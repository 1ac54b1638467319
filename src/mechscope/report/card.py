"""The one latent card: what a reader needs to judge one latent (or one subcomponent, or one graph node).

A card shows, each part only when given: a title and badge, a line of statistics, the |activation| histogram,
the tokens whose logits it raises and lowers most, a block of the caller's own markup (e.g. a graph node's
edges) and its top contexts, the marked token between the text before and after it. The SAE report, the
attribution graph's node cards and decompose's subcomponent dashboards all draw their cards here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.report.markup import e, tok


@dataclass(frozen=True)
class CardContext:
    """One top-activating context: the value, then the text before, the marked token and the text after."""

    value: float
    before: str
    token: str = ""
    """The marked token (empty: the whole context is ``before``, nothing is marked)."""
    after: str = ""
    title: str = ""
    """Hover text of the line (e.g. where in the data it is)."""


@dataclass(frozen=True)
class LatentCard:
    """The parts of one card; an empty or None part is left out."""

    anchor: str
    """The card element's id."""
    title: str
    badge: str = ""
    """A short tag beside the title (e.g. "random pick")."""
    stats: str = ""
    """One line of plain text under the title."""
    explanation: tuple[str, str] = ("", "")
    """(sentence, its scores): the latent's explanation and one line of its scores, shown under the statistics
    (``mechscope explain``); empty: not shown."""
    hist: tuple[tuple[float, ...], tuple[int, ...]] | None = None
    """(edges, counts) of the |activation| histogram (len(edges) = len(counts) + 1); None: no histogram."""
    logits: tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]] | None = None
    """(raises, lowers): (token, effect) pairs; None: not shown (``logits_note`` says why, if anything)."""
    logits_note: str = ""
    extra: str = ""
    """Markup the caller built itself, shown after the statistics (e.g. tables of a graph node's edges)."""
    contexts: tuple[CardContext, ...] | None = None
    """Top contexts, strongest first; None: not computed (``contexts_note`` says why)."""
    contexts_title: str = ""
    contexts_note: str = ""
    search_text: str = ""
    """Text the report's latent search matches (lower-cased here)."""
    data_latent: int | None = None
    """The latent index the search matches a query of digits against."""
    css_class: str = "latent"


def hist_svg(edges: tuple[float, ...], counts: tuple[int, ...], w: int = 190, h: int = 60) -> str:
    """Bars of ``counts`` over log-spaced ``edges`` (hover: the bin and its count), the range under them."""
    if not counts:
        return f"<svg class='hist' width='{w}' height='{h}'></svg>"
    top = max(counts)
    bw = w / len(counts)
    bars = "".join(
        f"<rect x='{i * bw:.1f}' y='{h - 12 - (h - 14) * c / top:.1f}' width='{max(bw - 0.6, 0.6):.1f}' "
        f"height='{(h - 14) * c / top:.1f}'><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    return (
        f"<svg class='hist' width='{w}' height='{h}' role='img' aria-label='activation histogram'>{bars}"
        f"<text x='0' y='{h - 1}'>{edges[0]:.2g}</text><text x='{w}' y='{h - 1}' text-anchor='end'>{edges[-1]:.2g}</text>"
        f"<text x='{w / 2}' y='{h - 1}' text-anchor='middle'>|act| (log bins)</text></svg>"
    )


def _tokens(pairs: tuple[tuple[str, float], ...]) -> str:
    return " ".join(f"<span class='tok' title='{v:+.3f}'>{tok(t)}</span>" for t, v in pairs)


def _context(c: CardContext) -> str:
    title = f" title='{e(c.title)}'" if c.title else ""
    mark = f"<mark>{tok(c.token)}</mark>" if c.token else ""
    return (
        f"<div class='ctx'{title}><span class='v'>{c.value:.3g}</span><span class='dim'>{tok(c.before)}</span>"
        f"{mark}<span class='dim'>{tok(c.after)}</span></div>"
    )


def latent_card(c: LatentCard) -> str:
    """The card's HTML: a ``<div class=css_class id=anchor>``."""
    badge = f"<span class='badge'>{e(c.badge)}</span>" if c.badge else ""
    stats = f"<div class='stats'>{e(c.stats)}</div>" if c.stats else ""
    text, scores = c.explanation
    if text:
        stats += (
            f"<div class='expl'>“{e(text)}”" + (f" <span class='dim'>{e(scores)}</span>" if scores else "") + "</div>"
        )
    logits = ""
    if c.logits is not None:
        up, down = c.logits
        logits = (
            f"<div class='up'><b>raises</b> {_tokens(up)}</div><div class='down'><b>lowers</b> {_tokens(down)}</div>"
        )
    elif c.logits_note:
        logits = f"<div class='note'>{e(c.logits_note)}</div>"
    row = ""
    if c.hist is not None or logits:
        row = (
            f"<div class='row'>{hist_svg(*c.hist) if c.hist is not None else ''}"
            f"<div class='logits'>{logits}</div></div>"
        )
    ctxs = ""
    if c.contexts is not None:
        lines = "".join(_context(x) for x in c.contexts) or "<div class='note'>never fired on the held-out rows</div>"
        ctxs = (f"<b>{e(c.contexts_title)}</b>" if c.contexts_title else "") + f"<div class='ctxs'>{lines}</div>"
    elif c.contexts_note:
        ctxs = f"<div class='note'>{e(c.contexts_note)}</div>"
    data = (f" data-latent='{c.data_latent}'" if c.data_latent is not None else "") + (
        f" data-text='{e(c.search_text.lower())}'" if c.search_text else ""
    )
    return (
        f"<div class='{e(c.css_class)}' id='{e(c.anchor)}'{data}><h3>{e(c.title)}{badge}</h3>"
        f"{stats}{c.extra}{row}{ctxs}</div>"
    )

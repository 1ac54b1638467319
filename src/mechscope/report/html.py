"""Write one self-contained HTML report: inline CSS and JS, figures as base64 PNG, no network to view.

Sections, in order: configuration; metrics (reconstruction, then losses beside every baseline and the
verdict against the rock); plots; activation distributions; any extra sections another module adds
(e.g. the sparse-coding frontier); latent dashboards with a search box.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechscope.atomic import atomic_write_bytes
from mechscope.evals.distributions import FAMILIES, DistributionReport, plot_fits
from mechscope.evals.splice import SpliceResult
from mechscope.report.assets import css, js
from mechscope.report.card import CardContext, LatentCard, latent_card
from mechscope.report.figures import FigureLike, data_uri
from mechscope.report.latents import LatentDashboard
from mechscope.report.markup import Cell, Markup, e, table


@dataclass(frozen=True)
class Section:
    """An extra section: a title, plain text, figures with captions, and optionally trusted HTML."""

    title: str
    text: str = ""
    """Plain text shown under the title (escaped)."""
    figures: tuple[tuple[str, FigureLike], ...] = ()
    """(caption, figure) pairs; a figure is a matplotlib Figure, PNG bytes, or a PNG file's path."""
    html: str = ""
    """An HTML fragment written as is: only for markup the caller built itself."""


# Name, key in ReconstructionStats.results(), formula shown beside it.
_RECON_ROWS = (
    ("FVU", "fvu", "Σ‖x − x̂‖² / Σ‖x − x̄‖² (centred, float64)"),
    ("explained variance", "explained_variance", "1 − FVU"),
    ("MSE", "mse", "Σ‖x − x̂‖² / (B·d)"),
    ("L0", "l0", "mean #{i : code_i ≠ 0} per row"),
    ("L1", "l1", "mean Σ|code_i| per row"),
    ("dead fraction", "dead_fraction", "latents that never fired on these rows"),
    ("dense fraction", "dense_fraction", "latents firing on > 10% of rows"),
    ("cosine", "cosine", "mean cos(x, x̂)"),
    ("norm ratio", "norm_ratio", "mean ‖x̂‖/‖x‖ (< 1: shrinkage)"),
    ("rows", "rows", "held-out rows evaluated"),
)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _config_html(config: Mapping[str, Any]) -> str:
    return table(
        None,
        ((k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in _flatten(config)),
        row_headers=True,
    )


def _reconstruction_html(rec: Mapping[str, float]) -> str:
    rows = (
        (name, int(rec[key]) if key == "rows" else float(rec[key]), formula)
        for name, key, formula in _RECON_ROWS
        if key in rec
    )
    return "<h3>Reconstruction</h3>" + table(
        ("metric", "value", "formula"), rows, fmt="{:.4f}", classes=("", "", "note"), row_headers=True
    )


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}%"


def _splice_html(r: SpliceResult) -> str:
    unit = "token" if r.task == "lm" else "example"

    def loss(name: str, value: float) -> str:
        se = r.stderr.get(name, math.nan)
        return ("n/a" if math.isnan(value) else f"{value:.4f}") + ("" if math.isnan(se) else f" ± {se:.4f}")

    rows = [
        ("clean", loss("clean", r.clean_loss), 0.0, "—", "the model untouched"),
        (
            "spliced",
            loss("spliced", r.spliced_loss),
            r.kl_spliced,
            "—",
            "site activation replaced by the reconstruction",
        ),
        (
            "zero-ablated",
            loss("zero", r.zero_loss),
            r.kl_zero,
            _pct(r.recovered_vs_zero),
            "site activation replaced by 0",
        ),
        (
            "mean-ablated",
            loss("mean", r.mean_loss),
            r.kl_mean,
            _pct(r.recovered_vs_mean),
            f"site activation replaced by its mean (from {r.mean_source})",
        ),
        (
            "rock",
            loss("rock", r.rock_loss),
            math.nan,
            _pct(r.recovered_vs_rock),
            f"best constant model, fit on training data: {r.rock_name}",
        ),
    ]
    body = table(
        ("model", "loss", "KL to clean", "loss recovered vs this", "what"),
        rows,
        fmt="{:.4f}",
        classes=("", "num", "", "num", "note"),
        row_headers=True,
    )
    bad = r.worse_than_rock or r.clean_loss >= r.rock_loss
    return (
        f"<h3>Loss with the reconstruction spliced in at <code>{e(r.site)}</code></h3>"
        f"<p class='note'>{r.n_predictions:,} predictions from {r.n_examples:,} held-out examples; losses in nats per {unit}. "
        "Loss recovered vs a baseline = (L_baseline − L_spliced) / (L_baseline − L_clean). "
        "KL = mean KL(p_clean ‖ p_variant) per prediction. ± is one standard error, clustered by example "
        f"(spliced − clean: {r.spliced_loss - r.clean_loss:.4f} ± {r.stderr.get('spliced_minus_clean', math.nan):.4f}).</p>"
        + body
        + f"<div class='verdict{' bad' if bad else ''}' id='verdict'>{e(r.verdict())}</div>"
        + "".join(f"<p class='note'>{e(w)}</p>" for w in r.warnings())
    )


def _figures_html(figs: Sequence[tuple[str, FigureLike]]) -> str:
    items = "".join(
        f"<figure><img alt='{e(cap)}' src='{data_uri(fig)}'><figcaption>{e(cap)}</figcaption></figure>"
        for cap, fig in figs
    )
    return f"<div class='figs'>{items}</div>"


def _distributions_html(rep: DistributionReport) -> str:
    fams = list(FAMILIES)
    head = (
        "kind",
        "index",
        "mean",
        "var",
        "skew",
        "excess kurtosis",
        "bimodality",
        "best (BIC)",
        *(f"ℓ {f}" for f in fams),
    )
    body: list[tuple[Cell, ...]] = []
    for s in rep.stats:
        lls = {f.family: f.loglik for f in s.fits}
        body.append(
            (
                s.kind,
                s.index,
                *(float(v) for v in (s.mean, s.var, s.skew, s.excess_kurtosis, s.bimodality)),
                Markup(f"<b>{e(s.best)}</b>"),
                *(Markup("n/a" if math.isnan(v) else f"{v:.1f}") for v in (lls.get(f, math.nan) for f in fams)),
            )
        )
    lines = "".join(f"<li>{e(line)}</li>" for line in rep.summary_lines())
    return (
        f"<ul class='note'>{lines}</ul>"
        + _figures_html(
            [
                (
                    f"Histograms (log density) with maximum-likelihood fits; the best family by BIC is drawn thick. "
                    f"Latent directions are {rep.latent_direction} directions"
                    + (f" of {rep.latent_choice}." if rep.latent_choice else "."),
                    plot_fits(rep),
                )
            ]
        )
        + "<p class='note'>Bimodality b = (skew² + 1) / (excess kurtosis + 3(n−1)²/((n−2)(n−3))); b > 5/9 hints at two modes. "
        "ℓ is the total log-likelihood of the fit.</p>"
        + table(head, body, fmt="{:.3g}", classes=("",) * 8 + ("num",) * len(fams))
    )


def _dashboard_card(d: LatentDashboard, group: str = "", explanation: tuple[str, str] = ("", "")) -> LatentCard:
    """An SAE latent's card: statistics, its explanation if given, histogram, logit effects and top held-out
    contexts."""
    return LatentCard(
        anchor=f"latent-{d.index}",
        title=f"latent {d.index}",
        badge=group,
        data_latent=d.index,
        stats=f"fires on {100 * d.density:.3g}% of held-out rows · mean when firing {d.mean_when_fired:.3g} · max {d.max_value:.3g}",
        hist=(d.hist_edges, d.hist_counts),
        explanation=explanation,
        logits=(d.logits_up, d.logits_down) if d.logits_up else None,
        logits_note="logit effects not computed (no unembedding of this width given)",
        contexts=tuple(
            CardContext(
                c.value,
                "".join(c.before),
                c.token,
                "".join(c.after),
                f"context {c.context}, position {c.position}, activation {c.value:.4g}",
            )
            for c in d.contexts
        ),
        search_text="\n".join([explanation[0], *("".join(c.before) + c.token + "".join(c.after) for c in d.contexts)]),
    )


def write_report(
    path: str | Path,
    *,
    title: str = "mechscope report",
    config: Mapping[str, Any] | None = None,
    reconstruction: Mapping[str, float] | None = None,
    splice: SpliceResult | None = None,
    figures: Sequence[tuple[str, FigureLike]] = (),
    distributions: DistributionReport | None = None,
    sections: Sequence[Section] = (),
    dashboards: Sequence[LatentDashboard] = (),
    groups: Mapping[int, str] | None = None,
    explanations: Mapping[int, tuple[str, str]] | None = None,
) -> Path:
    """Write the report to ``path`` (parents created; atomically, a failed write is one line naming it) and return it.

    ``reconstruction``: :meth:`ReconstructionStats.results`; ``figures``: (caption, figure) for the plots
    section; ``groups``: latent index → a badge such as "most active" or "random pick"; ``explanations``: latent
    index → (explanation, a line of its scores) shown on its card."""
    path = Path(path)
    parts: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    if config:
        parts.append(("config", "Configuration", _config_html(config)))
    metrics = (_reconstruction_html(reconstruction) if reconstruction else "") + (
        _splice_html(splice) if splice else ""
    )
    if metrics:
        parts.append(("metrics", "Metrics and baselines", metrics))
    if figures:
        parts.append(("plots", "Plots", _figures_html(figures)))
    if distributions is not None:
        parts.append(("distributions", "Activation distributions", _distributions_html(distributions)))
    for i, s in enumerate(sections):
        body = (
            (f"<p class='note'>{e(s.text)}</p>" if s.text else "")
            + s.html
            + (_figures_html(s.figures) if s.figures else "")
        )
        parts.append((f"section-{i}", s.title, body))
    if dashboards:
        cards = "".join(
            latent_card(
                _dashboard_card(d, (groups or {}).get(d.index, ""), (explanations or {}).get(d.index, ("", "")))
            )
            for d in dashboards
        )
        search = (
            "<div class='search'><input id='latent-search' type='search' placeholder='latent index (e.g. 12) or token text' "
            "aria-label='search latents'><span class='count' id='latent-count'></span></div>"
            "<p class='note'>Top-activating held-out tokens are marked; the activation is at the left of each line. "
            "“raises/lowers”: tokens with the largest and smallest W_dec[i]·W_U[t] (unembedding only, no final norm). "
            "Search by latent index (“12” or “#12”) or by any text in the contexts; the query is kept in the URL as #q=….</p>"
        )
        parts.append(
            ("latents", f"Latent dashboards ({len(dashboards)})", search + f"<div class='latents'>{cards}</div>")
        )

    nav = "".join(f"<a href='#{a}'>{e(h)}</a>" for a, h, _ in parts)
    body = "".join(f"<section id='{a}'><h2>{e(h)}</h2>{b}</section>" for a, h, b in parts)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
        f"<style>{css()}</style></head><body>"
        f"<header><h1>{e(title)}</h1><div class='sub'>written {stamp} by mechscope · one self-contained file</div></header>"
        f"<nav>{nav}</nav><main>{body}</main><script>{js()}</script></body></html>"
    )
    atomic_write_bytes(path, page.encode("utf-8"))
    return path

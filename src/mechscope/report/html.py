"""Write one self-contained HTML report: inline CSS and JS, figures as base64 PNG, no network to view.

Sections, in order: configuration; metrics (reconstruction, then losses beside every baseline and the
verdict against the rock); plots; activation distributions; any extra sections another module adds
(e.g. the sparse-coding frontier); latent dashboards with a search box.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechscope.atomic import atomic_write_bytes
from mechscope.evals.distributions import FAMILIES, DistributionReport, plot_fits
from mechscope.evals.splice import SpliceResult
from mechscope.report.assets import CSS, JS
from mechscope.report.figures import FigureLike, data_uri
from mechscope.report.latents import LatentDashboard

e = html.escape


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


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else fmt.format(v)
    if isinstance(v, int):
        return f"{v:,}"
    return e(str(v))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _config_html(config: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
                   for k, v in _flatten(config))
    return f"<table>{rows}</table>"


def _reconstruction_html(rec: Mapping[str, float]) -> str:
    rows = "".join(f"<tr><th>{name}</th><td class='num'>{_num(int(rec[key]) if key == 'rows' else rec[key])}</td>"
                   f"<td class='note'>{e(formula)}</td></tr>"
                   for name, key, formula in _RECON_ROWS if key in rec)
    return f"<h3>Reconstruction</h3><table><tr><th>metric</th><th>value</th><th>formula</th></tr>{rows}</table>"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}%"


def _splice_html(r: SpliceResult) -> str:
    unit = "token" if r.task == "lm" else "example"
    def loss(name: str, value: float) -> str:
        se = r.stderr.get(name, math.nan)
        return _num(value) + ("" if math.isnan(se) else f" ± {se:.4f}")

    rows = [
        ("clean", loss("clean", r.clean_loss), 0.0, "—", "the model untouched"),
        ("spliced", loss("spliced", r.spliced_loss), r.kl_spliced, "—", "site activation replaced by the reconstruction"),
        ("zero-ablated", loss("zero", r.zero_loss), r.kl_zero, _pct(r.recovered_vs_zero), "site activation replaced by 0"),
        ("mean-ablated", loss("mean", r.mean_loss), r.kl_mean, _pct(r.recovered_vs_mean), f"site activation replaced by its mean (from {r.mean_source})"),
        ("rock", loss("rock", r.rock_loss), math.nan, _pct(r.recovered_vs_rock), f"best constant model, fit on training data: {r.rock_name}"),
    ]
    body = "".join(f"<tr><th>{e(n)}</th><td class='num'>{l}</td><td class='num'>{_num(k)}</td>"
                   f"<td class='num'>{e(rec)}</td><td class='note'>{e(what)}</td></tr>" for n, l, k, rec, what in rows)
    bad = r.worse_than_rock or r.clean_loss >= r.rock_loss
    return (f"<h3>Loss with the reconstruction spliced in at <code>{e(r.site)}</code></h3>"
            f"<p class='note'>{r.n_predictions:,} predictions from {r.n_examples:,} held-out examples; losses in nats per {unit}. "
            "Loss recovered vs a baseline = (L_baseline − L_spliced) / (L_baseline − L_clean). "
            "KL = mean KL(p_clean ‖ p_variant) per prediction. ± is one standard error, clustered by example "
            f"(spliced − clean: {r.spliced_loss - r.clean_loss:.4f} ± {r.stderr.get('spliced_minus_clean', math.nan):.4f}).</p>"
            f"<table><tr><th>model</th><th>loss</th><th>KL to clean</th><th>loss recovered vs this</th><th>what</th></tr>{body}</table>"
            f"<div class='verdict{' bad' if bad else ''}' id='verdict'>{e(r.verdict())}</div>"
            + "".join(f"<p class='note'>{e(w)}</p>" for w in r.warnings()))


def _figures_html(figs: Sequence[tuple[str, FigureLike]]) -> str:
    items = "".join(f"<figure><img alt='{e(cap)}' src='{data_uri(fig)}'><figcaption>{e(cap)}</figcaption></figure>"
                    for cap, fig in figs)
    return f"<div class='figs'>{items}</div>"


def _distributions_html(rep: DistributionReport) -> str:
    fams = list(FAMILIES)
    head = ("<tr><th>kind</th><th>index</th><th>mean</th><th>var</th><th>skew</th><th>excess kurtosis</th>"
            "<th>bimodality</th><th>best (BIC)</th>" + "".join(f"<th>ℓ {f}</th>" for f in fams) + "</tr>")
    body = []
    for s in rep.stats:
        lls = {f.family: f.loglik for f in s.fits}
        body.append(f"<tr><td>{s.kind}</td><td class='num'>{s.index}</td>" + "".join(
            f"<td class='num'>{_num(v, '{:.3g}')}</td>" for v in (s.mean, s.var, s.skew, s.excess_kurtosis, s.bimodality))
            + f"<td><b>{e(s.best)}</b></td>" + "".join(f"<td class='num'>{_num(lls.get(f, math.nan), '{:.1f}')}</td>" for f in fams)
            + "</tr>")
    lines = "".join(f"<li>{e(line)}</li>" for line in rep.summary_lines())
    return (f"<ul class='note'>{lines}</ul>"
            + _figures_html([(f"Histograms (log density) with maximum-likelihood fits; the best family by BIC is drawn thick. "
                              f"Latent directions are {rep.latent_direction} directions"
                              + (f" of {rep.latent_choice}." if rep.latent_choice else "."), plot_fits(rep))])
            + "<p class='note'>Bimodality b = (skew² + 1) / (excess kurtosis + 3(n−1)²/((n−2)(n−3))); b > 5/9 hints at two modes. "
              "ℓ is the total log-likelihood of the fit.</p>"
            + f"<table>{head}{''.join(body)}</table>")


def _hist_svg(d: LatentDashboard, w: int = 190, h: int = 60) -> str:
    if not d.hist_counts:
        return "<svg class='hist' width='190' height='60'></svg>"
    top = max(d.hist_counts)
    bw = w / len(d.hist_counts)
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{h - 12 - (h - 14) * c / top:.1f}' width='{max(bw - 0.6, 0.6):.1f}' "
                   f"height='{(h - 14) * c / top:.1f}'><title>{d.hist_edges[i]:.3g}–{d.hist_edges[i + 1]:.3g}: {c}</title></rect>"
                   for i, c in enumerate(d.hist_counts))
    lo, hi = d.hist_edges[0], d.hist_edges[-1]
    return (f"<svg class='hist' width='{w}' height='{h}' role='img' aria-label='activation histogram'>{bars}"
            f"<text x='0' y='{h - 1}'>{lo:.2g}</text><text x='{w}' y='{h - 1}' text-anchor='end'>{hi:.2g}</text>"
            f"<text x='{w / 2}' y='{h - 1}' text-anchor='middle'>|act| (log bins)</text></svg>")


_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def _tok(t: str) -> str:
    """Token text made visible: newlines and tabs as symbols, other control characters as U+2400 pictures."""
    return e("".join(_VISIBLE.get(ch, chr(0x2400 + ord(ch)) if ord(ch) < 32 else ch) for ch in t))


def _dashboard_html(d: LatentDashboard, group: str = "") -> str:
    ctx_lines, text = [], []
    for c in d.contexts:
        ctx_lines.append(f"<div class='ctx' title='context {c.context}, position {c.position}, activation {c.value:.4g}'>"
                         f"<span class='v'>{c.value:.3g}</span><span class='dim'>{_tok(''.join(c.before))}</span>"
                         f"<mark>{_tok(c.token)}</mark><span class='dim'>{_tok(''.join(c.after))}</span></div>")
        text.append("".join(c.before) + c.token + "".join(c.after))
    logit_html = ""
    if d.logits_up:
        up = " ".join(f"<span class='tok' title='{v:+.3f}'>{_tok(t)}</span>" for t, v in d.logits_up)
        down = " ".join(f"<span class='tok' title='{v:+.3f}'>{_tok(t)}</span>" for t, v in d.logits_down)
        logit_html = f"<div class='up'><b>raises</b> {up}</div><div class='down'><b>lowers</b> {down}</div>"
    else:
        logit_html = "<div class='note'>logit effects not computed (no unembedding of this width given)</div>"
    badge = f"<span class='badge'>{e(group)}</span>" if group else ""
    return (f"<div class='latent' id='latent-{d.index}' data-latent='{d.index}' data-text='{e(chr(10).join(text).lower())}'>"
            f"<h3>latent {d.index}{badge}</h3>"
            f"<div class='stats'>fires on {100 * d.density:.3g}% of held-out rows · mean when firing {d.mean_when_fired:.3g}"
            f" · max {d.max_value:.3g}</div>"
            f"<div class='row'>{_hist_svg(d)}<div class='logits'>{logit_html}</div></div>"
            f"<div class='ctxs'>{''.join(ctx_lines) or '<div class=note>never fired on the held-out rows</div>'}</div></div>")


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
) -> Path:
    """Write the report to ``path`` (parents created; atomically, a failed write is one line naming it) and return it.

    ``reconstruction``: :meth:`ReconstructionStats.results`; ``figures``: (caption, figure) for the plots
    section; ``groups``: latent index → a badge such as "most active" or "random pick"."""
    path = Path(path)
    parts: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    if config:
        parts.append(("config", "Configuration", _config_html(config)))
    metrics = (_reconstruction_html(reconstruction) if reconstruction else "") + (_splice_html(splice) if splice else "")
    if metrics:
        parts.append(("metrics", "Metrics and baselines", metrics))
    if figures:
        parts.append(("plots", "Plots", _figures_html(figures)))
    if distributions is not None:
        parts.append(("distributions", "Activation distributions", _distributions_html(distributions)))
    for i, s in enumerate(sections):
        body = (f"<p class='note'>{e(s.text)}</p>" if s.text else "") + s.html + (_figures_html(s.figures) if s.figures else "")
        parts.append((f"section-{i}", s.title, body))
    if dashboards:
        cards = "".join(_dashboard_html(d, (groups or {}).get(d.index, "")) for d in dashboards)
        search = ("<div class='search'><input id='latent-search' type='search' placeholder='latent index (e.g. 12) or token text' "
                  "aria-label='search latents'><span class='count' id='latent-count'></span></div>"
                  "<p class='note'>Top-activating held-out tokens are marked; the activation is at the left of each line. "
                  "“raises/lowers”: tokens with the largest and smallest W_dec[i]·W_U[t] (unembedding only, no final norm). "
                  "Search by latent index (“12” or “#12”) or by any text in the contexts; the query is kept in the URL as #q=….</p>")
        parts.append(("latents", f"Latent dashboards ({len(dashboards)})", search + f"<div class='latents'>{cards}</div>"))

    nav = "".join(f"<a href='#{a}'>{e(h)}</a>" for a, h, _ in parts)
    body = "".join(f"<section id='{a}'><h2>{e(h)}</h2>{b}</section>" for a, h, b in parts)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<header><h1>{e(title)}</h1><div class='sub'>written {stamp} by mechscope · one self-contained file</div></header>"
            f"<nav>{nav}</nav><main>{body}</main><script>{JS}</script></body></html>")
    atomic_write_bytes(path, page.encode("utf-8"))
    return path

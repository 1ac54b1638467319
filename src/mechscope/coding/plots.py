"""PNG plots of a :class:`~mechscope.coding.frontier.FrontierResult` (matplotlib ``Figure`` without pyplot, like
:mod:`mechscope.report.figures`: no global backend switched, no figure registry to close).

Every curve is drawn against the *achieved* L0 (mean non-zeros per row), not the target, so a
coder that used fewer latents than asked is plotted where it really is.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from mechscope.coding.frontier import FrontierPoint, FrontierResult
from mechscope.report.figures import save_png

_MARKERS = "osD^v<>ph*"
_BASELINE_STYLES = ("-", "--", ":", "-.")


def _coders(result: FrontierResult) -> list[str]:
    return list(dict.fromkeys(p.coder for p in result.points))


def _loss_value(point: FrontierPoint, key: str) -> float | None:
    return point.loss.get(key)


def _plot_metric(
    ax, result: FrontierResult, value: Callable[[FrontierPoint], float | None], skip: tuple[str, ...] = ()
) -> bool:
    """One line per coder of value(point) against achieved L0; returns whether anything was drawn."""
    drawn = False
    for j, name in enumerate(_coders(result)):
        if name in skip:
            continue
        pts = [(p.stats["l0"], value(p)) for p in result.curve(name) if value(p) is not None]
        if pts:
            xs, ys = zip(*pts)
            # Colour and marker follow the coder's place in the sweep, so they agree across plots.
            ax.plot(xs, ys, marker=_MARKERS[j % len(_MARKERS)], color=f"C{j % 10}", label=name)
            drawn = True
    native = result.native
    if native is not None and "encoder" not in skip and value(native) is not None:
        ax.plot([native.stats["l0"]], [value(native)], "k*", markersize=14, label="encoder (native)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("L0 (achieved, mean latents per row)")
    ax.grid(True, alpha=0.3)
    return drawn


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    save_png(fig, path, dpi=120)
    return path


def _axes(figsize: tuple[float, float] = (6, 4.5)):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def save_frontier_plots(result: FrontierResult, out_dir: str | Path) -> list[Path]:
    """Write fvu_vs_l0.png, jaccard_vs_l0.png, span_cosine_vs_l0.png and (with losses) loss_vs_l0.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = _axes()
    _plot_metric(ax, result, lambda p: p.stats["fvu"])
    ax.set_yscale("log")
    ax.set_ylabel("FVU")
    ax.set_title("Reconstruction vs sparsity")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "fvu_vs_l0.png"))

    fig, ax = _axes()
    if _plot_metric(ax, result, lambda p: p.jaccard, skip=("encoder",)):
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("support Jaccard with the encoder (same target L0)")
        ax.set_title("How often coders choose the encoder's latents")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "jaccard_vs_l0.png"))

    fig, ax = _axes()
    _plot_metric(ax, result, lambda p: p.span_cosine)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("mean |cos| of a new latent with the earlier span")
    ax.set_title("Is each new latent orthogonal to those before it?")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "span_cosine_vs_l0.png"))

    loss_path = _loss_plot(result, out / "loss_vs_l0.png")
    if loss_path is not None:
        paths.append(loss_path)
    return paths


def _loss_plot(result: FrontierResult, path: Path) -> Path | None:
    """Spliced loss with baseline lines, then one panel per ``loss_recovered*`` key with 0 and 1 marked; two per row."""
    keys = list(dict.fromkeys(key for p in result.points for key in p.loss))  # in loss_fn's order
    if not keys:
        return None
    recovered = [key for key in keys if key.startswith("loss_recovered")]
    panels = (["loss"] if "loss" in keys else []) + recovered
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(6 * cols, 4.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        _plot_metric(ax, result, partial(_loss_value, key=key))
        if key == "loss":
            for j, (name, value) in enumerate(sorted(result.baselines.items())):
                ax.axhline(
                    value, color="black", linewidth=1, linestyle=_BASELINE_STYLES[j % len(_BASELINE_STYLES)], label=name
                )
            ax.set_ylabel("loss with the reconstruction spliced in (nats)")
        else:
            for level in (0.0, 1.0):
                ax.axhline(level, color="grey", linewidth=0.8)
            ax.set_ylabel(key.replace("_", " "))
        ax.set_title(key.replace("_", " ") + " vs L0")
        ax.legend(fontsize=8)
    return _save(fig, path)

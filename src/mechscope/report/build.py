"""Assemble a report from plain pieces: a dictionary with ``encode``/``decode``, held-out rows, their
tokens, and (optionally) the model to splice into. Nothing here opens files or loads models: the CLI
(:mod:`mechscope.cli.report`) does that, and tests pass tiny synthetic pieces straight in.

Order of work: one pass of held-out rows through the encoder (reconstruction metrics, firing density,
top contexts, histograms), the splice against every baseline, activation distributions, plots, HTML.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope.config import NON_NEGATIVE, check_ranges, to_dict
from mechscope.dictionary import EncodingDictionary
from mechscope.evals.distributions import DistributionConfig, DistributionReport, analyse_directions
from mechscope.evals.splice import SpliceConfig, SpliceResult, evaluate_splice
from mechscope.report import figures as F
from mechscope.report.html import Section, write_report
from mechscope.report.latents import (
    LatentDashboard,
    LatentScan,
    build_dashboards,
    choose_latents,
    random_live_latents,
    scan_latents,
)
from mechscope.task import Task


@dataclass(frozen=True)
class ReportConfig:
    """How much the report reads and shows."""

    title: str = "mechscope report"
    """Title of the page."""
    top_latents: int = 64
    """Dashboards for this many of the most often firing latents."""
    random_latents: int = 16
    """…plus this many others drawn at random from the latents that fired."""
    latents: tuple[int, ...] = field(default=(), metadata=NON_NEGATIVE)
    """Latent indices (each ≥ 0) that always get a dashboard."""
    contexts_per_latent: int = 8
    """Top-activating held-out tokens shown per latent."""
    context_before: int = 12
    """Tokens of context shown before the activating token."""
    context_after: int = 4
    """Tokens of context shown after it."""
    logit_tokens: int = 8
    """Tokens listed as most raised and most lowered by each latent's decoder direction."""
    max_rows: int = 100_000
    """Held-out rows streamed through the encoder."""
    batch_size: int = 2048
    """Rows per encoder batch."""
    splice_contexts: int = 16
    """Held-out contexts the model is run on for the loss with the reconstruction spliced in (0: no splice);
    four forwards each (clean, spliced, zero, mean), so this is the slow stage. Losses come with standard errors."""
    splice_batch_size: int = 8
    """Contexts per forward pass when splicing."""
    mean_rows: int = 50_000
    """Training rows averaged for the mean-ablation baseline."""
    distribution_directions: int = 8
    """Directions of each kind (random, basis, latent) whose activation distribution is fitted; the latents are
    drawn at random (seeded) from those that fired, not the most frequent ones."""
    distribution_samples: int = 4000
    """Held-out rows per direction for those fits."""
    seed: int = 0
    """Seed of the random latent picks, directions and subsamples."""
    progress: bool = True
    """Show a progress bar on stderr: one step per stage (encoder pass, splice, distribution fits, plots and
    HTML), with the splice's own bar over its batches."""

    def __post_init__(self) -> None:
        check_ranges(self)
        for name in ("contexts_per_latent", "max_rows", "batch_size", "splice_batch_size", "mean_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in (
            "top_latents",
            "random_latents",
            "context_before",
            "context_after",
            "logit_tokens",
            "splice_contexts",
            "distribution_directions",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.distribution_directions and self.distribution_samples < 10:
            raise ValueError(f"distribution_samples must be ≥ 10, got {self.distribution_samples}")


@dataclass(frozen=True, eq=False)
class ReportOutcome:
    """What a report measured, besides the file."""

    path: Path
    reconstruction: dict[str, float]
    splice: SpliceResult | None
    distributions: DistributionReport | None
    latents: tuple[int, ...]
    scan: LatentScan
    dashboards: tuple[LatentDashboard, ...]
    seconds: dict[str, float]
    """Wall time of each stage."""

    def to_dict(self) -> dict[str, Any]:
        """What ``--json`` prints: the file, the reconstruction metrics, the splice (losses, baselines, recovered),
        the latents that got dashboards and the wall time per stage."""
        return {
            "report": str(self.path),
            "reconstruction": dict(self.reconstruction),
            "splice": None if self.splice is None else self.splice.to_dict(),
            "latents": list(self.latents),
            "seconds": dict(self.seconds),
        }

    def summary_lines(self) -> list[str]:
        r = self.reconstruction
        lines = [
            f"reconstruction on {int(r['rows']):,} held-out rows: FVU {_fmt(r.get('fvu'), '{:.4f}')}, "
            f"L0 {_fmt(r.get('l0'), '{:.1f}')}, dead {_fmt(r.get('dead_fraction'), '{:.1%}')}, "
            f"dense {_fmt(r.get('dense_fraction'), '{:.1%}')}"
        ]
        if self.splice is not None:
            lines += [self.splice.headline(), *self.splice.summary_lines()[1:]]
        if self.distributions is not None:
            lines += self.distributions.summary_lines()
        lines.append(f"report: {self.path} ({len(self.latents)} latent dashboards)")
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()))
        return lines


def _fmt(v: float | None, fmt: str) -> str:
    """A metric formatted, or "n/a" when it is missing or NaN (never a made-up 0)."""
    return "n/a" if v is None or v != v else fmt.format(v)


class _Clock:
    """Wall time per stage, for the summary (so a slow stage is seen, not guessed), and a progress bar over the
    stages (``stages`` names them in order, so the bar says which one is running)."""

    def __init__(self, stages: Sequence[str] = (), progress: bool = False) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()
        self._stages = list(stages)
        self._bar = tqdm(total=len(self._stages), desc="report", unit="stage", disable=not progress)
        self._bar.set_postfix_str(self._stages[0] if self._stages else "")

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._t
        self._t = now
        self._bar.update(1)
        if self._bar.n < len(self._stages):
            self._bar.set_postfix_str(self._stages[self._bar.n])
        else:
            self._bar.close()


def _chunks(rows: Callable[[int, int], Tensor], n: int, batch_size: int) -> Iterator[Tensor]:
    for lo in range(0, n, batch_size):
        yield rows(lo, min(lo + batch_size, n))


def frontier_points(frontier: Mapping[str, Any]) -> list[dict[str, Any]]:
    """FVU-vs-L0 points from a sparse-coding frontier's ``to_dict()`` (``points`` with ``coder`` and
    ``stats``): one curve per coder, at the L0 each coder achieved."""
    out = []
    for p in frontier.get("points", []):
        st = p.get("stats", {})
        if "l0" in st and "fvu" in st:
            out.append({"label": p.get("coder", "frontier"), "l0": st["l0"], "fvu": st["fvu"]})
    return out


@torch.no_grad()
def build_report(
    out: str | Path,
    dictionary: EncodingDictionary,
    held_out_rows: Callable[[int, int], Tensor],
    n_held_out: int,
    tokens: Tensor,
    position: Callable[[int], tuple[int, int]],
    token_text: Callable[[int], str],
    *,
    cfg: ReportConfig = ReportConfig(),
    model: nn.Module | None = None,
    site: str | None = None,
    splice_task: Task | None = None,
    mean_act: Tensor | None = None,
    mean_source: str = "given",
    skip_first_positions: int = 0,
    W_U: Tensor | None = None,
    run_config: Mapping[str, Any] | None = None,
    extra_points: Sequence[dict[str, Any]] = (),
    sections: Sequence[Section] = (),
    explanations: Mapping[int, tuple[str, str]] | None = None,
) -> ReportOutcome:
    """Measure and write the report; return what was measured.

    held_out_rows(start, stop) → [B, d] rows of the held-out split, whose row r is token
    ``position(r) = (context, pos)`` of ``tokens`` [N, T]. ``splice_task`` is the :class:`~mechscope.task.Task`
    spliced on (needs ``model`` and ``site``): its held-out contexts are spliced, its training targets fit the rock; ``mean_act`` [d] is the training mean for mean-ablation
    (``mean_source`` says where it came from; without it the mean of the splice contexts is used);
    ``W_U`` [V, d] is the unembedding; ``extra_points`` adds curves to FVU vs L0 (see :func:`frontier_points`); ``explanations``: latent → (explanation,
    scores line) for the cards (:func:`mechscope.report.from_store.explanation_lines`); a latent explained gets a card
    even when it is not among the most active or the random picks."""
    splicing = model is not None and site is not None and splice_task is not None and cfg.splice_contexts > 0
    clock = _Clock(
        ["encoder pass and dashboards", *(["splice"] if splicing else []), "distribution fits", "plots and HTML"],
        cfg.progress,
    )
    n_rows = min(n_held_out, cfg.max_rows)
    on = dictionary.W_dec.device  # the encoder pass runs where the dictionary is (the model's device, from a store)
    scan = scan_latents(
        lambda x: dictionary.encode(x.to(on)),
        dictionary.decode,
        _chunks(held_out_rows, n_rows, cfg.batch_size),
        top_k=cfg.contexts_per_latent,
    )
    chosen = choose_latents(scan, cfg.top_latents, cfg.random_latents, cfg.seed, cfg.latents)
    top_set = set(choose_latents(scan, cfg.top_latents, 0))
    groups = {i: ("most active" if i in top_set else "chosen" if i in cfg.latents else "random pick") for i in chosen}
    explained = [i for i in sorted(explanations or {}) if i not in groups and i < scan.fire_counts.numel()]
    chosen += explained
    groups.update((i, "explained") for i in explained)
    dashboards = build_dashboards(
        scan,
        chosen,
        tokens,
        position,
        token_text,
        dictionary.W_dec.detach(),
        W_U,
        cfg.context_before,
        cfg.context_after,
        cfg.logit_tokens,
    )
    clock.lap("encoder pass and dashboards")

    splice = None
    if splicing:

        def reconstruct(x: Tensor) -> Tensor:
            return dictionary.decode(dictionary.encode(x))

        scfg = SpliceConfig(
            batch_size=cfg.splice_batch_size,
            max_examples=cfg.splice_contexts,
            skip_first_positions=skip_first_positions,
            progress=cfg.progress,
        )
        assert model is not None and site is not None and splice_task is not None  # what `splicing` checked
        splice = evaluate_splice(
            model, site, reconstruct, splice_task, mean_act=mean_act, mean_source=mean_source, cfg=scfg
        )
        clock.lap("splice")

    k = cfg.distribution_directions
    dcfg = DistributionConfig(n_random=k, n_basis=k, n_latents=k, max_samples=cfg.distribution_samples, seed=cfg.seed)
    sample = held_out_rows(0, min(n_rows, 4 * cfg.distribution_samples))
    dists = None
    if k > 0:
        latent_ids = random_live_latents(scan, k, cfg.seed)
        n_live = int((scan.fire_counts > 0).sum())
        dists = dataclasses.replace(
            analyse_directions(sample, dcfg, W_dec=dictionary.W_dec.detach().cpu(), latent_ids=latent_ids),
            latent_choice=f"{len(latent_ids)} latents drawn at random (seed {cfg.seed}) from the "
            f"{n_live:,} that fired on the held-out rows",
        )
    clock.lap("distribution fits")

    rec = scan.reconstruction
    points = [{"label": "this dictionary", "l0": rec.get("l0"), "fvu": rec.get("fvu")}, *extra_points]
    figs: list[tuple[str, F.FigureLike]] = [
        (
            "FVU against L0 on held-out rows" + ("; other curves from the frontier given" if extra_points else ""),
            F.fvu_vs_l0(points),
        ),
        (
            "Firing density of every latent on held-out rows (dotted: the 10% dense threshold)",
            F.firing_density(scan.density.numpy()),
        ),
    ]
    if splice is not None:
        figs.insert(
            1, ("Losses with the reconstruction spliced in, beside the ablations; dashed: the rock", F.losses(splice))
        )
    path = write_report(
        out,
        title=cfg.title,
        config={**(run_config or {}), "report": to_dict(cfg)},
        reconstruction=rec,
        splice=splice,
        figures=figs,
        distributions=dists,
        sections=sections,
        dashboards=dashboards,
        groups=groups,
        explanations=explanations,
    )
    clock.lap("plots and HTML")
    return ReportOutcome(path, rec, splice, dists, tuple(chosen), scan, tuple(dashboards), clock.laps)

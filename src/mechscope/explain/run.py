"""The explain run: latents in batches → evidence → one sentence each → scores → results saved, resumable.

One scan of the held-out split and one quantile pass (for every latent still to do) come first
(:mod:`mechscope.explain.evidence`); then each batch of ``batch_latents`` latents gets its windows, its explanations
and, with a judge, its scores, and ``explanations.json`` is rewritten atomically. A run stopped at any point loses
at most the batch in flight: run again with the same settings and it carries on after the last saved batch (with
other settings it is refused, naming what differs, rather than mixing two runs in one file).

``explanations.json``::

    format, version        "mechscope-explanations", 1
    settings               dictionary, store, site and every config field that changes a result
    latents                the latents planned, in order
    results                one record per latent done: latent, explanation, evidence counts, scores (or null),
                           beats_random (or null)
    complete               whether every planned latent is done

A scorer (:func:`mechscope.explain.scoring.score_latent`, or any function of the same shape passed as
``score``) gives each latent's scores against a random explanation (another latent's, from those written so far)
and a constant one; its result's ``to_json()`` is saved and its ``beats_random`` counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from mechscope.atomic import atomic_write_json
from mechscope.config import COUNT, NON_NEGATIVE, check_ranges, to_dict
from mechscope.errors import MechscopeError, UsageError
from mechscope.explain.evidence import EvidenceSource
from mechscope.explain.explainers import ExplainerConfig, explain
from mechscope.explain.types import Evidence, Judge, Writer
from mechscope.report.latents import random_live_latents

FILE = "explanations.json"
FORMAT = "mechscope-explanations"

ScoreFn = Callable[[Evidence, str, list[str], Judge, np.random.Generator], Any]
"""(evidence, explanation, other latents' explanations, judge, rng) → a score with ``to_json()`` and
``beats_random`` (the shape of :func:`mechscope.explain.scoring.score_latent` with the scorers and bootstrap
settings bound)."""


@dataclass(frozen=True)
class ExplainConfig:
    """Which latents are explained and scored, and how the run proceeds."""

    count: int = field(default=200, metadata=COUNT)
    """Latents to explain, drawn at random (seeded) from those that fired on the held-out rows."""
    latents: tuple[int, ...] = field(default=(), metadata=NON_NEGATIVE)
    """These latents instead of a random draw."""
    batch_latents: int = field(default=16, metadata=COUNT)
    """Latents per batch: the unit saved at once (a crash loses at most one batch)."""
    score: bool = True
    """Score each explanation beside a random and a constant explanation (needs a judge)."""
    scorers: tuple[str, ...] = ("detection", "fuzzing")
    """Scorers run on each explanation (names in mechscope.explain.scoring)."""
    trials: int = field(default=6, metadata=COUNT)
    """Firing and non-firing windows each scorer uses per latent (mechscope.explain.scoring.trial_windows: quantile
    samples first, which the explainer is not shown when its ``examples`` ≤ the evidence's ``top``): at most 2 ×
    ``trials`` judge prompts per scorer and explanation (true, random, constant)."""
    judge_model: str = ""
    """The local judge's model spec (e.g. smollm2) when the explainer is a local model; empty: the explainer's own."""
    judge_dtype: Literal["float32", "bfloat16"] = "float32"
    """The local judge's arithmetic: bfloat16 runs its transformer body under autocast (about 2× faster on a CPU
    with bfloat16 instructions; P(yes) within 0.02 of float32's on SmolLM2, docs/explain.md)."""
    n_boot: int = field(default=1000, metadata=COUNT)
    """Bootstrap resamples for each score's interval."""
    seed: int = 0
    """Seed of the latent draw and of each latent's scoring."""
    progress: bool = True
    """Show a progress bar (latents, with the rate) on stderr."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class ExplainOutcome:
    """What a run did."""

    path: Path
    """The explanations file."""
    planned: int
    done: int
    """Latents with a saved result (this run's and a resumed run's)."""
    explained_now: int
    """Latents explained by this run."""
    beats_random: int
    scored: int
    """Results with scores, and how many of them beat the random explanation."""
    seconds: dict[str, float]
    """Wall time of each stage of this run."""

    @property
    def per_minute(self) -> float:
        """Latents explained (and scored) per minute by this run, over the batches' time."""
        t = self.seconds.get("explain", 0.0) + self.seconds.get("evidence", 0.0) + self.seconds.get("score", 0.0)
        return 60.0 * self.explained_now / t if t > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "explanations": str(self.path),
            "planned": self.planned,
            "done": self.done,
            "explained_now": self.explained_now,
            "scored": self.scored,
            "beats_random": self.beats_random,
            "share_beats_random": self.beats_random / self.scored if self.scored else None,
            "latents_per_minute": self.per_minute,
            "seconds": dict(self.seconds),
        }


def read_explanations(folder: str | Path) -> dict[int, dict[str, Any]]:
    """latent → its saved result, from ``folder/explanations.json`` ({} when there is none)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        return {int(r["latent"]): r for r in data["results"]}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise MechscopeError(
            f"{path} is not a mechscope explanations file ({err}); move it away or run `mechscope explain` again"
        ) from None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"explain": {"count": 2}} → {"explain.count": 2} (so a refusal names the field that differs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _resume(path: Path, settings: dict[str, Any], planned: list[int]) -> list[dict[str, Any]]:
    """The results already saved at ``path`` by a run with the same settings ([] when there is no file)."""
    if not path.is_file():
        return []
    read_explanations(path.parent)  # a foreign or damaged file is named
    data = json.loads(path.read_text())
    old, new = _flat(data.get("settings", {})), _flat(settings)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff or data.get("latents") != planned:
        what = ", ".join(diff) if diff else "the latents planned"
        raise UsageError(
            f"{path} holds a run with other settings ({what}); give another `out` or delete the file to start over"
        )
    return list(data["results"])


def _save(path: Path, settings: dict[str, Any], planned: list[int], results: list[dict[str, Any]]) -> None:
    atomic_write_json(
        path,
        {
            "format": FORMAT,
            "version": 1,
            "settings": settings,
            "latents": planned,
            "results": results,
            "complete": len(results) == len(planned),
        },
    )


def plan(source: EvidenceSource, cfg: ExplainConfig) -> list[int]:
    """The latents to explain: ``cfg.latents`` (each checked to exist), else ``cfg.count`` drawn at random from
    those that fired."""
    n = int(source.scan.fire_counts.numel())
    if cfg.latents:
        bad = [i for i in cfg.latents if i >= n]
        if bad:
            raise UsageError(f"`latents` {bad[:5]} out of range: the dictionary has {n} latents (0..{n - 1})")
        return list(dict.fromkeys(int(i) for i in cfg.latents))
    return random_live_latents(source.scan, cfg.count, cfg.seed)


def run_explain(
    source: EvidenceSource,
    writer: Writer,
    out: str | Path,
    cfg: ExplainConfig = ExplainConfig(),
    explainer_cfg: ExplainerConfig = ExplainerConfig(),
    *,
    judge: Judge | None = None,
    score: ScoreFn | None = None,
    settings: dict[str, Any] | None = None,
) -> ExplainOutcome:
    """Explain (and, with ``cfg.score``, score) the planned latents of ``source``, saving ``out/explanations.json``
    after every batch; carries on from a saved file of the same ``settings`` (the caller's description of the
    dictionary, store and site, merged with every config). ``judge`` and ``score`` are needed when ``cfg.score``;
    ``score`` defaults to :func:`mechscope.explain.scoring.score_latent` with ``cfg.scorers`` and ``cfg.n_boot``."""
    if cfg.score and judge is None:
        raise UsageError("scoring needs a judge; pass one, or set `score` to False")
    if cfg.score and score is None:
        from mechscope.explain.scoring import score_latent, trial_windows

        def score(ev: Evidence, text: str, others: list[str], j: Judge, rng: np.random.Generator) -> Any:
            return score_latent(trial_windows(ev, cfg.trials, rng), text, others, j, cfg.scorers, rng, cfg.n_boot)

    path = Path(out) / FILE
    settings = {
        **json.loads(json.dumps(settings or {})),  # as they read back from the file (a tuple of sites is a list)
        "evidence": to_dict(source.cfg),
        "explainer": to_dict(explainer_cfg),
        "explain": {k: v for k, v in to_dict(cfg).items() if k != "progress"},
    }
    planned = plan(source, cfg)
    if cfg.score and len(planned) < 2:
        raise UsageError("scoring needs at least 2 latents (the random explanation is another latent's)")
    results = _resume(path, settings, planned)
    done = {r["latent"] for r in results}
    todo = [i for i in planned if i not in done]
    seconds = {"quantile pass": 0.0, "evidence": 0.0, "explain": 0.0, "score": 0.0}
    t = time.perf_counter()
    qrows = source.quantile_rows(todo)
    seconds["quantile pass"] = time.perf_counter() - t
    fired = source.scan.fire_counts
    bar = tqdm(total=len(planned), initial=len(results), unit="latent", desc="explain", disable=not cfg.progress)
    for lo in range(0, len(todo), cfg.batch_latents):
        batch = todo[lo : lo + cfg.batch_latents]
        t = time.perf_counter()
        evidence = source.evidence(batch, qrows)
        seconds["evidence"] += time.perf_counter() - t
        live = [ev for ev in evidence if fired[ev.latent] > 0]
        t = time.perf_counter()
        texts = dict(zip((ev.latent for ev in live), explain(writer, live, explainer_cfg))) if live else {}
        seconds["explain"] += time.perf_counter() - t
        t = time.perf_counter()
        known = [r["explanation"] for r in results if r["explanation"]] + [x for x in texts.values() if x]
        for ev in evidence:
            text = texts.get(ev.latent, "")
            rec: dict[str, Any] = {
                "latent": ev.latent,
                "explanation": text,
                "evidence": {"top": len(ev.top), "quantiles": len(ev.quantiles), "negatives": len(ev.negatives)},
                "scores": None,
                "beats_random": None,
            }
            if fired[ev.latent] == 0:
                rec["note"] = "never fired on the held-out rows: not explained"
            elif not text:
                rec["note"] = "the explainer gave no usable answer"
            elif cfg.score and not [x for x in known if x != text]:
                rec["note"] = "no other latent's explanation differs from this one yet: not scored"
            elif cfg.score:
                others = [x for x in known if x != text]
                s = score(ev, text, others, judge, np.random.default_rng([cfg.seed, ev.latent]))  # type: ignore[arg-type,misc]
                rec["scores"], rec["beats_random"] = s.to_json(), bool(s.beats_random)
            results.append(rec)
        seconds["score"] += time.perf_counter() - t
        _save(path, settings, planned, results)
        bar.update(len(batch))
    bar.close()
    if not todo:  # nothing left: make sure the file says so (and exists, for an empty plan)
        _save(path, settings, planned, results)
    scored = [r for r in results if r.get("beats_random") is not None]
    return ExplainOutcome(
        path,
        len(planned),
        len(results),
        len(todo),
        sum(bool(r["beats_random"]) for r in scored),
        len(scored),
        seconds,
    )


def summary_lines(outcome: ExplainOutcome, results: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The lines the command prints."""
    d = outcome.to_dict()
    lines = [
        f"explained {outcome.explained_now} latents in this run ({outcome.done} of {outcome.planned} done), "
        f"{d['latents_per_minute']:.2f} latents/min",
    ]
    if outcome.scored:
        lines.append(
            f"beat the random explanation: {outcome.beats_random} of {outcome.scored} "
            f"({outcome.beats_random / outcome.scored:.0%})"
        )
    lines += [f"  latent {r['latent']}: {r['explanation'] or '(' + r.get('note', 'none') + ')'}" for r in results]
    lines.append(f"saved: {outcome.path}")
    return lines

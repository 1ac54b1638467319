"""Probing a model's site and its dictionaries: sparse probing per concept, then first-letter absorption.

The model runs once per concept over its contexts (and once over the first-letter prompts); every dictionary reads
the same activations (:func:`mechscope.probing.features.concept_features`). Results are plain dicts, rendered as
text tables (:func:`text_tables`) and HTML tables (:func:`html_tables`, through :func:`mechscope.report.markup.table`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mechscope.config import to_dict
from mechscope.errors import UsageError
from mechscope.probing.absorption import LetterConfig, letter_absorption, letter_data
from mechscope.probing.concepts import CONCEPTS, ConceptConfig
from mechscope.probing.features import ACTIVATIONS, concept_features
from mechscope.probing.sparse import RANDOM, ProbeConfig, sparse_probing
from mechscope.sites import resolve_sites, run_to_sites


@dataclass(frozen=True)
class ProbeRunConfig:
    """Which model and site are probed, and what is run."""

    model: str = "smollm2"
    """Model spec (smollm2, a Hugging Face folder or hub id in the cache)."""
    site: str = "resid_post.6"
    """Site the dictionaries read (an alias such as resid_post.6, or a module path with :input/:output)."""
    batch_size: int = 16
    """Contexts (or prompts) per forward pass."""
    absorption: bool = True
    """Also measure first-letter absorption of each dictionary."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


def check_width(sae: Any, name: str, d: int) -> None:
    """Refuse a dictionary whose input width is not the site's, naming it."""
    width = int(sae.W_enc.shape[0]) if hasattr(sae, "W_enc") else int(sae.W_dec.shape[1])
    if width != d:
        raise UsageError(
            f"dictionary {name} reads width {width}, but the site's activations have width {d}: "
            "pass `saes` trained on this site"
        )


def probe(
    model: torch.nn.Module,
    tokenizer: Any,
    saes: Mapping[str, Any],
    run: ProbeRunConfig | None = None,
    concepts: ConceptConfig | None = None,
    probes: ProbeConfig | None = None,
    letters: LetterConfig | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Sparse probing of every concept and (``run.absorption``) first-letter absorption for each of ``saes`` (name →
    dictionary with ``encode`` and ``W_dec``) at ``run.site`` of ``model``; a config left None is its default.

    Returns {"site", "dictionaries": [names], "config", "concepts": {name: {level, classes, rows, tasks, scores, dense}},
    "absorption": {dictionary: …} (absent when not run)}."""
    run, concepts = run or ProbeRunConfig(), concepts or ConceptConfig()
    probes, letters = probes or ProbeConfig(), letters or LetterConfig()
    if not saes:
        raise UsageError("`saes` is empty: give at least one dictionary to probe")
    encoders = {name: sae.encode for name, sae in saes.items()}
    out: dict[str, Any] = {
        "site": run.site,
        "dictionaries": list(saes),
        "config": {"run": to_dict(run), "concepts": to_dict(concepts), "probes": to_dict(probes)},
        "concepts": {},
    }
    for name in concepts.concepts:
        data = CONCEPTS[name](tokenizer, concepts)
        log(f"{name}: {len(data.contexts)} contexts, {len(data.label)} rows ({int(data.test.sum())} held out)")
        if name == concepts.concepts[0]:  # one context's forward tells the site's width before any encoder runs
            (site,) = resolve_sites(model, run.site)
            device = next(model.parameters()).device
            d = run_to_sites(model, [site], input_ids=data.contexts[:1].to(device))[str(site)].shape[-1]
            for sae_name, sae in saes.items():
                check_width(sae, sae_name, d)
        feats = concept_features(model, run.site, data, encoders, run.batch_size)
        result = sparse_probing(feats, data.label, data.test, data.classes, probes, concepts.seed)
        out["concepts"][name] = {"level": data.level, "classes": list(data.classes), **result}
        log(text_table(name, out["concepts"][name], list(saes)))
    if run.absorption:
        out["config"]["letters"] = to_dict(letters)
        ld = letter_data(model, tokenizer, run.site, letters, concepts.seed, run.batch_size)
        log(f"first letter: {len(ld.letter_train)} training words, {len(ld.letter_test)} held-out words")
        out["absorption"] = {
            name: letter_absorption(ld.x_train, ld.letter_train, ld.x_test, ld.letter_test, sae, letters)
            for name, sae in saes.items()
        }
        log(absorption_text(out["absorption"]))
    return out


def _columns(dictionaries: list[str]) -> list[str]:
    return [*dictionaries, ACTIVATIONS, RANDOM]


def table_rows(concept: Mapping[str, Any], dictionaries: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of one concept's table: k, then accuracy (AUROC) per source; a last row for the dense probe."""
    cols = _columns(dictionaries)
    header = ["k", *[f"{c} acc (AUROC)" for c in cols]]
    rows = []
    for k, _ in concept["scores"][cols[0]].items():
        rows.append(
            [
                str(k),
                *(f"{concept['scores'][c][k]['accuracy']:.3f} ({concept['scores'][c][k]['auroc']:.3f})" for c in cols),
            ]
        )
    d = concept["dense"]
    rows.append(["all dims", *([""] * len(dictionaries)), f"{d['accuracy']:.3f} ({d['auroc']:.3f})", ""])
    return header, rows


def text_table(name: str, concept: Mapping[str, Any], dictionaries: list[str]) -> str:
    """One concept's table as aligned text."""
    header, rows = table_rows(concept, dictionaries)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{name} ({concept['level']} level, {len(concept['tasks'])} task(s), "
        f"{concept['rows']['train']:.0f} train / {concept['rows']['test']:.0f} test rows per task, test accuracy (AUROC))"
    ]
    lines += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


def absorption_rows(absorption: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = [
        "dictionary",
        "letters scored",
        "mean absorption",
        "pooled",
        "main silent",
        "main latents / letter",
        "probe TPs",
    ]
    rows = [
        [
            name,
            a["letters_scored"],
            a["mean_absorption"],
            a["pooled_absorption"],
            a["silent_main"],
            a["mean_main_latents"],
            a["probe_true_positives"],
        ]
        for name, a in absorption.items()
    ]
    return header, rows


def absorption_text(absorption: Mapping[str, Any]) -> str:
    header, rows = absorption_rows(absorption)
    fmt = [[r[0], str(r[1]), f"{r[2]:.3f}", f"{r[3]:.3f}", f"{r[4]:.3f}", f"{r[5]:.2f}", str(r[6])] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *fmt]) for i in range(len(header))]
    lines = ["first-letter absorption (full absorption; SAEBench thresholds)"]
    lines += ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *fmt]]
    return "\n".join(lines)


def text_tables(result: Mapping[str, Any]) -> str:
    """Every table of a :func:`probe` result as text."""
    parts = [text_table(n, c, result["dictionaries"]) for n, c in result["concepts"].items()]
    if "absorption" in result:
        parts.append(absorption_text(result["absorption"]))
    return "\n\n".join(parts)


def html_tables(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(title, HTML table) of every table of a :func:`probe` result."""
    from mechscope.report.markup import table

    out = []
    for name, concept in result["concepts"].items():
        header, rows = table_rows(concept, result["dictionaries"])
        out.append((f"{name} ({concept['level']} level)", table(header, rows)))
    if "absorption" in result:
        header, rows = absorption_rows(result["absorption"])
        out.append(("first-letter absorption", table(header, rows, fmt="{:.3f}")))
    return out

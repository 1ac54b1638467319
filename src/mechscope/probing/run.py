"""Probing a model's site and its dictionaries: sparse probing per concept, then first-letter absorption.

The model runs once per concept over its contexts (and once over the first-letter prompts); every dictionary reads
the same activations (:func:`mechscope.probing.features.concept_features`), which a run can save and a later run (new
dictionaries, other k or probe settings) reads back instead of running the model. Results are plain dicts, rendered as
text tables (:func:`text_tables`) and HTML tables (:func:`html_tables`, through :func:`mechscope.report.markup.table`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from mechscope.atomic import save_safetensors
from mechscope.config import to_dict
from mechscope.errors import UsageError
from mechscope.probing.absorption import LetterConfig, LetterData, letter_absorption, letter_data
from mechscope.probing.concepts import CONCEPTS, ConceptConfig, ConceptData
from mechscope.probing.features import ACTIVATIONS, concept_features, context_activations
from mechscope.probing.sparse import RANDOM, ProbeConfig, sparse_probing


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


ACTIVATIONS_FILE = "activations.safetensors"
"""Name of the saved activations in a run's folder (reused by a later run with the same model, site and data)."""


def _activations(
    model: torch.nn.Module,
    tokenizer: Any,
    run: ProbeRunConfig,
    concepts: ConceptConfig,
    letters: LetterConfig,
    saved: Path | None,
    log: Callable[[str], None],
) -> tuple[list[ConceptData], dict[str, Tensor], LetterData | None]:
    """The concepts, their contexts' activations ({name: [C, T, d]}) and the first-letter word activations: read from
    ``saved`` when it holds them for the same model, site, concepts and words, else computed (and written there)."""
    data = [CONCEPTS[name](tokenizer, concepts) for name in concepts.concepts]
    key = json.dumps(
        {
            "model": run.model,
            "site": run.site,
            "concepts": to_dict(concepts),
            "letters": to_dict(letters) if run.absorption else None,
        },
        sort_keys=True,
    )
    if saved is not None and saved.is_file():
        with safe_open(str(saved), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                t = {k: f.get_tensor(k) for k in f.keys()}
                log(f"activations read from {saved}")
                letter = LetterData(*(t[f"letters/{k}"] for k in LetterData._fields)) if run.absorption else None
                return data, {c.name: t[f"concept/{c.name}"] for c in data}, letter
            log(f"{saved} holds activations of another model, site or data set: computing them anew")
    acts = {}
    for c in data:
        log(f"{c.name}: {len(c.contexts)} contexts, {len(c.label)} rows ({int(c.test.sum())} held out)")
        acts[c.name] = context_activations(model, run.site, c.contexts, run.batch_size)
    letter = None
    if run.absorption:
        letter = letter_data(model, tokenizer, run.site, letters, concepts.seed, run.batch_size)
        log(f"first letter: {len(letter.letter_train)} training words, {len(letter.letter_test)} held-out words")
    if saved is not None:
        tensors = {f"concept/{k}": v for k, v in acts.items()}
        if letter is not None:
            tensors.update({f"letters/{k}": v for k, v in zip(LetterData._fields, letter)})
        save_safetensors(saved, tensors, metadata={"key": key})
    return data, acts, letter


def probe(
    model: torch.nn.Module,
    tokenizer: Any,
    saes: Mapping[str, Any],
    run: ProbeRunConfig | None = None,
    concepts: ConceptConfig | None = None,
    probes: ProbeConfig | None = None,
    letters: LetterConfig | None = None,
    log: Callable[[str], None] = lambda _line: None,
    saved: str | Path | None = None,
) -> dict[str, Any]:
    """Sparse probing of every concept and (``run.absorption``) first-letter absorption for each of ``saes`` (name →
    dictionary with ``encode`` and ``W_dec``, on the model's device) at ``run.site`` of ``model``; a config left None
    is its default. ``saved``: a file of activations to reuse (same ``run.model``, site, concepts and words) or to
    write.

    Returns {"site", "dictionaries": [names], "config", "concepts": {name: {level, classes, tasks, rows, scores, dense}},
    "absorption": {dictionary: …} (absent when not run)}."""
    run, concepts = run or ProbeRunConfig(), concepts or ConceptConfig()
    probes, letters = probes or ProbeConfig(), letters or LetterConfig()
    if not saes:
        raise UsageError("`saes` is empty: give at least one dictionary to probe")
    device = next(model.parameters()).device
    data, acts, letter = _activations(
        model, tokenizer, run, concepts, letters, Path(saved) if saved is not None else None, log
    )
    for sae_name, sae in saes.items():
        check_width(sae, sae_name, next(iter(acts.values())).shape[-1])
    encoders = {name: sae.encode for name, sae in saes.items()}
    out: dict[str, Any] = {
        "site": run.site,
        "dictionaries": list(saes),
        "config": {"run": to_dict(run), "concepts": to_dict(concepts), "probes": to_dict(probes)},
        "concepts": {},
    }
    for c in data:
        feats = concept_features(acts[c.name], c, encoders, device, run.batch_size)
        result = sparse_probing(feats, c.label, c.test, c.classes, probes, concepts.seed)
        out["concepts"][c.name] = {"level": c.level, "classes": list(c.classes), **result}
        log(text_table(c.name, out["concepts"][c.name], list(saes)))
    if letter is not None:
        out["config"]["letters"] = to_dict(letters)
        fitted: dict[int, Any] = {}  # the letter probes read the activations only: fit once for every dictionary
        out["absorption"] = {
            name: letter_absorption(
                letter.x_train.to(device),
                letter.letter_train,
                letter.x_test.to(device),
                letter.letter_test,
                sae,
                letters,
                fitted,
            )
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

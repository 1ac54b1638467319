"""Planted latents with known explanations: the known-answer case of the scorers.

Windows of real text (docstrings of standard-library modules, tokenised by a real tokenizer) and latents planted to
fire (activation 1.0) on exactly the tokens a rule picks, e.g. every token holding "(". Their true explanation is
known by construction, so a scorer given it should separate firing from non-firing windows (AUROC near 1), and
given another latent's explanation should not.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechscope.explain.types import Evidence, Example

MODULES = ("json", "textwrap", "collections", "inspect", "string", "shutil")
"""Standard-library modules whose docstrings give the windows."""


@dataclass(frozen=True)
class Planted:
    """A latent planted to fire on the tokens ``fires`` picks; ``explanation`` says which, in words."""

    name: str
    explanation: str
    fires: Callable[[str], bool]
    """Token text (as decoded, with its leading space) → whether the latent fires there."""


PLANTED: dict[str, Planted] = {
    p.name: p
    for p in (
        Planted("paren", "the opening parenthesis character '('", lambda t: "(" in t),
        Planted("return", 'the word "return"', lambda t: t.strip().lower() == "return"),
        Planted("digit", "digits (the characters 0 to 9)", lambda t: any(c.isdigit() for c in t)),
    )
}
"""Every planted latent by name."""


def stdlib_windows(tokenizer: Any, width: int = 24, modules: tuple[str, ...] = MODULES) -> list[tuple[str, ...]]:
    """Non-overlapping windows of ``width`` tokens (each decoded on its own) over the docstrings (over 80 characters)
    of the public callables of ``modules``, in a fixed order."""
    windows = []
    for name in modules:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
            if not doc or len(doc) <= 80:
                continue
            ids = tokenizer.encode(doc, add_special_tokens=False)
            for start in range(0, len(ids) - width + 1, width):
                pieces = tokenizer.convert_ids_to_tokens(ids[start : start + width])
                windows.append(tuple(tokenizer.convert_tokens_to_string([p]) for p in pieces))
    return windows


def planted_evidence(
    windows: list[tuple[str, ...]], latent: int, planted: Planted, n_top: int, n_quantiles: int, n_negatives: int, rng
) -> Evidence:
    """Evidence of a latent planted by ``planted`` on ``windows``: the ``n_top`` windows where it fires most often,
    ``n_quantiles`` other firing windows and ``n_negatives`` windows where it never fires, drawn by ``rng`` (a numpy
    Generator)."""

    def example(w: tuple[str, ...]) -> Example:
        return Example(w, tuple(1.0 if planted.fires(t) else 0.0 for t in w))

    pos = sorted((w for w in windows if any(map(planted.fires, w))), key=lambda w: -sum(map(planted.fires, w)))
    neg = [w for w in windows if not any(map(planted.fires, w))]
    if len(pos) < n_top + n_quantiles or len(neg) < n_negatives:
        raise ValueError(
            f"{planted.name}: {len(pos)} firing and {len(neg)} non-firing windows, fewer than n_top + n_quantiles = "
            f"{n_top + n_quantiles} and n_negatives = {n_negatives}"
        )
    rest = rng.choice(np.arange(n_top, len(pos)), n_quantiles, replace=False)
    negs = rng.choice(len(neg), n_negatives, replace=False)
    return Evidence(
        latent,
        tuple(example(w) for w in pos[:n_top]),
        tuple(example(pos[i]) for i in sorted(rest)),
        tuple(example(neg[i]) for i in sorted(negs)),
    )

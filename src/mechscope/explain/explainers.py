"""Explainers: a language model shown a latent's top windows, its activating tokens marked ``<<like this>>``,
writes one short sentence saying what they have in common.

The language model is a :class:`~mechscope.explain.types.Writer`, made by the registry :data:`WRITERS` from an
:class:`ExplainerConfig`:

- ``hf``: a local causal LM loaded by the front door (:func:`mechscope.models.resolve.language_model`; the embedded
  SmolLM2-135M-Instruct by default, ``gemma3-270m`` the second offline choice), the prompt wrapped in the
  tokenizer's chat template when it has one, greedy decoding, prompts batched with left padding.
- ``endpoint``: an OpenAI-compatible chat server the user names (:mod:`mechscope.explain.endpoint`).

Marking: in each window the tokens whose activation is at least ``mark_fraction`` × the window's largest are
marked, consecutive marked tokens inside one pair of brackets. The answer kept is its first sentence of the first
non-empty line, with a leading "Explanation:" and enclosing quotes removed (a line ending in ":" is followed by
the first items of the list under it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mechscope.config import COUNT, check_ranges, in_range
from mechscope.explain.chat import chat_turn, pad_id
from mechscope.explain.types import Evidence, Example, Writer
from mechscope.models.families import check_positions

OPEN, CLOSE = "<<", ">>"

HEADER = f"A feature of a language model fires on the tokens marked {OPEN} {CLOSE} in these snippets:"
TALLY = "Most common marked tokens:"
QUESTION = "In a few words, what does the feature detect?"
# Chosen on SmolLM2-135M-Instruct over a longer prompt with instructions and a worked example, which it answered
# with "the most frequent first token in the given example set" (and, begun "The marked tokens are", with a run of
# "<<"); this one gave 'the presence of the token "the"' for a latent planted on " the" (docs/explain.md).


@dataclass(frozen=True)
class ExplainerConfig:
    """Which language model writes the explanations, and what it is shown."""

    explainer: Literal["hf", "endpoint"] = "hf"
    """hf: a local causal LM (``explainer_model``); endpoint: an OpenAI-compatible chat server (``endpoint``)."""
    explainer_model: str = "smollm2"
    """hf: the model spec the front door loads (smollm2, gemma3-270m, a Hugging Face folder or a cached hub id)."""
    endpoint: str = ""
    """endpoint: the server's URL, e.g. http://127.0.0.1:8000/v1 (no network call is made unless this is given)."""
    endpoint_model: str = ""
    """endpoint: the model name the server serves."""
    api_key_env: str = ""
    """endpoint: the environment variable holding the API key (empty: no key sent)."""
    timeout: float = field(default=120.0, metadata=in_range(0, 86_400, lo_open=True, why="a day at most"))
    """endpoint: seconds to wait for each answer; at most a day."""
    concurrency: int = field(default=4, metadata=COUNT)
    """endpoint: requests in flight at once."""
    examples: int = field(default=12, metadata=COUNT)
    """Windows shown to the explainer: the top windows, then quantile samples if there are too few."""
    mark_fraction: float = field(default=0.25, metadata=in_range(0, 1, lo_open=True))
    """Tokens at or above this fraction of their window's largest activation are marked."""
    max_new_tokens: int = field(default=40, metadata=COUNT)
    """Longest answer, in tokens."""
    generate_batch: int = field(default=8, metadata=COUNT)
    """hf: prompts per generation batch."""
    answer_start: str = ""
    """hf: words the answer is begun with (the explanation is what the model writes after them)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.explainer == "endpoint" and not (self.endpoint and self.endpoint_model):
            raise ValueError(
                "`explainer` endpoint needs `endpoint`, the server's URL (e.g. http://127.0.0.1:8000/v1), and "
                "`endpoint_model`, the model name it serves"
            )


def marked(ex: Example, fraction: float) -> str:
    """The window's text with its activating tokens between ``<<`` and ``>>`` (runs of marked tokens share one
    pair)."""
    top = ex.max_act
    out, inside = [], False
    for t, a in zip(ex.tokens, ex.acts):
        hit = top > 0 and a >= fraction * top
        if hit and not inside:
            out.append(OPEN)
        if inside and not hit:
            out.append(CLOSE)
        inside = hit
        out.append(t)
    if inside:
        out.append(CLOSE)
    return "".join(out).replace("\n", "\\n")


def shown(ev: Evidence, n: int) -> list[Example]:
    """The ``n`` windows the explainer sees: top windows first, then quantile samples (strongest first)."""
    return (list(ev.top) + list(reversed(ev.quantiles)))[:n]


def marked_tokens(examples: Sequence[Example], fraction: float, n: int = 8) -> list[tuple[str, int]]:
    """The ``n`` most frequent marked tokens of ``examples`` (stripped and lower-cased; a token of white space as it
    is, newlines written \\n) with their counts."""
    counts = Counter(
        t.strip().lower() or t.replace("\n", "\\n")
        for ex in examples
        for t, a in zip(ex.tokens, ex.acts)
        if a > 0 and a >= fraction * ex.max_act
    )
    return counts.most_common(n)


def explanation_prompt(ev: Evidence, cfg: ExplainerConfig) -> str:
    """The one user message asking for latent ``ev.latent``'s explanation: the marked windows, the most frequent
    marked tokens and the question."""
    examples = shown(ev, cfg.examples)
    lines = [f"Example {k + 1}: {marked(ex, cfg.mark_fraction)}" for k, ex in enumerate(examples)]
    common = ", ".join(f"'{t}' ({c})" for t, c in marked_tokens(examples, cfg.mark_fraction))
    return "\n".join([HEADER, *lines, *([f"{TALLY} {common}"] if common else []), QUESTION])


_LEAD = re.compile(r"^\s*(?:[-*#>\d.)\s]*)?(?:explanation|description|answer)\s*:\s*", re.I)


def first_sentence(answer: str, items: int = 3) -> str:
    """The first sentence of the first non-empty line of ``answer``, without a leading label or quotes. A line that
    ends in ":" (SmolLM2-135M often answers "The feature detects the following:" and a list) is followed by up to
    ``items`` distinct items of the list after it, joined by commas."""
    lines = [_LEAD.sub("", s.strip()).strip().strip("\"'`*").strip() for s in answer.splitlines() if s.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":"):
        listed = [re.sub(r"^(?:[-*•]|\d+[.)])\s*", "", x).strip() for x in lines[1:]]
        kept = [x for x in dict.fromkeys(listed) if x and not line.startswith(x.rstrip(":"))][:items]
        line = (line + " " + ", ".join(kept)).strip()
    m = re.search(r"(?<=[.!?])\s", line)
    return (line[: m.start()] if m else line).strip()


class HFWriter:
    """A local causal LM (a :class:`~mechscope.models.LoadedModel`) as a :class:`Writer`: chat template when its
    tokenizer has one, the answer begun with ``answer_start``, greedy, ``batch`` prompts per ``generate`` with left
    padding. The text returned is what the model wrote after ``answer_start``."""

    def __init__(self, loaded: Any, batch: int = 8, answer_start: str = "") -> None:
        self.loaded, self.model, self.tok, self.batch = loaded, loaded.model, loaded.tokenizer, batch
        self.answer_start = answer_start
        self.chat = bool(getattr(self.tok, "chat_template", None))
        self.pad = pad_id(self.tok)

    def _text(self, prompt: str) -> str:
        turn = chat_turn(self.tok, prompt)
        return (turn if turn is not None else prompt + "\nDescription: ") + self.answer_start

    @torch.no_grad()
    def write(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out: list[str] = []
        side = self.tok.padding_side
        self.tok.padding_side = "left"  # generation continues every prompt from its last token
        try:
            for lo in range(0, len(prompts), self.batch):
                texts = [self._text(p) for p in prompts[lo : lo + self.batch]]
                enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                check_positions(
                    self.model,
                    enc["input_ids"].shape[1] + max_new_tokens,
                    "the explainer's prompt (the evidence's windows: `examples`, `before`, `after`) plus `max_new_tokens`",
                )
                ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad)
                new = ids[:, enc["input_ids"].shape[1] :]
                out += self.tok.batch_decode(new, skip_special_tokens=True)
        finally:
            self.tok.padding_side = side
        return out


def _hf(cfg: ExplainerConfig, device: str, dtype: str) -> Writer:
    from mechscope.models.resolve import language_model

    return HFWriter(
        language_model(cfg.explainer_model, device=device, dtype=dtype), cfg.generate_batch, cfg.answer_start
    )


def _endpoint(cfg: ExplainerConfig, device: str, dtype: str) -> Writer:
    from mechscope.explain.endpoint import Endpoint

    return Endpoint(cfg.endpoint, cfg.endpoint_model, cfg.api_key_env, cfg.timeout, cfg.concurrency)


WRITERS: dict[str, Callable[[ExplainerConfig, str, str], Writer]] = {"hf": _hf, "endpoint": _endpoint}
"""explainer name → (config, device, dtype) → the Writer."""


def make_writer(cfg: ExplainerConfig, device: str = "cpu", dtype: str = "float32") -> Writer:
    """The Writer ``cfg.explainer`` names (a local model runs on ``device`` in ``dtype``)."""
    return WRITERS[cfg.explainer](cfg, device, dtype)


def explain(writer: Writer, evidence: Sequence[Evidence], cfg: ExplainerConfig) -> list[str]:
    """One sentence per latent (empty where the writer answered nothing usable), in the order of ``evidence``."""
    answers = writer.write([explanation_prompt(ev, cfg) for ev in evidence], cfg.max_new_tokens)
    if len(answers) != len(evidence):
        raise RuntimeError(f"the writer gave {len(answers)} answers to {len(evidence)} prompts")
    return [first_sentence(a) for a in answers]

"""The ``language`` concept (English docstrings vs the standard library's Chinese, Japanese and Korean test texts):
its labels by construction, its split, its refusal, and a known answer of sparse probing on it.

A tokenizer of one token per character stands in for a real one, so a context decodes back to its text; the
English side is a fixed list of sentences (the stdlib's docstrings take seconds to parse on a cold cache)."""

from __future__ import annotations

import os
import re

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.probing import concepts
from mechscope.probing.concepts import LANGUAGES, LINE_KEY, ConceptConfig, cjk_folder, cjk_lines, language_concept
from mechscope.probing.features import ACTIVATIONS
from mechscope.probing.sparse import ProbeConfig, sparse_probing

needs_cjk = pytest.mark.skipif(
    not cjk_folder().is_dir() and not os.environ.get("CI"),
    reason="this Python has no test/cjkencodings (CI requires it: the concept's material)",
)
# test_a_missing_folder_is_refused_by_name runs everywhere; under CI the others fail rather than skip.

SCRIPT = {
    "chinese": re.compile(r"[\u4e00-\u9fff]"),  # Han
    "japanese": re.compile(r"[\u3040-\u30ff]"),  # kana: Japanese only
    "korean": re.compile(r"[\uac00-\ud7af]"),  # Hangul: Korean only
}
ENGLISH = [
    f"Sentence {i} says that item {i} is kept in the table and given back when it is asked for." for i in range(60)
]


class _Chars:
    """One token per character (id = code point), BOS 0."""

    bos_token_id, eos_token_id = 0, None

    def __call__(self, text: str, add_special_tokens: bool = False):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})()


@pytest.fixture
def data(monkeypatch):
    monkeypatch.setattr(concepts, "prose_documents", lambda: ENGLISH)
    return language_concept(_Chars(), ConceptConfig(concepts=("language",), context_length=32, contexts=80, rows=400))


def _text(data, c: int) -> str:
    return "".join(chr(i) for i in data.contexts[c, 1:].tolist())


def _contexts(data):
    """(context, label, held out) of every context with rows."""
    out = []
    for c in range(len(data.contexts)):
        rows = data.context == c
        if rows.any():
            (label,) = data.label[rows].unique().tolist()
            (test,) = data.test[rows].unique().tolist()
            out.append((c, label, test))
    return out


@needs_cjk
def test_cjk_lines_are_distinct_and_each_language_has_lines():
    lines = cjk_lines()
    assert all(lines[lang] for lang in SCRIPT)
    every = [ln for ls in lines.values() for ln in ls]
    assert len(every) == len(set(every))
    assert not any(SCRIPT["japanese"].search(ln) for ln in lines["korean"] + lines["chinese"])
    assert not any(SCRIPT["korean"].search(ln) for ln in lines["japanese"] + lines["chinese"])


@needs_cjk
def test_every_context_is_cut_from_its_own_language(data):
    assert data.classes == LANGUAGES and data.level == "token"
    lines = {"english": ENGLISH, **cjk_lines()}
    seen = dict.fromkeys(LANGUAGES, 0)
    in_script = dict.fromkeys(LANGUAGES, 0)
    for c, label, _ in _contexts(data):
        lang, text = LANGUAGES[label], _text(data, c)
        assert all(any(piece in ln for ln in lines[lang]) for piece in text.split("\n")), (lang, text)
        seen[lang] += 1
        in_script[lang] += lang == "english" or bool(SCRIPT[lang].search(text))
        if lang == "english":
            assert not any(p.search(text) for p in SCRIPT.values())
    assert all(seen.values()), seen
    assert all(in_script[lang] >= seen[lang] / 2 for lang in LANGUAGES), (in_script, seen)
    assert set(data.label[data.test].tolist()) == set(range(len(LANGUAGES)))


@needs_cjk
def test_each_side_is_cut_from_its_own_lines(data):
    """A held-out context is cut from held-out lines only (a CJK line's side: a hash of its first LINE_KEY
    characters, so near-copies share it; an English text's: a hash of the text), a training context from the rest."""
    lines = {"english": ENGLISH, **cjk_lines()}
    for c, label, test in _contexts(data):
        lang = LANGUAGES[label]
        side = [
            ln for ln in lines[lang] if concepts._held_out(ln if lang == "english" else ln[:LINE_KEY], 0.25) == test
        ]
        assert side, (lang, test)
        for piece in _text(data, c).split("\n"):
            assert any(piece in ln for ln in side), (lang, test, piece)


@needs_cjk
def test_a_probe_reads_a_planted_language_direction_and_not_noise(data):
    """Rows are N(0, 1) noise plus 6 along coordinate L for language L: every one-vs-rest k = 1 probe finds that
    coordinate (Bayes accuracy Φ(3) ≈ 0.999; asserted > 0.95 on the held-out rows); on the noise alone it stays
    near chance (0.5)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(len(data.label), 16, generator=g)
    planted_x = noise.clone()
    planted_x[torch.arange(len(data.label)), data.label] += 6.0
    cfg = ProbeConfig(ks=(1,), min_rows=5)
    planted = sparse_probing({ACTIVATIONS: planted_x}, data.label, data.test, data.classes, cfg)
    assert planted["tasks"] == list(LANGUAGES)
    assert planted["scores"][ACTIVATIONS][1]["accuracy"] > 0.95
    blank = sparse_probing({ACTIVATIONS: noise}, data.label, data.test, data.classes, cfg)
    assert blank["scores"][ACTIVATIONS][1]["accuracy"] < 0.7


def test_a_missing_folder_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(concepts, "cjk_folder", lambda: tmp_path / "no-such-folder")
    monkeypatch.setattr(concepts, "prose_documents", lambda: ENGLISH)
    with pytest.raises(UsageError, match=r"concept 'language'.*no-such-folder"):
        language_concept(_Chars(), ConceptConfig(concepts=("language",)))

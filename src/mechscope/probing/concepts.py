"""Concept data sets whose labels are known by construction, built offline from the standard library.

Shapes: C contexts, T tokens per context (BOS first when the tokenizer has one), R labelled rows.

A concept is a set of rows; a row is one token position of one context (token level) or a whole context, whose
activations are mean-pooled over its positions 1..T−1 (document level, BOS left out as the stores leave it out).
Every label comes from how the text was made or from Python's own tokenizer, never from a model:

| concept | level | classes | source and label |
|---|---|---|---|
| ``code_vs_prose`` | document | prose, code | stdlib ``*.py`` files without docstrings and comment lines (code) vs the stdlib's docstrings without ``>>>`` examples (prose) |
| ``keyword`` | token | identifier, keyword | stdlib source: a token inside a NAME of :mod:`tokenize` that is a hard keyword vs one inside any other NAME |
| ``in_string`` | token | outside, inside | stdlib source: a token inside a STRING of :mod:`tokenize` (docstrings included) vs one wholly outside every string |
| ``first_letter`` | token | a … z | stdlib docstrings: a word that is one token (" word": a space, then ASCII letters, and the next token does not go on with a letter), labelled by its first letter |
| ``language`` | token | english, chinese, japanese, korean | every token of a context by the language the context is written in: stdlib docstrings (English) or the Chinese, Japanese and Korean texts of the stdlib's test/cjkencodings (refused by name where that folder is missing) |

A token's label reads only its non-space characters (its character span from the tokenizer's offsets); a token
that straddles two classes (a quote and the letters after it) is left unlabelled.

Splits are deterministic and keep what a probe could memorise on one side: code concepts split by file, prose by
docstring (a hash of the file's path or of the text against ``test_fraction``), ``language`` by docstring or line,
``first_letter`` by word (a word and its capitalised form land on the same side), so a test row's file, line or word
was never seen in training. Rows
are sampled (``seed``) up to ``rows`` per concept, at most ⌈rows / classes⌉ per class and side, so the classes are
as balanced as the text allows.
"""

from __future__ import annotations

import ast
import functools
import io
import keyword
import math
import re
import sysconfig
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mechscope.config import COUNT, check_ranges
from mechscope.data.text import _bos_id, _hash, _key, stdlib_docstrings, stdlib_sources
from mechscope.errors import UsageError

LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORD = re.compile(r" [A-Za-z]+")
"""A token that is a whole word when the next token does not go on with a letter: a space, then ASCII letters."""


@dataclass(frozen=True)
class ConceptConfig:
    """Which concept data sets, and how large."""

    concepts: tuple[str, ...] = ("code_vs_prose", "keyword", "in_string", "first_letter")
    """Concepts to build (names of mechscope.probing.concepts.CONCEPTS)."""
    context_length: int = 64
    """Tokens per context T, BOS included."""
    contexts: int = field(default=160, metadata=COUNT)
    """Contexts per concept (the model runs over these: they bound the cost); ≥ 1."""
    rows: int = field(default=2000, metadata=COUNT)
    """Labelled rows kept per concept, train and test together; ≥ 1."""
    test_fraction: float = 0.25
    """Share of files, docstrings or words (and so of rows) held out to score the probes."""
    seed: int = 0
    """Seed of the row sampling (and of every probe, direction and prompt drawn later)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown or not self.concepts:
            raise UsageError(
                f"`concepts`: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(CONCEPTS)}"
            )
        if self.context_length < 8:
            raise ValueError("context_length must be at least 8 tokens")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("test_fraction must lie strictly between 0 and 1")


class ConceptData(NamedTuple):
    """One concept's labelled rows over its contexts."""

    name: str
    level: Literal["token", "document"]
    classes: tuple[str, ...]
    """Class names; a label is an index into them."""
    contexts: Tensor
    """[C, T] int64 token ids."""
    context: Tensor
    """[R] int64: the context of each row."""
    position: Tensor
    """[R] int64: the row's position in its context; −1 for a document row (mean over positions 1..T−1)."""
    label: Tensor
    """[R] int64 class index."""
    test: Tensor
    """[R] bool: held out."""


def _held_out(key: str, fraction: float) -> bool:
    return _hash(key) < fraction * 2**64


def _chunks(ids: list[int], labels: list[int], body: int) -> Iterator[tuple[list[int], list[int]]]:
    for start in range(0, len(ids) - body + 1, body):
        yield ids[start : start + body], labels[start : start + body]


class _Builder:
    """Contexts and labelled rows of one concept, filled side by side (train, test) until ``contexts`` in all."""

    def __init__(self, tokenizer: Any, cfg: ConceptConfig) -> None:
        self.cfg = cfg
        self.bos = _bos_id(tokenizer, "auto")
        self.body = cfg.context_length - (self.bos is not None)
        test = max(1, round(cfg.contexts * cfg.test_fraction))
        self.want = {True: test, False: max(1, cfg.contexts - test)}
        self.made = {True: 0, False: 0}
        self.ctx: list[list[int]] = []
        self.rows: list[tuple[int, int, int, bool]] = []  # (context, position, label, test)

    def full(self, test: bool | None = None) -> bool:
        return all(self.made[s] >= self.want[s] for s in ((True, False) if test is None else (test,)))

    def context(self, chunk: list[int], labels: list[int], sides: list[bool], side: bool) -> None:
        """Add one context of ``body`` tokens (labels: per token, −1 unlabelled; sides: per token, True held
        out), counted for ``side``."""
        c, shift = len(self.ctx), int(self.bos is not None)
        self.ctx.append(([self.bos] if self.bos is not None else []) + chunk)
        self.made[side] += 1
        self.rows += [(c, j + shift, lb, s) for j, (lb, s) in enumerate(zip(labels, sides)) if lb >= 0]

    def add(self, ids: list[int], labels: list[int], test: bool, max_chunks: int) -> int:
        """Cut ``ids`` into at most ``max_chunks`` contexts of side ``test`` (while that side wants more); returns
        how many were added."""
        added = 0
        for chunk, lab in _chunks(ids, labels, self.body):
            if added >= max_chunks or self.full(test):
                break
            self.context(chunk, lab, [test] * len(chunk), test)
            added += 1
        return added

    def document_rows(self) -> None:
        """Turn every context into one document row labelled by its tokens' (single) label."""
        first: dict[int, tuple[int, bool]] = {}
        for c, _, lb, s in self.rows:
            first.setdefault(c, (lb, s))
        self.rows = [(c, -1, lb, s) for c, (lb, s) in sorted(first.items())]

    def build(self, name: str, level: Literal["token", "document"], classes: tuple[str, ...]) -> ConceptData:
        if not self.ctx:
            raise UsageError(f"concept {name!r}: the source gave no context of {self.cfg.context_length} tokens")
        rows = np.array([r[:3] for r in self.rows], dtype=np.int64).reshape(-1, 3)
        test = np.array([r[3] for r in self.rows], dtype=bool)
        keep = _sample(rows[:, 2], test, len(classes), self.cfg.rows, self.cfg.seed)
        return ConceptData(
            name,
            level,
            classes,
            torch.tensor(self.ctx, dtype=torch.long),
            torch.from_numpy(rows[keep, 0]),
            torch.from_numpy(rows[keep, 1]),
            torch.from_numpy(rows[keep, 2]),
            torch.from_numpy(test[keep]),
        )


def _sample(labels: np.ndarray, test: np.ndarray, n_classes: int, rows: int, seed: int) -> np.ndarray:
    """Indices of at most ⌈rows·share / n_classes⌉ rows per (side, class), drawn with ``seed``; sorted."""
    rng = np.random.default_rng(seed)
    share = {True: float(test.mean()) if len(test) else 0.0}
    share[False] = 1 - share[True]
    keep = []
    for side in (False, True):
        cap = math.ceil(rows * share[side] / n_classes)
        for c in range(n_classes):
            idx = np.flatnonzero((labels == c) & (test == side))
            keep.append(rng.permutation(idx)[:cap] if len(idx) > cap else idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@functools.cache
def _ordered_sources() -> tuple[Path, ...]:
    """The stdlib files in the order of a hash of their path relative to the library (deterministic, mixed). Kept for
    the process: listing the library takes about 0.3 CPU-seconds, and three concepts each walk it."""
    files = stdlib_sources()
    root = files[0].parent if files else Path(".")
    return tuple(sorted(files, key=lambda p: _hash(str(p.relative_to(root)) if p.is_relative_to(root) else p.name)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def code_lines(src: str) -> str | None:
    """``src`` without its docstrings and its comment-only lines (None when it does not parse)."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                drop.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines = src.splitlines()
    kept = [ln for i, ln in enumerate(lines, 1) if i not in drop and not ln.lstrip().startswith("#")]
    return "\n".join(ln for ln in kept if ln.strip())


def char_classes(src: str) -> dict[str, np.ndarray]:
    """Per character of ``src`` (bool arrays): inside a hard ``keyword``, another ``identifier``, a ``string``.

    From :mod:`tokenize`; a file it cannot finish keeps the spans found before the error."""
    starts = np.concatenate([[0], np.cumsum([len(ln) for ln in src.splitlines(keepends=True)])])
    out = {k: np.zeros(len(src), dtype=bool) for k in ("keyword", "identifier", "string")}
    try:
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.type not in (tokenize.NAME, tokenize.STRING):
                continue
            a, b = starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1]
            kind = "string" if t.type == tokenize.STRING else "keyword" if keyword.iskeyword(t.string) else "identifier"
            out[kind][a:b] = True
    except (tokenize.TokenError, SyntaxError, IndexError):
        pass
    return out


def _token_labels(src: str, offsets: list[tuple[int, int]], positive: np.ndarray, negative: np.ndarray) -> list[int]:
    """Per token: 1 when its non-space characters are all in ``positive``, 0 when all in ``negative``, else −1."""
    labels = []
    for a, b in offsets:
        chars = [i for i in range(a, b) if not src[i].isspace()] or list(range(a, b))
        if not chars:
            labels.append(-1)
        elif positive[chars].all():
            labels.append(1)
        elif negative[chars].all():
            labels.append(0)
        else:
            labels.append(-1)
    return labels


def _source_tokens(tokenizer: Any, src: str, limit: int) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(src[:limit], add_special_tokens=False, return_offsets_mapping=True)
    return list(enc.input_ids), [tuple(o) for o in enc.offset_mapping]


def _code_tokens(tokenizer: Any, cfg: ConceptConfig, name: str, classes: tuple[str, ...], pick: str) -> ConceptData:
    b = _Builder(tokenizer, cfg)
    limit = 2 * cfg.context_length * 12  # characters: enough for two contexts of code
    for path in _ordered_sources():
        if b.full():
            break
        test = _held_out(path.name + str(path.parent.name), cfg.test_fraction)
        if b.full(test) or (src := _read(path)) is None:
            continue
        chars = char_classes(src)
        ids, offsets = _source_tokens(tokenizer, src, limit)
        if pick == "keyword":
            labels = _token_labels(src, offsets, chars["keyword"], chars["identifier"])
        else:
            labels = _token_labels(src, offsets, chars["string"], ~chars["string"])
        b.add(ids, labels, test, max_chunks=2)
    return b.build(name, "token", classes)


def keyword_concept(tokenizer: Any, cfg: ConceptConfig) -> ConceptData:
    """Token level: keyword (1) vs other identifier (0) in stdlib source."""
    return _code_tokens(tokenizer, cfg, "keyword", ("identifier", "keyword"), "keyword")


def in_string_concept(tokenizer: Any, cfg: ConceptConfig) -> ConceptData:
    """Token level: inside a string literal (1) vs wholly outside every string (0) in stdlib source."""
    return _code_tokens(tokenizer, cfg, "in_string", ("outside", "inside"), "string")


def prose_documents() -> list[str]:
    """The stdlib docstrings without doctest examples, one per normalised text (the library repeats some, e.g. in
    ``datetime`` and ``_pydatetime``), in text-hash order."""
    unique = {_key(d): d for d in sorted(stdlib_docstrings(), key=_hash, reverse=True) if ">>>" not in d}
    return sorted(unique.values(), key=_hash)


def code_vs_prose_concept(tokenizer: Any, cfg: ConceptConfig) -> ConceptData:
    """Document level: contexts of stdlib code (1, docstrings and comment lines removed) vs of docstrings (0)."""
    b = _Builder(tokenizer, cfg)
    eos = getattr(tokenizer, "eos_token_id", None)
    half = {label: dict(b.want) for label in (0, 1)}
    for k in half:
        for s in (True, False):
            half[k][s] = max(1, b.want[s] // 2)
    streams = {0: ((d, _held_out(d, cfg.test_fraction)) for d in prose_documents())}
    streams[1] = (
        (code, _held_out(p.name + str(p.parent.name), cfg.test_fraction))
        for p in _ordered_sources()
        if (src := _read(p)) is not None and (code := code_lines(src))
    )
    flat: dict[tuple[int, bool], tuple[list[int], list[int]]] = {
        (k, s): ([], []) for k in (0, 1) for s in (True, False)
    }
    made = {key: 0 for key in flat}
    for label, stream in streams.items():
        for text, test in stream:
            if all(made[(label, s)] >= half[label][s] for s in (True, False)):
                break
            if made[(label, test)] >= half[label][test]:
                continue
            ids, labs = flat[(label, test)]
            new = tokenizer(text[: 12 * cfg.context_length * 4], add_special_tokens=False).input_ids
            ids += new + ([eos] if eos is not None else [])
            labs += [label] * (len(new) + (eos is not None))
            n = len(ids) // b.body
            if n:
                made[(label, test)] += b.add(ids, labs, test, max_chunks=half[label][test] - made[(label, test)])
                del ids[: n * b.body], labs[: n * b.body]
    b.document_rows()
    return b.build("code_vs_prose", "document", ("prose", "code"))


def first_letter_concept(tokenizer: Any, cfg: ConceptConfig) -> ConceptData:
    """Token level: single-token words of the stdlib docstrings, labelled by first letter (26 classes)."""
    b = _Builder(tokenizer, cfg)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for doc in prose_documents():
        if len(ids) >= 4 * cfg.contexts * b.body:
            break
        ids += tokenizer(doc, add_special_tokens=False).input_ids + ([eos] if eos is not None else [])
    text = [tokenizer.decode([t]) for t in ids]
    labels, words = [], []
    for j, piece in enumerate(text):
        nxt = text[j + 1] if j + 1 < len(ids) else " "
        whole = WORD.fullmatch(piece) is not None and not nxt[:1].isalpha()
        labels.append(LETTERS.index(piece[1].lower()) if whole else -1)
        words.append(piece.strip().lower() if whole else "")

    def test(j: int) -> bool:
        return _held_out(words[j], cfg.test_fraction) if words[j] else False

    for chunk, lab in _chunks(ids, labels, b.body):
        if len(b.ctx) >= cfg.contexts:
            break
        start = len(b.ctx) * b.body
        b.context(chunk, lab, [test(j) for j in range(start, start + b.body)], side=False)
    return b.build("first_letter", "token", tuple(LETTERS))


CJK_TEXTS = {
    "chinese": ("big5", "gb2312", "gbk", "gb18030"),
    "japanese": ("euc_jp", "euc_jisx0213", "iso2022_jp", "shift_jis", "shift_jisx0213"),
    "korean": ("cp949", "euc_kr", "iso2022_kr", "johab"),
}
"""Language → the encodings whose test text ``<encoding>-utf8.txt`` (the standard library's test/cjkencodings) is
written in it. Left out: hz (English sentences around one Chinese one) and big5hkscs (one line of rare characters)."""
LANGUAGES = ("english", *CJK_TEXTS)
_FOREIGN = {
    "chinese": re.compile(r"[\u3040-\u30ff\uac00-\ud7af]"),
    "japanese": re.compile(r"[\uac00-\ud7af]"),
    "korean": re.compile(r"[\u3040-\u30ff]"),
}
"""A line with another language's own script (kana: Japanese; Hangul: Korean) is not its file's language (gb18030's
text ends in a Korean sentence)."""
LINE_KEY = 6
"""A CJK line is held out by a hash of its first characters: the encodings' texts hold near-copies of some lines
(the same sentence with characters missing), which must land on one side."""


def cjk_folder() -> Path:
    """The standard library's test/cjkencodings folder of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"


def cjk_lines(folder: Path | None = None) -> dict[str, list[str]]:
    """Language → the distinct non-empty lines (stripped) of its texts in ``folder`` (default :func:`cjk_folder`), in
    file then line order; a line found in two languages' texts, or written in another's script, is dropped. Refuses
    by name a folder that is missing."""
    folder = cjk_folder() if folder is None else folder
    if not folder.is_dir():
        raise UsageError(
            f"concept 'language' reads the Chinese, Japanese and Korean texts of the standard library's test package, "
            f"{folder}, which this Python lacks (some distributions ship the test package apart, e.g. Debian's "
            "libpython3.X-testsuite); install it, or leave 'language' out of `concepts`"
        )
    found: dict[str, dict[str, None]] = {lang: {} for lang in CJK_TEXTS}
    for lang, encodings in CJK_TEXTS.items():
        for enc in encodings:
            path = folder / f"{enc}-utf8.txt"
            if path.is_file():
                found[lang].update(
                    (ln.strip(), None) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()
                )
    shared = {ln for a in found for b in found if a < b for ln in found[a].keys() & found[b].keys()}
    return {
        lang: [ln for ln in lines if ln not in shared and not _FOREIGN[lang].search(ln)]
        for lang, lines in found.items()
    }


def language_concept(tokenizer: Any, cfg: ConceptConfig) -> ConceptData:
    """Token level: every token of a context labelled by the language the context is written in: English (stdlib
    docstrings) or Chinese, Japanese, Korean (:func:`cjk_lines`). A context holds one language; each language gets
    up to a quarter of the contexts of each side. Split by docstring (English) or by line (the others, keyed on its
    first :data:`LINE_KEY` characters), so no held-out token's line was seen in training."""
    texts = {"english": prose_documents(), **cjk_lines()}
    b = _Builder(tokenizer, cfg)
    share = {side: max(1, b.want[side] // len(LANGUAGES)) for side in (True, False)}
    for label, lang in enumerate(LANGUAGES):
        for side in (False, True):
            ids: list[int] = []
            for text in texts[lang]:
                if len(ids) >= share[side] * b.body:
                    break
                if _held_out(text if lang == "english" else text[:LINE_KEY], cfg.test_fraction) == side:
                    ids += tokenizer(text + "\n", add_special_tokens=False).input_ids
            b.add(ids, [label] * len(ids), side, max_chunks=share[side])
    return b.build("language", "token", LANGUAGES)


CONCEPTS: dict[str, Callable[[Any, ConceptConfig], ConceptData]] = {
    "code_vs_prose": code_vs_prose_concept,
    "keyword": keyword_concept,
    "in_string": in_string_concept,
    "first_letter": first_letter_concept,
    "language": language_concept,
}
"""Name → builder (tokenizer, config) → :class:`ConceptData`."""


def build_concepts(tokenizer: Any, cfg: ConceptConfig) -> list[ConceptData]:
    """The data sets of ``cfg.concepts``, in that order."""
    return [CONCEPTS[name](tokenizer, cfg) for name in cfg.concepts]

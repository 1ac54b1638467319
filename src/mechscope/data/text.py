"""Text corpora cut into fixed-length token contexts with a held-out split.

Sources: ``"stdlib"`` (the docstrings of the running Python's standard library: English prose that is
on every machine), a text file, a glob, or a directory (every ``*.txt``, ``*.md``, ``*.rst``,
``*.html`` and ``*.py`` below it).

Recipe, chosen so that validation never overlaps training:
1. read documents, drop exact duplicates, and sort them by a hash of their text (deterministic);
2. assign each *document* to validation when its hash falls in the first ``val_fraction`` of the
   hash range, so the same text never lands on both sides;
3. per split, join documents with the tokenizer's EOS, cut into chunks of T−1 tokens (T when no BOS),
   prepend BOS where the tokenizer has one (``bos="auto"``), and shuffle contexts with ``seed``.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass

from mechscope.errors import MechscopeError
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple

import torch
from torch import Tensor

_TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm", ".py")


class TextSourceError(MechscopeError, FileNotFoundError):
    """A text source with no files, or too little text for one context of each split."""


@dataclass(frozen=True)
class TextCorpusConfig:
    """Which text, and how it is cut into contexts."""

    source: str = "stdlib"
    """'stdlib' (docstrings of the Python standard library), a text file, a glob, or a directory."""
    context_length: int = 128
    """Tokens per context T, BOS included."""
    seed: int = 0
    """Seed of the context shuffle."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (split by document, never by context)."""
    max_tokens: int = 2_000_000
    """Stop reading documents once this many tokens were produced (bounds tokenisation time)."""
    bos: Literal["auto", "always", "never"] = "auto"
    """Prepend the tokenizer's BOS to each context: auto = when it has one and does not add it itself."""

    def __post_init__(self) -> None:
        if self.context_length < 2:
            raise ValueError("context_length must be at least 2")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must lie strictly between 0 and 1")


class Contexts(NamedTuple):
    """Token contexts. train: [N, T], val: [N_val, T] (int64)."""

    train: Tensor
    val: Tensor


def stdlib_docstrings() -> list[str]:
    """Module, class and function docstrings of the standard library, in sorted file order.

    Parsing the whole library takes about 15 s, so the list is cached (JSON) per Python version and path."""
    import json
    import sys

    from mechscope.models.loading import cache_dir
    from mechscope.atomic import atomic_write_json

    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.blake2b(f"{sys.version}|{root}".encode(), digest_size=6).hexdigest()
    cached = cache_dir() / f"stdlib-docstrings-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    docs = list(_parse_stdlib_docstrings(root))
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, docs)
    return docs


def _parse_stdlib_docstrings(root: Path) -> Iterable[str]:
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo", "dist-packages"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    yield doc


def _files(source: str) -> list[Path]:
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TEXT_SUFFIXES)
    hits = sorted(Path(f) for f in glob.glob(os.path.expanduser(source), recursive=True) if os.path.isfile(f))
    if not hits:
        raise TextSourceError(f"text source {source!r} is not 'stdlib', a file, a directory, or a glob with matches")
    return hits


def read_documents(source: str) -> Iterable[str]:
    """Documents of a source: stdlib docstrings, or one document per blank-line-separated block of each file."""
    if source == "stdlib":
        yield from stdlib_docstrings()
        return
    for f in _files(source):
        text = f.read_text(encoding="utf-8", errors="replace")
        for block in text.split("\n\n\n"):
            if block.strip():
                yield block


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _bos_id(tokenizer: Any, mode: str) -> int | None:
    if mode == "never":
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        if mode == "always":
            raise ValueError("bos='always' but the tokenizer has no BOS token")
        return None
    adds_itself = bos in tokenizer("a").input_ids[:1]
    return None if (mode == "auto" and adds_itself) else bos


def _cut(docs: list[list[int]], sep: int | None, bos: int | None, T: int) -> Tensor:
    """Join token lists with ``sep`` and cut into [N, T] contexts (with BOS prefixed when given)."""
    flat: list[int] = []
    for ids in docs:
        flat.extend(ids)
        if sep is not None:
            flat.append(sep)
    body = T - (bos is not None)
    n = len(flat) // body
    if n == 0:
        return torch.empty(0, T, dtype=torch.long)
    chunks = torch.tensor(flat[: n * body], dtype=torch.long).view(n, body)
    if bos is not None:
        chunks = torch.cat([torch.full((n, 1), bos, dtype=torch.long), chunks], dim=1)
    return chunks


def build_contexts(tokenizer: Any, cfg: TextCorpusConfig) -> Contexts:
    """Tokenise ``cfg.source`` into shuffled train and validation contexts (see module docstring)."""
    unique = {_hash(d): d for d in read_documents(cfg.source)}
    cut = int(cfg.val_fraction * 2**64)
    train_docs: list[list[int]] = []
    val_docs: list[list[int]] = []
    total = 0
    for h in sorted(unique):
        ids = tokenizer(unique[h], add_special_tokens=False).input_ids
        (val_docs if h < cut else train_docs).append(ids)
        total += len(ids)
        if total >= cfg.max_tokens:
            break
    bos = _bos_id(tokenizer, cfg.bos)
    sep = getattr(tokenizer, "eos_token_id", None)
    g = torch.Generator().manual_seed(cfg.seed)
    train = _cut(train_docs, sep, bos, cfg.context_length)
    val = _cut(val_docs, sep, bos, cfg.context_length)
    if len(train) == 0 or len(val) == 0:
        raise TextSourceError(f"source {cfg.source!r} gave {len(train)} train and {len(val)} validation contexts of "
                         f"{cfg.context_length} tokens: need more text, a shorter context, or a larger val_fraction")
    return Contexts(train[torch.randperm(len(train), generator=g)], val[torch.randperm(len(val), generator=g)])

"""Where the documents of a text corpus come from: one reader per kind of source, each a generator of strings.

A source is ``"stdlib"``, ``KIND:PATH`` with KIND one of :data:`READERS` (``text``, ``jsonl``, ``parquet``,
``arrow``, ``hf``), or a bare path or glob whose kind is told by its suffix (``.jsonl``, ``.parquet``, ``.arrow``; a
folder holding a ``datasets`` ``save_to_disk`` dataset is ``hf``; anything else is text). PATH is a file, a folder
(every file of the kind below it) or a glob.

Every reader streams: ``jsonl`` one line at a time, ``parquet`` and ``arrow`` one record batch at a time through
pyarrow (arrow files are memory-mapped), ``hf`` through ``datasets.load_from_disk`` (memory-mapped) in batches. No
reader holds a whole file; what is kept is decided by :func:`mechscope.data.text.select_documents`. Empty and
whitespace-only documents are skipped, as blank blocks of a text file are.

A Hugging Face datasets cache is a tree of arrow files: ``arrow:~/.cache/huggingface/datasets/NAME/**/*-train*.arrow``.
pyarrow and datasets are optional: the ``data`` extra (``pip install 'mechscope[data]'``) installs both.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mechscope.errors import MechscopeError, UsageError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm", ".py")
BATCH_ROWS = 1024
"""Rows per record batch read from parquet, arrow and hf sources (bounds the reader's memory)."""


class TextSourceError(MechscopeError, FileNotFoundError):
    """A text source with no files, or too little text for one context of each split."""


class MissingExtraError(MechscopeError, ImportError):
    """A source that needs an optional dependency that is not installed."""


def _need(module: str, kind: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{kind} sources need {module.split('.')[0]}: pip install 'mechscope[data]'") from err


def files(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files of ``path``: the file itself, every file with one of ``suffixes`` below a folder, or a glob's matches."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        hits = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        if not hits:
            raise TextSourceError(f"text source folder {path!r} holds no {'/'.join(suffixes)} file")
        return hits
    hits = sorted(Path(f) for f in glob.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(f))
    if not hits:
        raise TextSourceError(f"text source {path!r} is not 'stdlib', a file, a directory, or a glob with matches")
    return hits


def _missing_column(column: str, where: object, present: Iterable[str]) -> UsageError:
    return UsageError(f"{where} has no column `text_column`={column!r}; its columns: {', '.join(sorted(present))}")


def _nonblank(texts: Iterable[Any]) -> Iterator[str]:
    for t in texts:
        if isinstance(t, str) and t.strip():
            yield t


def read_text(path: str, column: str) -> Iterator[str]:
    """One document per block of a text file separated by two blank lines (``column`` is unused)."""
    for f in files(path, TEXT_SUFFIXES):
        yield from _nonblank(f.read_text(encoding="utf-8", errors="replace").split("\n\n\n"))


def read_jsonl(path: str, column: str) -> Iterator[str]:
    """One document per line (a JSON object) of each file: its ``column`` field."""
    for f in files(path, (".jsonl",)):
        with f.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TextSourceError(f"{f}:{n} is not a JSON object: {err}") from err
                if not isinstance(row, dict) or column not in row:
                    raise _missing_column(column, f"{f}:{n}", row if isinstance(row, dict) else [])
                yield from _nonblank([row[column]])


def read_parquet(path: str, column: str) -> Iterator[str]:
    """One document per row of each parquet file: its ``column``, read one record batch at a time."""
    pq = _need("pyarrow.parquet", "parquet")
    for f in files(path, (".parquet",)):
        table = pq.ParquetFile(f)
        if column not in table.schema_arrow.names:
            raise _missing_column(column, f, table.schema_arrow.names)
        for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            yield from _nonblank(batch.column(0).to_pylist())


def read_arrow(path: str, column: str) -> Iterator[str]:
    """One document per row of each arrow file (IPC stream, as ``datasets`` writes, or IPC file), memory-mapped."""
    pa = _need("pyarrow", "arrow")
    for f in files(path, (".arrow",)):
        with pa.memory_map(str(f)) as source:
            try:
                reader = pa.ipc.open_stream(source)
                batches: Iterable[Any] = reader
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            if column not in reader.schema.names:
                raise _missing_column(column, f, reader.schema.names)
            for batch in batches:
                for start in range(0, batch.num_rows, BATCH_ROWS):
                    yield from _nonblank(batch.column(column).slice(start, BATCH_ROWS).to_pylist())


def read_hf(path: str, column: str) -> Iterator[str]:
    """One document per row of a ``datasets`` ``save_to_disk`` folder (one split), memory-mapped, in batches."""
    datasets = _need("datasets", "hf")
    if not Path(path).expanduser().is_dir():
        raise TextSourceError(f"hf source {path!r} is not a folder written by datasets' save_to_disk")
    ds = datasets.load_from_disk(str(Path(path).expanduser()))
    if isinstance(ds, datasets.DatasetDict):
        raise UsageError(
            f"hf source {path!r} holds the splits {', '.join(ds)}: name one split's folder, "
            f"e.g. {os.path.join(path, next(iter(ds)))}"
        )
    if column not in ds.column_names:
        raise _missing_column(column, path, ds.column_names)
    for batch in ds.select_columns([column]).iter(batch_size=BATCH_ROWS):
        yield from _nonblank(batch[column])


READERS: dict[str, Callable[[str, str], Iterator[str]]] = {
    "text": read_text,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "arrow": read_arrow,
    "hf": read_hf,
}
"""Reader of each kind of source: (path, text column) → documents."""

_BY_SUFFIX = {".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


def parse_source(source: str) -> tuple[str, str]:
    """(kind, path) of a source that is not ``"stdlib"``: an explicit ``KIND:`` prefix, else told by the suffix."""
    kind, sep, rest = source.partition(":")
    if sep and kind in READERS:
        return kind, rest
    p = Path(source).expanduser()
    if p.is_dir():
        return ("hf" if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file() else "text"), source
    return _BY_SUFFIX.get(Path(source).suffix.lower(), "text"), source

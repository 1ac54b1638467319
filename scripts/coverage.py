"""Coverage table: every method of mechscope, end to end, on a tiny random model of every family.

    .venv/bin/python scripts/coverage.py                                  # rewrites docs/coverage.md, one JSON line
    .venv/bin/python scripts/coverage.py --rows gpt2 --methods harvest,train,explain   # those cells only, printed

(With ``--cells FILE`` it is one worker of ``run_table(..., workers=N)``: see :func:`_worker`.)

Rows are the models of tests/helpers_families.py and tests/helpers_coverage.py: one per Hugging Face family
(built offline from transformers' config classes over the embedded SmolLM2's tokenizer, saved with
save_pretrained), a stub of TransformerLens's HookedTransformer, and a plain ``nn.Module`` classifier. Columns are the methods, each one short run through the
``mechscope`` command (in process) where the command takes the model, else through the public Python entry
point. A cell is

- ``ok``: the run finished; one sanity number is shown,
- ``refused``: mechscope raised its own error (MechscopeError / UsageError) naming the model's family or class,
- ``FAIL``: anything else — a crash, a non-zero exit, or a refusal that does not say which model it refuses,
- ``blocked``: the run needs the output of a cell of its row that did not finish (harvest, train).

tests/e2e/test_coverage.py runs the same table (:func:`run_table`) and fails on a FAIL cell that is not a known
crash, on a known crash that no longer fails, and when docs/coverage.md no longer matches.

The table's code is the package scripts/coverage_table (rows, one cell, the methods, the table and its markdown);
this file is the command and re-exports what the test reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # scripts.coverage_table and the tests' model builders (tests.helpers_coverage)
from mechscope.atomic import atomic_write_bytes  # noqa: E402
from scripts.coverage_table.cell import Cell, cli, names_model  # noqa: E402
from scripts.coverage_table.rows import HF_ROWS, ROWS, Row, loaded, make_row  # noqa: E402
from scripts.coverage_table.table import (  # noqa: E402
    CELLS,
    DOC,
    METHODS,
    NEEDS,
    markdown,
    run_cell,
    run_table,
    statuses,
)

__all__ = [
    "CELLS",
    "DOC",
    "HF_ROWS",
    "METHODS",
    "NEEDS",
    "ROWS",
    "Cell",
    "Row",
    "cli",
    "loaded",
    "make_row",
    "markdown",
    "names_model",
    "run_cell",
    "run_table",
    "statuses",
]


def _worker(rows: tuple[str, ...], methods: tuple[str, ...], work: Path, cells: Path) -> int:
    """One process of :func:`_run_in_processes`: the cells of ``rows`` × ``methods`` into the JSON file ``cells``."""
    table = run_table(work, rows, methods)
    atomic_write_bytes(
        cells, json.dumps({r: {m: asdict(c) for m, c in row.items()} for r, row in table.items()}).encode()
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="every method of mechscope on a tiny random model of every family")
    ap.add_argument("--rows", help=f"comma-separated rows (of {', '.join(ROWS)}); with --methods, print, write no doc")
    ap.add_argument(
        "--methods",
        help=f"comma-separated methods (of {', '.join(METHODS)}); list the cells they need too (harvest, train)",
    )
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cells", type=Path, help=argparse.SUPPRESS)
    return ap


def main() -> int:
    args = _parser().parse_args()
    rows = tuple(args.rows.split(",")) if args.rows else tuple(ROWS)
    methods = tuple(args.methods.split(",")) if args.methods else tuple(METHODS)
    if args.cells:
        return _worker(rows, methods, args.work, args.cells)
    if args.rows or args.methods:
        with tempfile.TemporaryDirectory(prefix="mechscope-coverage-") as tmp:
            table = run_table(Path(tmp), rows, methods, log=lambda s: print(s, file=sys.stderr))
        print("\n".join(f"{r}/{m}: {c}" for r, cells in table.items() for m, c in cells.items()))
        return 0
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="mechscope-coverage-") as tmp:
        table = run_table(Path(tmp), log=lambda s: print(s, file=sys.stderr))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    atomic_write_bytes(DOC, markdown(table, seconds, cpu).encode())
    fails = {f"{r}/{m}": c.text for r, cells in table.items() for m, c in cells.items() if c.status == "FAIL"}
    print(
        json.dumps(
            {
                "doc": str(DOC),
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu, 1),
                "fail": fails,
                "counts": {s: list(statuses(table).values()).count(s) for s in ("ok", "refused", "FAIL", "blocked")},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

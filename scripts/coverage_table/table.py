"""The table: the methods (columns) and what each reads, one cell run and classified, the rows run in one process
or several, and docs/coverage.md."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mechscope.errors import MechscopeError
from scripts.coverage_table import lm_methods as lm, model_methods as mm
from scripts.coverage_table.cell import Cell, first_line, names_model
from scripts.coverage_table.rows import ROWS, Row, make_row, text_contexts

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "coverage.py"
DOC = ROOT / "docs" / "coverage.md"
METHODS = (
    "sites",
    "harvest",
    "train",
    "evaluate",
    "report",
    "frontier",
    "explain",
    "probe",
    "scrub",
    "circuit-atp",
    "circuit-eap",
    "circuit-acdc",
    "graph",
    "detect",
    "llc",
    "decompose",
)
CELLS: dict[str, Callable[[Row], str]] = {
    "sites": lm.m_sites,
    "harvest": lm.m_harvest,
    "train": lm.m_train,
    "evaluate": lm.m_evaluate,
    "report": lm.m_report,
    "frontier": lm.m_frontier,
    "explain": lm.m_explain,
    "probe": lm.m_probe,
    "scrub": mm.m_scrub,
    "circuit-atp": lambda r: mm.circuit(r, "atp"),
    "circuit-eap": lambda r: mm.circuit(r, "eap"),
    "circuit-acdc": lambda r: mm.circuit(r, "acdc"),
    "graph": mm.m_graph,
    "detect": mm.m_detect,
    "llc": mm.m_llc,
    "decompose": mm.m_decompose,
}
assert tuple(CELLS) == METHODS
NEEDS = {
    "train": "harvest",
    "evaluate": "train",
    "report": "train",
    "frontier": "train",
    "explain": "train",
    "probe": "train",
    "graph": "harvest",
}
"""method → the method of the same row whose output it reads."""


def run_cell(row: Row, method: str, results: dict[str, Cell]) -> Cell:
    """Run one cell and classify its outcome."""
    need = NEEDS.get(method)
    if need and results[need].status == "blocked":
        return Cell("blocked", results[need].text)
    if need and results[need].status != "ok":
        return Cell("blocked", f"needs {need} ({results[need].status})")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            text = CELLS[method](row)
        cell = Cell("ok", text)
    except MechscopeError as e:
        msg = first_line(str(e)).replace(str(row.work), "<tmp>")
        cell = (
            Cell("refused", msg)
            if names_model(msg, row.names())
            else Cell("FAIL", f"{type(e).__name__} not naming the model: {msg}")
        )
    except Exception as e:  # noqa: BLE001 — every crash is a cell of the table
        cell = Cell("FAIL", f"{type(e).__name__}: {first_line(str(e)).replace(str(row.work), '<tmp>')}")
    cell.seconds, cell.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return cell


# --- the table -----------------------------------------------------------------------------------------------------


def run_table(
    work: Path,
    rows: tuple[str, ...] = tuple(ROWS),
    methods: tuple[str, ...] = METHODS,
    log: Callable[[str], None] | None = None,
    workers: int = 1,
) -> dict[str, dict[str, Cell]]:
    """row → method → :class:`Cell`, every model built and every method run under ``work``.

    ``workers`` > 1 splits the rows round-robin over that many processes (this script run with ``--rows``; each
    process uses one thread, the rows are independent), and gives the same table in the same row order."""
    if workers > 1:
        return _run_in_processes(work, rows, methods, workers)
    from mechscope.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster and steadier
    try:
        tokenizer = load_model("smollm2").tokenizer
        contexts = text_contexts(tokenizer)
        table: dict[str, dict[str, Cell]] = {}
        for i, name in enumerate(rows):
            try:  # the folder is not named after the model: a message naming a path does not name the model
                with contextlib.redirect_stderr(io.StringIO()):  # transformers' progress bars
                    row = make_row(name, work / f"row{i:02d}", tokenizer, contexts)
            except Exception as e:  # noqa: BLE001 — a model that cannot be built fails its whole row
                table[name] = {
                    m: Cell("FAIL", f"building the model: {type(e).__name__}: {first_line(str(e))}") for m in methods
                }
                continue
            table[name] = {}
            for method in methods:
                cell = table[name][method] = run_cell(row, method, table[name])
                if log:
                    log(f"{name:<16} {method:<12} {cell.seconds:6.1f} s ({cell.cpu_seconds:5.1f} CPU s)  {cell}")
        return table
    finally:
        torch.set_num_threads(threads)


def _run_in_processes(
    work: Path, rows: tuple[str, ...], methods: tuple[str, ...], workers: int
) -> dict[str, dict[str, Cell]]:
    """:func:`run_table` over ``workers`` child processes, each writing its part of the table as JSON."""
    groups = [rows[i::workers] for i in range(workers) if rows[i::workers]]
    procs = []
    for i, group in enumerate(groups):
        part = work / f"part{i}"
        part.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(SCRIPT), "--rows", ",".join(group)]
        cmd += ["--methods", ",".join(methods), "--work", str(part), "--cells", str(part / "cells.json")]
        with open(part / "stderr.txt", "w") as err:  # a file, not a pipe: a full pipe would stall the worker
            procs.append((part, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)))
    parts: dict[str, dict[str, Cell]] = {}
    for part, proc in procs:
        if proc.wait() != 0:
            err = (part / "stderr.txt").read_text()[-4000:]
            raise RuntimeError(f"coverage worker in {part} exited {proc.returncode}:\n{err}")
        cells = json.loads((part / "cells.json").read_text())
        parts.update({r: {m: Cell(**c) for m, c in row.items()} for r, row in cells.items()})
    return {r: parts[r] for r in rows}


def statuses(table: dict[str, dict[str, Cell]]) -> dict[tuple[str, str], str]:
    return {(r, m): c.status for r, cells in table.items() for m, c in cells.items()}


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(table: dict[str, dict[str, Cell]], seconds: float, cpu_seconds: float) -> str:
    """docs/coverage.md: the header, the legend and one table row per model."""
    import transformers

    methods = list(next(iter(table.values())))
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    counts = {s: sum(1 for st in statuses(table).values() if st == s) for s in ("ok", "refused", "FAIL", "blocked")}
    lines = [
        "# Coverage: every method on every family",
        "",
        "Written by `scripts/coverage.py` (checked by `tests/e2e/test_coverage.py`; re-run the script after a change that "
        "moves a cell). Each language model is tiny and random (2 layers, width 32, SmolLM2's tokenizer and vocabulary), "
        "built offline from transformers' config classes and saved with `save_pretrained`; the TransformerLens row is "
        "a stub with TransformerLens's module names and forward (`tests/helpers_coverage.py`), not the package; the plain "
        "`nn.Module` is a 16 → 32 → 32 → 4 ReLU classifier of vectors.",
        "",
        f"- date: {datetime.date.today().isoformat()}; commit: {_commit()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"the table took {seconds:.0f} s ({cpu_seconds:.0f} CPU-seconds, one thread)",
        f"- cells: {counts['ok']} ok, {counts['refused']} refused, {counts['FAIL']} FAIL, {counts['blocked']} blocked",
        "",
        "**ok**: the run finished (one sanity number). **refused**: mechscope's own one-line error naming the model's "
        "family or class. **FAIL**: a crash, a non-zero exit, or a refusal that does not name the model — a defect. "
        "**blocked**: needs the store (harvest) or SAE (train) of its row, which did not finish.",
        "",
        "Methods: sites (every alias captured; max |resid_post − resid_pre − attn_out − mlp_out|), harvest (`mechscope "
        "harvest`, 2k tokens of the email package's sources), train (`mechscope train`, TopK, 20 steps), evaluate "
        "(`mechscope evaluate`: splice and baselines), report (`mechscope report`), frontier (`mechscope frontier`, "
        "encoder and OMP), explain (`mechscope explain` of 3 latents, the row's own model writing and judging: "
        "3 windows each, 12 new tokens, detection scoring with 20 bootstrap resamples; the number is the length of "
        "the first explanation), probe (`mechscope probe`, concept keyword over 16 contexts of 32 tokens, k = 1, no "
        "absorption: the k-sparse probe on the dictionary's latents and on the site's activations), scrub "
        "(`mechscope scrub`: the last MLP's output resampled), circuit-* (`mechscope circuit --task ioi --method "
        "atp|eap|acdc`), graph (`mechscope graph` over mlp_in.L → mlp_out.L transcoders trained "
        "by `mechscope train`), detect (`make_detector('mahalanobis')` fit and score: text vs random tokens; the "
        "command runs only its own benchmarks), llc (`estimate_llc`, 2 chains of 8 SGLD steps; the command takes no "
        "Hugging Face folder), decompose (`mechscope.cli.decompose.decompose`, the function behind `mechscope "
        "decompose`: SPD of the last MLP, 3 steps; the command's PATH target first tokenises 200k tokens of the "
        "standard library, about 30 s a model). The two rows outside the family table run the Python functions "
        "the commands call, with the model object.",
        "",
        "| model | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, cells in table.items():
        lines.append(f"| {ROWS[name]} | " + " | ".join(esc(str(cells[m])) for m in methods) + " |")
    return "\n".join(lines) + "\n"

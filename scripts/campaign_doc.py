"""docs/campaign.md from the campaign's rows (scripts/campaign.py)."""

from __future__ import annotations

import datetime
import os
import platform
from collections import Counter
from pathlib import Path

from campaign_flags import HUGE_OK, NEGATIVE_OK, VALUES, ZERO_OK

BAD_CLASSES = ("one-line", "unclear", "traceback", "accepted", "hang", "crash")
CORRUPT_CLASSES = ("detected", "repaired", "traceback", "undetected", "hang", "crash")
KILL_CLASSES = ("identical", "different", "failed", "not-killed")
ORDER = (
    "harvest",
    "train",
    "evaluate",
    "frontier",
    "report",
    "detect",
    "toy",
    "llc",
    "zoo",
    "scrub",
    "circuit",
    "graph",
    "decompose",
    "demo",
)
GOOD = {"one-line", "detected", "repaired", "identical"}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _counts(rows: list[dict], classes: tuple[str, ...], key: str = "command") -> list[str]:
    by = {}
    for r in rows:
        by.setdefault(r[key], Counter())[r["class"]] += 1
    names = [c for c in ORDER if c in by] + sorted(set(by) - set(ORDER))
    lines = ["| " + key + " | cases | " + " | ".join(classes) + " |", "|---|---:|" + "---:|" * len(classes)]
    total = Counter()
    for n in names:
        total.update(by[n])
        lines.append(
            f"| {n} | {sum(by[n].values())} | " + " | ".join(str(by[n].get(c, 0) or "") for c in classes) + " |"
        )
    lines.append(
        f"| **all** | **{sum(total.values())}** | " + " | ".join(f"**{total.get(c, 0)}**" for c in classes) + " |"
    )
    return lines


def write_doc(
    path: Path,
    rows: list[dict],
    kills: list[dict],
    *,
    seconds: float,
    commit: str,
    full_why: str | None,
    bite: bool,
    jobs: int,
) -> None:
    import torch

    bad = [r for r in rows if r["kind"] != "corrupt"]
    corrupt = [r for r in rows if r["kind"] == "corrupt"]
    totals = Counter(r["class"] for r in rows + kills)
    L = [
        "# The bad-input / corruption / kill -9 campaign",
        "",
        f"**Run on commit `{commit}`.**",
        f"Generated {datetime.date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores, shared with other jobs), "
        f"Python {platform.python_version()}, torch {torch.__version__}, in {seconds / 60:.0f} min with -j {jobs}.",
        "Regenerate with `MECHSCOPE_CACHE=<a cache with the zoo trained> .venv/bin/python scripts/campaign.py` "
        "(`--only COMMAND`, `--kind KIND`, `--list`, `-j N`; a partial run prints and writes no doc).",
        "",
        "Every case runs the real command line in its own process (forked from one interpreter that imported everything,",
        "`tests.harness.run_cli_many`) on cheap material made by the script: a 3-layer random Llama (width 64) over",
        "SmolLM2's tokenizer, a 600-token store harvested from it, a TopK SAE and three transcoders trained by",
        "`mechscope train` in a few steps, the zoo models from a copy of the cache. Each command has one cheap valid run",
        "(`BASE` in `scripts/campaign_base.py`); a case changes one thing in it.",
        "",
        "## Totals",
        "",
        "| class | cases |",
        "|---|---:|",
        *[f"| {c} | {n} |" for c, n in sorted(totals.items(), key=lambda kv: (kv[0] not in GOOD, kv[0]))],
        f"| **all** | **{sum(totals.values())}** |",
        "",
        f"{sum(n for c, n in totals.items() if c not in GOOD)} of {sum(totals.values())} cases are not one-line / detected / "
        "repaired / identical; they are listed below.",
        "",
        "For comparison, the previous campaign (a tester's, not in the tree, over detect, toy, zoo, scrub, circuit, graph,",
        "llc and decompose) gave 172 bad inputs → 121 one-line errors, 23 tracebacks, 17 unclear messages and 11 runs",
        "that exited 0. This one covers every command and every numeric flag, so its counts are larger.",
        "",
        "## Bad inputs: unknown names, malformed numbers, bad paths, bad output locations",
        "",
        "*one-line*: exit ≠ 0, no traceback, and stderr ends with the only `mechscope…: error:` line, which names the flag,",
        "the bad value or the file. *unclear*: exit ≠ 0 without a traceback, but that line is missing, not last, or names",
        "none of them. *traceback*: exit ≠ 0 with a Python traceback. *accepted*: exit 0 — the bad value was used.",
        "*hang*: still running when the case's limit ran out (10 s; 20 s for output locations): nothing refused the",
        "value before the work started (a huge step count, say). *crash*: killed by a signal.",
        "",
        *_counts(bad, BAD_CLASSES),
        "",
        "By kind:",
        "",
        *_counts(bad, BAD_CLASSES, key="kind"),
        "",
        "Malformed numbers: every `int`/`float` flag of every command (read from its parser) gets "
        + ", ".join(f"`{v}`" for v in VALUES.values())
        + " (floats: `-0.5` and `1e300` for the negative and huge ones),",
        "except values that are not bad for that flag: 0 where the help gives 0 a meaning (`0 = none`, `(0: all …)`)",
        f"or it switches an optional part off ({', '.join(f'`{f}`' for f in sorted(ZERO_OK))}); negatives of "
        f"{', '.join(f'`{f}`' for f in sorted(NEGATIVE_OK))}; huge values where the help says the value is capped or "
        f"bounded ({', '.join(f'`{f}`' for f in sorted(HUGE_OK))}). `@cmd` limits an entry to one command.",
        "Paths: missing, the empty string, a folder where a file is needed or a file (text or binary) or an empty folder",
        "where a folder is needed, a binary file where a file is needed, and a copy of the valid input with mode 000.",
        "Output locations: the empty string, a file where a folder is needed (or a folder where a file is), a path",
        "under a regular file, a path inside a read-only (0555) folder, and a path on a full disk. An empty string is no",
        "bad input where it is the flag's own default (`--report ''` = no report). Empty paths mean the working folder:",
        "those runs get one of their own (the empty outputs share one, in the table's order).",
        "Numbers are given as `--flag=VALUE` (so that argparse reads `-inf` as a value); a list flag gets the bad value",
        "first and, where it needs two values, a valid one after it. A flag that only acts in one mode of its command",
        "runs in that mode (`--threshold` with `--method acdc`, …; `FLAG_BASE`). Every run is limited to 6 GiB of",
        "address space, so a huge size fails to allocate instead of swamping the machine.",
        "",
    ]
    if not bite:
        L += [
            "**Mode bits do not stop this process (root with CAP_DAC_OVERRIDE), so the unreadable and read-only cases "
            "were left out.**",
            "",
        ]
    else:
        L += [
            "Run as root, the script re-runs itself without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (`setpriv`), so "
            "mode 000 and 0555 stop it as they stop a user.",
            "",
        ]
    L += (
        [f"**Full disk: skipped ({full_why}).** The code offers no ENOSPC fault of its own.", ""]
        if full_why
        else [
            "Full disk: a 256 KiB tmpfs, filled to the last byte, mounted in the script's private mount namespace "
            "(`unshare`), so every write there fails with ENOSPC; the code offers no ENOSPC fault of its own.",
            "",
        ]
    )
    L += [
        "## Damaged files",
        "",
        "Each file is damaged in a copy, then a command that must read it runs: safetensors files truncated to half,",
        "the header's first byte flipped, one bit of one weight flipped (bit 30, the exponent's top bit, and bit 0, the",
        "lowest mantissa bit, of the middle element of the largest float32 tensor), a metadata key renamed in place (a",
        "tensor name when there is no metadata); JSON files truncated, first byte flipped, a key renamed, one digit of",
        "a number changed. *detected*: a one-line error. *repaired*: exit 0, the file was rebuilt and the result equals",
        "the clean run's. *undetected*: exit 0 with the damaged file in place (or a result that differs from the clean",
        "run's) — silently wrong or silently lucky. The clean run is the same command on an undamaged copy.",
        "",
        *_counts(corrupt, CORRUPT_CLASSES),
        "",
        "## Kill -9 and resume",
        "",
        "Each long job is killed with SIGKILL at three moments, then run again with the same command, and the result",
        "compared with an uninterrupted run: the JSON on stdout and every file the job writes (JSON files parsed,",
        "safetensors by content; timing fields and the case folder's path left out; HTML and PNG files not compared, they",
        "embed wall times). Moments `fault:NAME@N` are fault points (`MECHSCOPE_FAULT`, `mechscope.faults`; `atomic:FILE`",
        "is inside the atomic write of FILE); `after:F` sends SIGKILL from outside once the job has run F of the clean",
        "run's time, `secs:S` after S seconds (timed from the fork that starts the job, after the imports). `zoo train`",
        "retrains from scratch (about 1500 steps), so its three kills hit one run after another in the same cache and",
        "one final run is compared with the cache's own parens model. *stray* lists temporary files and folders left",
        "after the re-run. YAML files are compared by meaning: `circuit --save` writes the hypothesis's nodes in an order",
        "that changes from process to process (same nodes, same edges).",
        "",
        *_counts(kills, KILL_CLASSES),
        "",
        "| command | job | moment | left on disk after the kill | re-run | class | stray after the re-run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in kills:
        killed = "" if r["killed_rc"] == -9 else f" (exit {r['killed_rc']}, not killed)"
        rerun = (
            f"exit {r['rerun_rc']}"
            + (f": {_cell(r['detail'])}" if r["detail"] else "")
            + (f"; differs: {', '.join(r['diff'])}" if r["diff"] else "")
        )
        L.append(
            f"| {r['command']} | {_cell(r['job'])}{' (chained)' if r['chain'] else ''} | {_cell(r['moment'])}{killed} | "
            f"{_cell(r['left'])} | {rerun} | {r['class']} | {', '.join(r['strays']) or '-'} |"
        )
    L += [
        "",
        "## Every case that is not one-line, detected, repaired or identical",
        "",
        "| command | kind | case | class | exit | last line of stderr (or of stdout for an accepted case) |",
        "|---|---|---|---|---:|---|",
    ]
    key = lambda r: (ORDER.index(r["command"]) if r["command"] in ORDER else 99, r["kind"], r["class"])
    for r in sorted((r for r in rows if r["class"] not in GOOD), key=key):
        what = r["what"] + (f" ({r['note']})" if r.get("note") else "")
        L.append(
            f"| {r['command']} | {r['kind']} | {_cell(what)} | {r['class']} | {r['rc']} | {_cell(r['line'])[:240]} |"
        )
    path.write_text("\n".join(L) + "\n")

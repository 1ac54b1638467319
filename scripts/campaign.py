"""The bad-input / corruption / kill -9 campaign over every `mechscope` command (issue 24).

    .venv/bin/python scripts/campaign.py                 # everything; rewrites docs/campaign.md, one JSON line
    .venv/bin/python scripts/campaign.py --only train    # one command (repeatable); prints, writes no doc
    .venv/bin/python scripts/campaign.py --list          # the cases, without running them

Every case runs the real command line (:func:`tests.harness.run_cli_many`: one process per case, forked
from one interpreter that imported everything once) on cheap material made here: a tiny random Llama over
SmolLM2's tokenizer, a store harvested from it, a small SAE and transcoders trained by `mechscope train`, the
zoo models from ``$MECHSCOPE_CACHE`` (copied, never written). Classes:

- bad inputs (unknown names, malformed numbers, bad paths, bad output locations): ``one-line`` (exit ≠ 0,
  stderr ends with the one ``mechscope…: error:`` line, which names the flag, the value or the file),
  ``unclear`` (exit ≠ 0 without a traceback, but that line is missing, not last, or names none of them),
  ``traceback``, ``accepted`` (exit 0: the bad value was used), ``hang`` (still running after the case's
  time limit: nothing refused it up front), ``crash`` (killed by a signal);
- damaged files: ``detected`` (one-line error), ``traceback``, ``repaired`` (exit 0, the file was rebuilt and
  the result equals the clean run's), ``undetected`` (exit 0 with the damaged file still in place), ``hang``;
- kill -9: ``identical`` / ``different`` (the re-run's result against the clean one), ``failed`` (the re-run
  failed), ``not-killed`` (the job ended before the moment).

As root, the campaign re-runs itself in a private mount namespace without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (so mode 000 and read-only folders mean what they mean for a user) and mounts a
small full tmpfs there for the full-disk cases; elsewhere those sub-classes are skipped and the doc says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# The code under test is the tree this script belongs to, in this process and in every command it runs.
SRC = Path(__file__).resolve().parent.parent / "src"
# scripts/ for the campaign's modules, the root for the tests' harness (tests.harness), src/ for the code.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(SRC.parent), str(SRC)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

from campaign_base import Case, Material, build_material
from campaign_cases import FULL_DISK_FOLDERS, corrupt_cases, output_cases, path_cases
from campaign_damage import mount_full_disk, permissions_bite, restore_modes, unmount
from campaign_flags import name_cases, number_cases

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "campaign.md"
REEXEC = "MECHSCOPE_CAMPAIGN_REEXEC"
TIMEOUTS = {"name": 10, "number": 10, "path": 10, "output": 20, "corrupt": 60, "ref": 120}
GOOD = {"one-line", "detected", "repaired", "identical"}
MEMORY_CAP = 6 << 30
"""Address-space limit of every run (bytes): a huge size fails to allocate instead of swamping the machine."""


def reexec_unprivileged() -> None:
    """As root: run this script again in a private mount namespace without the two DAC capabilities."""
    if os.geteuid() != 0 or os.environ.get(REEXEC) or not (shutil.which("unshare") and shutil.which("setpriv")):
        return
    cmd = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
        sys.executable,
        *sys.argv,
    ]
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return
    os.execvpe("unshare", cmd, {**os.environ, REEXEC: "1"})


ERROR = re.compile(r"^mechscope(?: [\w-]+)*: error: ")


PROGRESS = re.compile(r"\d+%\||it/s|s/it")
"""A progress bar's line (tqdm repaints it after an error line, on the same terminal line)."""


def _lines(stderr: str) -> list[str]:
    # An error printed right after a progress bar shares its terminal line: split it off first.
    text = re.sub(r"(?<=[^\n\r])(mechscope(?: [\w-]+)*: error: )", r"\n\1", stderr)
    return [l for l in text.replace("\r", "\n").splitlines() if l.strip() and not PROGRESS.search(l)]


def classify_bad(case: Case, proc) -> tuple[str, str]:
    """(class, the line it was judged on) of a bad-input run."""
    lines = _lines(proc.stderr)
    last = lines[-1][:300] if lines else ""
    if proc.returncode == 0:
        return "accepted", (proc.stdout.strip().splitlines() or [""])[-1][:200]
    if proc.returncode == -14:
        return "hang", last
    if proc.returncode < 0:
        return "crash", f"signal {-proc.returncode}; {last}"
    if "Traceback (most recent call last)" in proc.stderr:
        raised = [l for l in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", l)]
        return "traceback", (raised[-1] if raised else last)[:300]
    errors = [l for l in lines if ERROR.match(l)]
    if len(errors) != 1 or lines[-1] != errors[0]:
        return "unclear", last if errors else f"no error line: {last}"
    line = errors[0]
    named = any(n and re.search(r"(?<![\w.])" + re.escape(n.lower()) + r"(?![\w])", line.lower()) for n in case.needles)
    return ("one-line" if named else "unclear"), line[:300]


def classify_corrupt(case: Case, proc, damaged: str, now: str, same: bool) -> tuple[str, str]:
    cls, line = classify_bad(case, proc)
    if cls in ("one-line", "unclear"):
        return "detected", line if cls == "one-line" else f"(does not name the file) {line}"
    if cls != "accepted":
        return cls, line
    if now == damaged:
        return "undetected", "exit 0 with the damaged file in place; the result " + (
            "equals" if same else "differs from"
        ) + " the clean run's"
    return (
        ("repaired", "exit 0, the file was rebuilt, the result equals the clean run's")
        if same
        else ("undetected", "exit 0, the file was replaced, but the result differs from the clean run's")
    )


def sha(path: Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


class Runner:
    """Runs batches of CLI calls through fork servers, ``jobs`` at a time."""

    def __init__(self, jobs: int, cwd: Path):
        self.jobs, self.cwd = jobs, cwd

    def __call__(self, cases: list[tuple[list[str], dict[str, str]]], case_timeout: int = 600, cwd: Path | None = None):
        from tests.harness import run_cli_many

        cwd = cwd or self.cwd
        cwd.mkdir(parents=True, exist_ok=True)

        if not cases:
            return []
        chunks = [cases[i :: self.jobs] for i in range(self.jobs)] if self.jobs > 1 and len(cases) > 1 else [cases]
        results: list[list] = [[] for _ in chunks]

        def go(i: int) -> None:
            results[i] = run_cli_many(
                chunks[i], case_timeout=case_timeout, timeout=len(chunks[i]) * (case_timeout + 30) + 300, cwd=str(cwd)
            )

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(chunks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = [None] * len(cases)
        for i, chunk in enumerate(results):
            for j, r in enumerate(chunk):
                out[i + j * len(chunks)] = r
        return out


def fill(case: Case, folder: Path) -> tuple[list[str], dict[str, str]]:
    sub = lambda s: s.replace("{case}", str(folder))
    return [sub(a) for a in case.argv], {k: sub(v) for k, v in case.env}


def run_cases(cases: list[Case], root: Path, runner: Runner, log) -> list[dict]:
    """Set up, run and classify the bad-input and damaged-file cases (kills run elsewhere)."""
    from campaign_kills import result_digests

    rows, prepared = [], []
    for i, case in enumerate(cases):
        folder = root / "cases" / f"{i:04d}"
        folder.mkdir(parents=True)
        note = case.setup(folder) or "" if case.setup is not None else ""
        damaged = sha(_watched(case, folder)) if case.kind == "corrupt" else ""
        argv, env = fill(case, folder)
        prepared.append((case, folder, argv, env, str(note), damaged))
    # Runs share a working folder. An empty path means "here": the empty input paths run in a folder that
    # stays empty (their outputs go to their own folders), the empty output paths in one of their own, in
    # the table's order (so a later one may see files an earlier one wrote there, the same way every time).
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (case, _folder, argv, *_rest) in enumerate(prepared):
        where = f"empty-{case.kind}" if "" in argv and case.kind in ("path", "output") else "common"
        groups.setdefault((case.timeout or TIMEOUTS[case.kind], where), []).append(i)
    procs: list = [None] * len(prepared)
    for (timeout, where), idx in sorted(groups.items()):
        log(f"running {len(idx)} case(s) with a {timeout} s limit in working folder {where}")
        for i, proc in zip(
            idx, runner([(prepared[i][2], prepared[i][3]) for i in idx], timeout, cwd=root / "cwd" / where)
        ):
            procs[i] = proc
    ref_out = {}
    for (case, folder, argv, _env, note, damaged), proc in zip(prepared, procs):
        if case.kind == "ref":
            ref_out[case.ref] = (proc.returncode, result_digests(folder, proc.stdout, (folder / "out",)))
            if proc.returncode != 0:
                log(f"the clean run {case.ref} failed: {_lines(proc.stderr)[-1:]}")
            continue
        if case.kind == "corrupt":
            rc_ref, want = ref_out[case.ref]
            got = result_digests(folder, proc.stdout, (folder / "out",)) if proc.returncode == 0 else {}
            cls, line = classify_corrupt(case, proc, damaged, sha(_watched(case, folder)), rc_ref == 0 and got == want)
        else:
            cls, line = classify_bad(case, proc)
        rows.append(
            {
                "command": case.command,
                "kind": case.kind,
                "what": case.what,
                "class": cls,
                "rc": proc.returncode,
                "line": line,
                "note": note,
                "argv": " ".join(a if a and " " not in a else repr(a) for a in argv),
            }
        )
    return rows


def _watched(case: Case, folder: Path) -> Path:
    return folder / case.watch


def git_commit() -> str:
    """The commit checked out, and the last one that changed src/ (the code under test)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    try:
        head, src = git("rev-parse", "--short", "HEAD"), git("log", "-1", "--format=%h", "--", "src")
        dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src") else ""
        return f"{head} (src/ as of {src}{dirty})"
    except OSError:
        return "unknown"


def main() -> None:
    reexec_unprivileged()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only", action="append", default=[], metavar="COMMAND", help="run only this command's cases (repeatable)"
    )
    ap.add_argument(
        "--kind", action="append", default=[], help="run only cases of this kind: name number path output corrupt kill"
    )
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument(
        "-j", "--jobs", type=int, default=1, help="fork servers side by side (default 1: the machine is shared)"
    )
    ap.add_argument(
        "--cache",
        default=os.environ.get("MECHSCOPE_CACHE", ""),
        help="the mechscope cache holding the zoo and SmolLM2 (read only)",
    )
    ap.add_argument(
        "--doc", default=None, help="write the markdown here (default: docs/campaign.md for a full run, none otherwise)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument(
        "--material", default=None, help="reuse the material folder of a kept run (while changing the cases)"
    )
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error(f"-j must be ≥ 1, got {args.jobs}")
    if not args.cache or not (Path(args.cache) / "zoo").is_dir():
        ap.error(
            "--cache (or $MECHSCOPE_CACHE) must be a mechscope cache with the zoo trained (mechscope zoo train NAME)"
        )
    t0 = time.time()
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    log = lambda msg: print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="mechscope-campaign-"))
    full = scratch / "full"
    try:
        m = Material(
            root=scratch / "material", cache=scratch / "material" / "cache", base_cache=Path(args.cache).resolve()
        )
        bite = permissions_bite()
        full_why = "not root in a private mount namespace"
        if os.environ.get(REEXEC) and not args.list:
            full_why = mount_full_disk(full, FULL_DISK_FOLDERS)
        if args.list:
            m = _placeholder_material(m)
        elif args.material:
            m = load_material(Path(args.material))
            os.environ["MECHSCOPE_CACHE"] = str(m.cache)
        else:
            log("building the material (tiny model, stores, SAE, transcoders, caches)")
            m.root.mkdir(parents=True)
            m = build_material(m.root, m.base_cache, Runner(1, scratch / "cwd"))
            (m.root / "material.json").write_text(json.dumps({k: str(v) for k, v in vars(m).items()}))
        cases = (
            name_cases(m)
            + number_cases(m)
            + path_cases(m)
            + output_cases(m, full if args.list or not full_why else None, full_why or "")
            + corrupt_cases(m)
        )
        if not bite:
            cases = [c for c in cases if "unreadable" not in c.what and "read-only" not in c.what]
        from campaign_kills import JOBS, kill_campaign

        jobs = JOBS
        if args.only:
            cases = [c for c in cases if c.command in args.only]
            jobs = [j for j in jobs if j.command in args.only]
        if args.kind:
            cases = [c for c in cases if c.kind in args.kind]
            jobs = jobs if "kill" in args.kind else []
        if args.list:
            for c in cases:
                print(f"{c.command:<10} {c.kind:<8} {c.what}")
            for j in jobs:
                for label, moment in j.moments:
                    print(f"{j.command:<10} kill     {j.name}: {label} {moment}")
            print(json.dumps({"cases": len(cases) + sum(len(j.moments) for j in jobs)}))
            return
        rows = run_cases(cases, scratch / "run", Runner(args.jobs, scratch / "cwd"), log)
        kills = kill_campaign(m, Runner(1, scratch / "cwd"), scratch / "kills", jobs, log) if jobs else []
        seconds = time.time() - t0
        doc = Path(args.doc) if args.doc else (DOC if not (args.only or args.kind) else None)
        if doc:
            from campaign_doc import write_doc

            write_doc(
                doc, rows, kills, seconds=seconds, commit=git_commit(), full_why=full_why, bite=bite, jobs=args.jobs
            )
            log(f"wrote {doc}")
        totals = Counter(r["class"] for r in rows + kills)
        bad = [
            f"{r['command']} {r.get('kind', 'kill')}: {r.get('what') or r['job'] + ' ' + r['moment']} -> {r['class']}"
            f" | {r.get('line') or r.get('detail') or r.get('left')}"
            for r in rows + kills
            if r["class"] not in GOOD
        ]
        print(
            json.dumps(
                {
                    "bench": "campaign",
                    "cases": len(rows) + len(kills),
                    **dict(sorted(totals.items())),
                    "not_good": len(bad),
                    "seconds": round(seconds, 1),
                    "commit": git_commit(),
                }
            )
        )
        if not doc:
            for line in bad:
                print(line, file=sys.stderr)
    finally:
        if full.is_dir():
            unmount(full)
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            restore_modes(scratch)
            shutil.rmtree(scratch, ignore_errors=True)


def load_material(folder: Path) -> Material:
    saved = json.loads((folder / "material.json").read_text())
    return Material(**{k: Path(v) for k, v in saved.items()})


def _placeholder_material(m: Material) -> Material:
    """Paths only, for --list (nothing is built; the toy and anomaly cache names are not known yet)."""
    for name in ("lm", "store", "tc_store", "train", "transcoders", "decompose", "text"):
        setattr(m, name, m.root / name)
    m.toy_cache = m.root / "toy-cache"
    for sub, fname in (("toy-cache/toy", "MODEL.safetensors"), ("cache/anomaly", "TASK.safetensors")):
        (m.root / sub).mkdir(parents=True, exist_ok=True)
        (m.root / sub / fname).touch()
    return m


if __name__ == "__main__":
    main()

"""Kill -9 at three moments of every long job, then the same command again, compared with a clean run
(scripts/campaign.py). A moment is a fault point (``$MECHSCOPE_FAULT``, :mod:`mechscope.faults`) or a time
after the job started: the fork server (:func:`tests.harness.run_cli_many`) starts each run by forking
one interpreter that already imported everything, and a watcher here sends that child SIGKILL once it has
run the given fraction of the clean run's time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from campaign_base import BASE, Material, harvest_argv, train_argv
from campaign_damage import cache_with

from mechscope.anomaly.benchmarks import (
    VERSION as ANOMALY_VERSION,  # the task file the late kill waits for
)


@dataclass(frozen=True)
class KillJob:
    command: str
    name: str
    argv: Callable[[Material, str], list[str]]
    """The job writing to the folder ``out`` (``{case}/out``)."""
    moments: tuple[tuple[str, str], ...]
    """(early | middle | late, ``fault:NAME@N``, ``after:FRACTION`` of the clean run's time or ``secs:SECONDS``)."""
    leave_out: tuple[str, ...] = ()
    """Cache entries the job builds (left out of its cache copy, compared afterwards)."""
    chain: bool = False
    """Kill one run after another in the same place, then compare the last run (for a job too slow to redo
    three times: zoo training). Otherwise every moment has its own folder and its own re-run."""
    reference: str = ""
    """A folder holding the clean result (instead of a clean run), relative to the base cache."""


JOBS = [
    KillJob(
        "harvest",
        "harvest",
        lambda m, out: harvest_argv(m, out),
        (
            ("early", "fault:harvest.before_shard@1"),
            ("middle", "fault:harvest.shard_saved@2"),
            ("late", "fault:harvest.before_final_manifest@1"),
        ),
    ),
    KillJob(
        "train",
        "train",
        lambda m, out: train_argv(m, out),
        (
            ("early", "fault:train.step@3"),
            ("middle", "fault:atomic:checkpoint.safetensors@1"),
            ("late", "fault:atomic:sae.safetensors@1"),
        ),
    ),
    KillJob(
        "zoo",
        "zoo train parens",
        lambda m, out: ["zoo", "train", "parens", "--json"],
        (("early", "secs:15"), ("middle", "secs:45"), ("late", "fault:atomic:recipe.json@1")),
        leave_out=("zoo/parens",),
        chain=True,
        reference="zoo/parens",
    ),
    KillJob(
        "toy",
        "toy sweep",
        lambda m, out: BASE["toy sweep"](m, out) + ["--points", "4", "--steps", "1000"],
        (("early", "after:0.25"), ("middle", "after:0.6"), ("late", "fault:atomic:sweep.json@1")),
        leave_out=("toy",),
    ),
    KillJob(
        "toy",
        "toy bench",
        lambda m, out: BASE["toy bench"](m, out) + ["--steps", "2000"],
        (("early", "after:0.25"), ("middle", "after:0.6"), ("late", "fault:atomic:bench.json@1")),
    ),
    KillJob(
        "decompose",
        "decompose",
        lambda m, out: BASE["decompose"](m, out),
        (
            ("early", "fault:atomic:spd-checkpoint.safetensors@1"),
            ("middle", "fault:atomic:spd-checkpoint.safetensors@2"),
            ("late", "fault:atomic:decompose.json@1"),
        ),
    ),
    KillJob(
        "llc",
        "llc --model mlp --checkpoints",
        lambda m, out: BASE["llc model"](m, out) + ["--draws", "400"],
        (("early", "after:0.25"), ("middle", "after:0.6"), ("late", "fault:atomic:llc.json@1")),
    ),
    KillJob(
        "detect",
        "detect (first training of its task model)",
        lambda m, out: BASE["detect"](m, out),
        (
            ("early", "after:0.15"),
            ("middle", "after:0.4"),
            ("late", f"fault:atomic:backdoor-lm-v{ANOMALY_VERSION}.safetensors@1"),
        ),
        leave_out=("anomaly",),
    ),
    KillJob(
        "scrub",
        "scrub",
        lambda m, out: BASE["scrub"](m, out) + ["--examples", "1024", "--seeds", "4", "--report", f"{out}/scrub.html"],
        (("early", "after:0.25"), ("middle", "after:0.6"), ("late", "fault:atomic:scrub.html.scrub.json@1")),
    ),
    KillJob(
        "circuit",
        "circuit",
        lambda m, out: (
            BASE["circuit"](m, out) + ["--examples", "200", "--budget", "16", "--save", f"{out}/circuit.json"]
        ),
        (("early", "after:0.25"), ("middle", "after:0.6"), ("late", "fault:atomic:circuit.json@1")),
    ),
    KillJob(
        "graph",
        "graph",
        lambda m, out: BASE["graph"](m, out) + ["--prompt", "The cat sat on the mat and looked at the dog"],
        (("early", "after:0.25"), ("middle", "after:0.6"), ("late", "fault:atomic:graph.json@1")),
    ),
]

# Keys whose values are measured times or speeds: left out when results are compared.
TIMING = re.compile(r"(^|_)(seconds|wall|wall_s|cpu_s|elapsed|time|duration|per_s|rows_per_s|steps_per_s|s)$")
SKIP_FILES = (".html", ".png")
"""Files not compared: the reports embed wall times and the plots' PNG encoder metadata."""


def normalize(obj, case: str):
    if isinstance(obj, dict):
        return {k: normalize(v, case) for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [normalize(v, case) for v in obj]
    if isinstance(obj, str):
        return obj.replace(case, "<CASE>")
    return obj


def result_digests(case: Path, stdout: str, watch: tuple[Path, ...]) -> dict[str, str]:
    """What a re-run must reproduce: the JSON on stdout and every file under ``watch``, timings left out,
    the case folder's path replaced; safetensors files by content (metadata sorted, then tensors)."""
    from mechscope.digest import DIGEST_KEY
    from tests.harness import safetensors_content_digest

    def h(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()[:16]

    out = {}
    try:
        out["stdout"] = h(json.dumps(normalize(json.loads(stdout), str(case)), sort_keys=True).encode())
    except ValueError:
        out["stdout"] = "not JSON: " + h(stdout.encode())
    for folder in watch:
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.name.endswith((".tmp", ".lock") + SKIP_FILES) or stray(p):
                continue
            key = str(p.relative_to(case))
            if p.suffix == ".safetensors":
                # rng.torch: the interpreter's global RNG state, which no step draws from (docs/kill-resume.md),
                # and the recorded digest that covers it
                out[key] = safetensors_content_digest(p, skip_tensors=("rng.torch",), skip_metadata=(DIGEST_KEY,))[:16]
            elif p.suffix in (".json", ".jsonl"):
                out[key] = _json_digest(p, str(case))
            elif p.suffix in (".yaml", ".yml"):  # by meaning: the order of a mapping's keys is not part of it
                import yaml

                out[key] = h(json.dumps(normalize(yaml.safe_load(p.read_text()), str(case)), sort_keys=True).encode())
            else:
                out[key] = h(p.read_bytes().replace(str(case).encode(), b"<CASE>"))
    return out


def _json_digest(path: Path, case: str) -> str:
    """A JSON (or JSON-lines) file's digest after :func:`normalize`."""
    text = path.read_text(errors="replace")
    try:
        docs = [json.loads(text)]
    except ValueError:
        try:
            docs = [json.loads(l) for l in text.splitlines() if l.strip()]
        except ValueError:
            return "not JSON: " + hashlib.sha256(text.encode()).hexdigest()[:16]
    return hashlib.sha256(json.dumps(normalize(docs, case), sort_keys=True).encode()).hexdigest()[:16]


_TEMP = re.compile(r"(\.tmp$|^\.mechscope-probe-|^\.[\w.-]+\.[a-z0-9_]{8}$|^\.[\w-]+\.old$)")


def stray(p: Path) -> bool:
    return any(_TEMP.search(part) for part in p.parts[-3:])


def strays(case: Path) -> list[str]:
    """Temporary files and folders (``*.tmp``, ``mkdtemp`` folders, probes) left under ``case``."""
    found = set()
    for p in case.rglob("*"):
        if p.is_symlink():
            continue
        for part in p.relative_to(case).parts:
            if _TEMP.search(part):
                found.add(str(p.relative_to(case)).split(part)[0] + part)
                break
    return sorted(found)


def on_disk(case: Path) -> str:
    """What a killed run left in its folders, in a few words."""
    files = [p for p in case.rglob("*") if p.is_file() and not p.is_symlink()]
    by_top: dict[str, int] = {}
    for p in files:
        top = p.relative_to(case).parts[0]
        by_top[top] = by_top.get(top, 0) + 1
    tmp = strays(case)
    text = ", ".join(f"{n} file(s) in {k}/" for k, n in sorted(by_top.items())) or "no files"
    return text + (f"; stray: {', '.join(tmp)}" if tmp else "")


class Killer:
    """Sends SIGKILL to the fork server's n-th child ``delays[n]`` seconds after it appeared (None: never)."""

    def __init__(self, delays: list[float | None]):
        self.delays, self.stop, self.killed = delays, threading.Event(), set()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _server(self) -> int | None:
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == me and b"harness.py" in Path(f"/proc/{d}/cmdline").read_bytes():
                    return int(d)
            except (OSError, ValueError, IndexError):
                continue
        return None

    def _watch(self) -> None:
        server, seen, born = None, [], {}
        while not self.stop.is_set():
            time.sleep(0.01)
            server = server or self._server()
            if server is None:
                continue
            try:
                kids = [int(x) for x in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
            except OSError:
                continue
            now = time.monotonic()
            for pid in kids:
                if pid not in born:
                    born[pid] = now
                    seen.append(pid)
                i = seen.index(pid)
                delay = self.delays[i] if i < len(self.delays) else None
                if delay is not None and now - born[pid] >= delay and pid not in self.killed:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed.add(pid)
                    except ProcessLookupError:
                        pass


def run_with_kills(run_many, runs: list[tuple[list[str], dict[str, str], float | None]], timeout: int):
    """Run ``(argv, env, kill after seconds or None)`` one after another through one fork server."""
    with Killer([d for _, _, d in runs]):
        return run_many([(a, e) for a, e, _ in runs], timeout)


def kill_campaign(m: Material, run_many, scratch: Path, jobs: list[KillJob], log) -> list[dict]:
    """Every job: a clean run (its time sets the ``after:`` moments), the kills, the re-runs, the comparison."""

    def prepare(job: KillJob, case: Path) -> dict[str, str]:
        case.mkdir(parents=True)
        if job.leave_out:
            cache_with(m.base_cache if job.reference else m.cache, case / "cache", leave_out=job.leave_out)
            return {"MECHSCOPE_CACHE": str(case / "cache")}
        return {}

    def watch(job: KillJob, case: Path) -> tuple[Path, ...]:
        return (case / "out",) + tuple(case / "cache" / p for p in job.leave_out)

    def compared(job: KillJob, case: Path, stdout: str) -> dict[str, str]:
        got = result_digests(case, stdout, watch(job, case))
        return {k: v for k, v in got.items() if k.startswith("cache/")} if job.reference else got

    # 1. what every re-run must reproduce: a clean run here (its time is the clock of the after: moments),
    #    or the base cache's copy for a job that builds a cache entry
    want: dict[str, dict | None] = {}
    wall: dict[str, float] = {}
    todo = [job for job in jobs if not job.reference]
    log(f"kill: {len(todo)} clean runs")
    cases = [scratch / f"clean-{i:02d}" for i in range(len(todo))]
    runs = [(job.argv(m, str(c / "out")), prepare(job, c), None) for job, c in zip(todo, cases)]
    for job, case, proc in zip(todo, cases, run_with_kills(run_many, runs, 900)):
        want[job.name] = compared(job, case, proc.stdout) if proc.returncode == 0 else None
        wall[job.name] = proc.wall_s
        if proc.returncode != 0:
            log(f"kill: the clean run of {job.name} failed: {_last_line(proc.stderr)}")
    for job in jobs:
        if job.reference:
            ref = result_digests(m.base_cache, "{}", (m.base_cache / job.reference,))
            want[job.name] = {f"cache/{k}": v for k, v in ref.items() if k != "stdout"}

    # 2. the kills (one folder per moment, or one folder for a chain), 3. the re-runs
    kills, reruns = [], []
    for j, job in enumerate(jobs):
        if want[job.name] is None:
            continue
        folders = (
            [scratch / f"kill-{j:02d}-chain"] if job.chain else [scratch / f"kill-{j:02d}-{l}" for l, _ in job.moments]
        )
        envs = [prepare(job, f) for f in folders]
        for i, (label, moment) in enumerate(job.moments):
            case, env = (folders[0], envs[0]) if job.chain else (folders[i], envs[i])
            how, _, arg = moment.partition(":")
            delay = float(arg) * wall[job.name] if how == "after" else float(arg) if how == "secs" else None
            kills.append(
                (
                    job,
                    label,
                    moment,
                    delay,
                    case,
                    (
                        job.argv(m, str(case / "out")),
                        {**env, **({"MECHSCOPE_FAULT": arg} if how == "fault" else {})},
                        delay,
                    ),
                )
            )
        reruns += [(job, case, (job.argv(m, str(case / "out")), env, None)) for case, env in zip(folders, envs)]
    log(f"kill: {len(kills)} kills")
    left = {}
    # The independent kills in one batch; a chain's kills one batch each, so that what each left is seen.
    batches = [[k for k in kills if not k[0].chain]] + [[k] for k in kills if k[0].chain]
    for batch in batches:
        for (job, label, _, _, case, _), proc in zip(batch, run_with_kills(run_many, [k[-1] for k in batch], 900)):
            left[(job.name, label)] = (proc.returncode, on_disk(case))
    log(f"kill: {len(reruns)} re-runs")
    final = {}
    for (job, case, _), proc in zip(reruns, run_with_kills(run_many, [r[-1] for r in reruns], 900)):
        final[case] = (proc, compared(job, case, proc.stdout) if proc.returncode == 0 else {}, strays(case))

    rows = []
    for job, label, moment, delay, case, _ in kills:
        rc, disk_text = left[(job.name, label)]
        proc, got, tmp = final[case]
        ref = want[job.name] or {}
        cls = (
            "failed"
            if proc.returncode != 0
            else "not-killed"
            if rc != -9
            else "identical"
            if got == ref
            else "different"
        )
        when = f"{label}: " + (
            f"{moment} ({delay:.1f} s into the job" + (f" of {wall[job.name]:.1f} s)" if job.name in wall else ")")
            if delay is not None
            else moment
        )
        rows.append(
            {
                "command": job.command,
                "job": job.name,
                "moment": when,
                "class": cls,
                "killed_rc": rc,
                "left": disk_text,
                "rerun_rc": proc.returncode,
                "chain": job.chain,
                "strays": tmp,
                "diff": sorted(k for k in set(got) | set(ref) if got.get(k) != ref.get(k))[:6]
                if proc.returncode == 0
                else [],
                "detail": _last_line(proc.stderr) if proc.returncode else "",
            }
        )
    for job in jobs:
        if want[job.name] is None:
            rows.append(
                {
                    "command": job.command,
                    "job": job.name,
                    "moment": "clean run",
                    "class": "failed",
                    "killed_rc": None,
                    "left": "",
                    "rerun_rc": None,
                    "chain": job.chain,
                    "strays": [],
                    "diff": [],
                    "detail": "the uninterrupted run failed",
                }
            )
    return rows


def _last_line(text: str) -> str:
    lines = [l for l in text.replace("\r", "\n").splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""

"""Output paths of the newer commands (issue 24, items 6, 9 and 15): every output flag is checked before any
model loads or trains, an empty one is refused by name, a write that still fails later (full disk, read-only)
is one line naming the file, and a run removes the temporaries a killed run of it left behind.

The table runs through the real command line (:func:`tests.harness.run_cli_many`) with an empty
``MECHSCOPE_CACHE`` per row: a check made before the work leaves that cache untouched, because nothing was
loaded or trained.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mechscope.cli import main
from tests.harness import check_one_line_error, run_cli_many

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scrub"

# command → (argv that would run it, its folder flags, its file flags)
COMMANDS: dict[str, tuple[list[str], tuple[str, ...], tuple[str, ...]]] = {
    "detect": (["detect", "--benchmark", "backdoor-corner", "--detector", "knn"], ("--plots",), ("--report",)),
    "toy": (["toy", "tms", "--steps", "10"], ("--out",), ()),
    "scrub": (["scrub", str(EXAMPLES / "modadd-correct.yaml"), "--model", "zoo:modadd"], (), ("--report",)),
    "circuit": (["circuit", "--model", "zoo:induction", "--method", "eap"], (), ("--report", "--save")),
    "graph": (
        ["graph", "--model", "zoo:induction", "--prompt", "1 2 3", "--transcoders", "."],
        ("--out",),
        ("--viewer-json",),
    ),
    "llc": (["llc", "--model", "mlp", "--no-progress"], ("--out",), ()),
    "decompose": (["decompose", "--model", "toy:tms"], ("--out",), ()),
}


def bad_paths(root: Path, kind: str) -> dict[str, tuple[str, str]]:
    """Bad value → (what it is, regex of the one error line) for a ``kind`` ("folder" or "file") flag."""
    a_file = root / "a-file"
    return {
        "empty": ("", rf"is empty; give a {kind} path"),
        "wrong-kind": (
            (str(a_file), r"a-file is a file; give a folder")
            if kind == "folder"
            else (str(root), r"is a folder; give a file name")
        ),
        "under-a-file": (str(a_file / "sub" / "x.out"), r"a-file is a file, not a folder"),
        "unwritable": ("/proc/mechscope-out/x.out", r"cannot write in /proc"),
    }


def table(root: Path) -> list[tuple[str, list[str], str]]:
    rows = []
    for name, (argv, folders, files) in COMMANDS.items():
        for flag, kind in [(f, "folder") for f in folders] + [(f, "file") for f in files]:
            for bad, (value, match) in bad_paths(root, kind).items():
                rows.append((f"{name}{flag}-{bad}", [*argv, flag, value], rf"{flag} .*{match}"))
    # the older commands refuse an empty output path too (their other checks are tests/e2e/test_cli_errors.py)
    missing, site = str(root / "missing"), ["--site", "resid_post.1"]
    for name, argv, flag, kind in [
        ("harvest", ["harvest", *site], "--out", "folder"),
        ("train", ["train", "--store", missing, *site], "--out", "folder"),
        ("evaluate", ["evaluate", "--sae", missing, "--store", missing, *site], "--results", "file"),
        ("frontier", ["frontier", "--sae", missing, "--store", missing, *site], "--out", "folder"),
        ("report", ["report", "--sae", missing, "--store", missing, *site], "--out", "file"),
        ("demo", ["demo"], "--out", "folder"),
    ]:
        rows.append((f"{name}{flag}-empty", [*argv, flag, ""], rf"{flag} is empty; give a {kind} path"))
    # scrub keeps its table beside the page: a folder in the sidecar's place is refused before the work too
    (root / "page.html.scrub.json").mkdir()
    rows.append(
        (
            "scrub-sidecar-folder",
            [*COMMANDS["scrub"][0], "--report", str(root / "page.html")],
            r"--report .*page\.html\.scrub\.json is a folder",
        )
    )
    return rows


@pytest.mark.slow
def test_every_output_flag_is_checked_before_the_work(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    rows = table(tmp_path)
    assert set(COMMANDS) <= {r[1][0] for r in rows} and len(rows) == 4 * 10 + 6 + 1
    caches = [tmp_path / f"cache-{i}" for i in range(len(rows))]
    procs = run_cli_many(
        [(argv, {"MECHSCOPE_CACHE": str(c)}) for (_, argv, _), c in zip(rows, caches)], cwd=str(tmp_path)
    )
    failures = []
    for (name, _argv, match), proc, cache in zip(rows, procs, caches):
        try:
            check_one_line_error(proc, match, 2)
            assert not cache.exists() or not any(cache.rglob("*")), f"the work started: {sorted(cache.rglob('*'))[:5]}"
        except AssertionError as err:
            failures.append(f"--- {name}: {err}")
    assert not failures, f"{len(failures)} of {len(rows)} rows failed:\n" + "\n".join(failures)
    # nothing was written: not into the current folder (the empty paths), not beside the bad paths
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a-file", "page.html.scrub.json", *[c.name for c in caches if c.exists()]]
    )


def _fail_writes_under(monkeypatch, root: Path, code: int) -> None:
    """Every ``Path.write_bytes`` below ``root`` fails with ``code`` (a disk that filled up or went read-only
    while the command worked); writes elsewhere (the model cache) go through."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if str(self).startswith(str(root)):
            raise OSError(code, os.strerror(code))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


LATE = {  # cheap runs of the commands that need no zoo model, each with its output folder last
    "toy": ["toy", "tms", "--steps", "20", "--instances", "1", "--batch-size", "64", "--json", "--out"],
    "llc": [
        "llc",
        "--model",
        "mlp",
        "--no-calibrate",
        "--epsilon",
        "3e-4",
        "--gamma",
        "100",
        "--chains",
        "2",
        "--draws",
        "20",
        "--burn-in",
        "5",
        "--no-progress",
        "--out",
    ],
}


@pytest.mark.parametrize("command,code", [("toy", errno.ENOSPC), ("llc", errno.EROFS), ("toy", errno.EACCES)])
def test_a_write_that_fails_after_the_work_is_one_line_naming_the_file(command, code, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _fail_writes_under(monkeypatch, out, code)
    assert main([*LATE[command], str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mechscope: error:")]
    assert len(err) == 1 and f"cannot write {out}/" in err[0] and os.strerror(code) in err[0], err
    assert not out.exists() or not list(out.rglob("*.tmp"))


STALE = {  # a run of each command that leaves temporaries when killed: (argv, its output folder last; the files it writes)
    "llc": (LATE["llc"], ["llc.json", "llc_traces.png", "report.html"]),
    "decompose": (
        ["decompose", "--model", "toy:tms", "--steps", "60", "--restarts", "1", "--json", "--out"],
        [
            "coactivation.png",
            "decompose.json",
            "losses.png",
            "probe-importances.png",
            "report.html",
            "spd-checkpoint.safetensors",
            "spd-log.jsonl",
        ],
    ),
}


@pytest.mark.parametrize("command", list(STALE))
def test_a_run_removes_the_temporaries_a_killed_run_left(command, tmp_path, capsys):
    argv, written = STALE[command]
    out = tmp_path / "out"
    out.mkdir()
    stale = [f"{written[0]}.a1b2c3d4.tmp", f"{written[-1]}.zz_9y8x7.tmp", "report.html.q1w2e3r4.tmp"]
    kept = ["notes.txt", "mine.json.a1b2c3d4.tmp", f"{written[0]}.tmp"]
    for name in stale + kept:
        (out / name).write_text("left over")
    assert main([*argv, str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted(kept + written)

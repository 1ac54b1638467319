"""The tests' machinery (also used by scripts/): small always-present material (no downloads), the real command
line run in subprocesses or forked from one server, the kill-and-resume harness and the one-line-error checks.
Not part of the package: nothing under src/ imports it."""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL_TEXT = str(STDLIB / "email" / "*.py")
"""A small text source on every machine: the sources of the standard library's email package."""


def perturbed_sae(arch: str, d_in: int, latents: int, k: int = 4, seed: int = 1, scale: float = 0.3):
    """An SAE of a registered architecture with every parameter moved off its initial value (as after
    training) and a non-trivial threshold where the architecture has one; for file round-trip tests."""
    import torch

    from mechscope.sae import REGISTRY

    cls = REGISTRY[arch]
    kw = {"k": k} if "k" in cls.config_cls.__dataclass_fields__ else {}
    sae = cls(cls.config_cls(d_in=d_in, latents=latents, **kw), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        threshold = getattr(sae, "threshold", None)
        if isinstance(threshold, torch.Tensor):
            # Per-latent thresholds vary; a single (batch) threshold is set well above zero.
            threshold.copy_(
                2 * scale / 3 * torch.rand(threshold.shape, generator=g)
                if threshold.numel() > 1
                else torch.full_like(threshold, 4 * scale / 3)
            )
    return sae.eval()


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300.0, cwd: str | None = None):
    """Run the real ``mechscope`` command in a subprocess; returns the ``CompletedProcess`` (text)."""
    import sys

    return _run([sys.executable, "-m", "mechscope.cli", *args], env, timeout, cwd)


def _run(cmd: list[str], env: dict[str, str] | None, timeout: float, cwd: str | None = None):
    import os
    import subprocess

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_and_two_ranks(argv: list[str], timeout: float = 300.0) -> tuple[dict, dict]:
    """The ``--json`` outputs of ``mechscope ARGV`` in one process and under torchrun with two CPU ranks (gloo), for
    the tests that check a distributed run prints what one process prints. Fails unless both exit 0 and each prints
    one line (rank 0 prints; rank 1 prints nothing)."""
    import json

    runs = [torchrun_cli(argv, ranks, timeout=timeout) for ranks in (0, 2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:] + runs[1].stderr[-3000:]
    one, two = (r.stdout.strip().splitlines() for r in runs)
    assert len(one) == 1 and len(two) == 1, (one, two)
    return json.loads(one[0]), json.loads(two[0])


def run_cli_many(
    cases: list,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
    case_timeout: int = 120,
    cwd: str | None = None,
):
    """Run the real ``mechscope`` command once per case, each in its own process, one after another;
    returns one ``CompletedProcess`` (text) per case, in order. A case is an argv list, or a pair
    (argv, extra environment variables for that run only).

    One interpreter imports torch and every command module once, then forks a child per case; the
    child runs :func:`mechscope.cli.main` as ``python -m mechscope.cli`` would (uncaught exceptions
    print their traceback, exit 1) with its stdout and stderr in files. A table of dozens of bad
    inputs then costs one start-up instead of one per row. A child is killed after ``case_timeout`` s.
    """
    import json
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cases = [c if isinstance(c, tuple) else (c, {}) for c in cases]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(case_timeout)],
        input=json.dumps(cases),
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the fork server failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    done = []
    for (args, _), r in zip(cases, json.loads(proc.stdout)):
        done.append(subprocess.CompletedProcess(args, r["rc"], r["stdout"], r["stderr"]))
        done[-1].wall_s, done[-1].cpu_s = r["wall_s"], r["cpu_s"]  # type: ignore[attr-defined]
    return done


def _fork_server(case_timeout: int) -> None:
    """``python tests/harness.py``: read a JSON list of [argv, env] on stdin, run each in a forked
    child, print a JSON list of {rc, stdout, stderr, wall_s, cpu_s}."""
    import importlib
    import json
    import os
    import signal
    import sys
    import tempfile
    import time
    import traceback

    from mechscope import cli

    for target, _ in cli.COMMANDS.values():
        importlib.import_module(target.split(":")[0])
    # What loading a Llama-family model imports (SmolLM2 and the tests' tiny model): once, not per row.
    for name in (
        "transformers.models.auto.modeling_auto",
        "transformers.models.llama.modeling_llama",
        "transformers.tokenization_utils_fast",
        "mechscope.models.loading",
    ):
        importlib.import_module(name)
    cases = json.loads(sys.stdin.read())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (argv, extra_env) in enumerate(cases):
            paths = [os.path.join(tmp, f"{i}.{name}") for name in ("out", "err")]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: one CLI run, then exit without returning into the server
                code = 1
                try:
                    for fd, path in zip((1, 2), paths):
                        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
                    os.environ.update(extra_env)
                    signal.alarm(case_timeout)
                    sys.argv = ["mechscope", *argv]
                    try:
                        code = cli.main(argv)
                    except SystemExit as e:  # argparse, or a SystemExit with a message
                        if isinstance(e.code, str):
                            print(e.code, file=sys.stderr)
                        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                    except BaseException:
                        traceback.print_exc()
                        code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(int(code or 0))
            t0 = time.perf_counter()
            _, status, usage = os.wait4(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            out, err = (open(p, errors="replace").read() for p in paths)
            results.append(
                {
                    "rc": rc,
                    "stdout": out,
                    "stderr": err,
                    "wall_s": time.perf_counter() - t0,
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                }
            )
    print(json.dumps(results))


def file_digests(folder: str | Path, skip: tuple[str, ...] = (".tmp",)) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path → hex digest), leaving out names ending in ``skip``."""
    import hashlib

    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(skip)
    }


def torchrun(ranks: int) -> list[str]:
    """The command that starts a Python file or ``-m module`` on ``ranks`` CPU processes under ``torchrun
    --standalone``, or as one plain process when ``ranks`` is 0."""
    import sys

    if not ranks:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]


def torchrun_script(script: str | Path, args: list[str], ranks: int, *, timeout: float = 180.0, **env: str):
    """Run the Python file ``script`` with ``args`` under :func:`torchrun` (gloo on the loopback, one thread each);
    ``env`` is added to the environment (e.g. ``MECHSCOPE_FAULT``). Returns the CompletedProcess (text stdout and
    stderr)."""
    return _run([*torchrun(ranks), str(script), *args], {"GLOO_SOCKET_IFNAME": "lo", **env}, timeout)


def torchrun_cli(argv: list[str], ranks: int, *, timeout: float = 300.0, **env: str):
    """Run the real ``mechscope`` command with ``argv`` under :func:`torchrun` (one plain process when ``ranks`` is 0),
    as :func:`torchrun_script` runs a file. Returns the CompletedProcess (text stdout and stderr)."""
    return torchrun_script("-m", ["mechscope.cli", *argv], ranks, timeout=timeout, **env)


def kill_and_resume(
    argv: Callable[[Path], list[str]],
    root: Path,
    faults: list[str],
    result: Callable[[Path], dict[str, str]],
    describe: Callable[[Path], str],
) -> list[dict]:
    """Kill a real ``mechscope`` run at each fault point (``$MECHSCOPE_FAULT``, see :mod:`mechscope.faults`),
    re-run the same command, and compare with an uninterrupted run.

    ``argv(out)`` is the command writing to folder ``out``; ``result(out)`` the digests that must match;
    ``describe(out)`` says what the killed run left on disk. Returns one dict per fault: fault, killed
    (the first run died of SIGKILL), on_disk, resumed_rc, identical, diff (the result files that differ), and the
    stderr of a failed run.
    """
    from mechscope.faults import ENV

    outs = [root / f"kill-{i}" for i in range(len(faults))]
    first = run_cli_many([(argv(root / "whole"), {})] + [(argv(o), {ENV: f}) for o, f in zip(outs, faults)])
    if first[0].returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{first[0].stderr[-3000:]}")
    on_disk = [describe(o) for o in outs]
    again = run_cli_many([argv(o) for o in outs])
    want = result(root / "whole")
    rows = []
    for f, o, killed, resumed, disk in zip(faults, outs, first[1:], again, on_disk):
        got = result(o) if resumed.returncode == 0 else {}
        rows.append(
            {
                "fault": f,
                "killed": killed.returncode == -9,
                "on_disk": disk,
                "resumed_rc": resumed.returncode,
                "identical": got == want,
                "digest": _combined(got),
                "diff": sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k)),
                "stderr": "" if resumed.returncode == 0 else resumed.stderr[-2000:],
            }
        )
    return rows


def safetensors_content_digest(
    path: str | Path, skip_tensors: tuple[str, ...] = (), skip_metadata: tuple[str, ...] = ()
) -> str:
    """sha256 of a safetensors file's content: its metadata items sorted by key, then each tensor's name and
    bytes in name order. Used instead of the file's bytes because safetensors writes metadata keys in the order
    of a Rust HashMap, which changes from process to process once a file has two or more keys."""
    import hashlib

    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        h.update(repr(sorted((k, v) for k, v in (f.metadata() or {}).items() if k not in skip_metadata)).encode())
        for key in sorted(k for k in f.keys() if k not in skip_tensors):
            h.update(key.encode())
            h.update(f.get_tensor(key).numpy().tobytes())
    return h.hexdigest()


def train_result_digests(out: str | Path, arch: str = "topk") -> dict[str, str]:
    """What a finished ``mechscope train`` run must reproduce after a resume: sha256 of the saved SAE's
    ``cfg.json`` and ``eval.json``, and the content digests (:func:`safetensors_content_digest`) of
    ``sae.safetensors`` and of the final checkpoint, the latter without ``rng.torch`` and the recorded tensor
    digest that covers it. ``rng.torch`` is the process's global RNG state, which no training step draws
    from; it differs between interpreters that imported different modules, not between runs."""
    from mechscope.digest import DIGEST_KEY

    out = Path(out)
    d = file_digests(out)
    got = {k: v for k, v in d.items() if k in (f"{arch}/cfg.json", f"{arch}/eval.json")}
    if (out / arch / "sae.safetensors").is_file():
        got[f"{arch}/sae.safetensors (content)"] = safetensors_content_digest(out / arch / "sae.safetensors")
    ckpt = out / "checkpoint.safetensors"
    if ckpt.is_file():
        got["checkpoint.safetensors (without rng.torch)"] = safetensors_content_digest(
            ckpt, skip_tensors=("rng.torch",), skip_metadata=(DIGEST_KEY,)
        )
    return got


def _combined(digests: dict[str, str]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()[:12] if digests else "-"


def describe_output(out: Path) -> str:
    """What a killed harvest or train left in ``out``: manifest state or checkpoint step, and the files."""
    import json

    out = Path(out)
    if not out.exists():
        return "no folder"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    parts = []
    if (out / "manifest.json").is_file():
        m = json.loads((out / "manifest.json").read_text())
        parts.append(f"manifest lists {len(m['shards'])} shard(s), {'complete' if m['complete'] else 'incomplete'}")
    if (out / "checkpoint.safetensors").is_file():
        from mechscope.checkpoint import read

        parts.append(f"checkpoint at step {read(out / 'checkpoint.safetensors')[1]['step']}")
    shards = [f for f in files if f.endswith(".safetensors") and f.startswith(("train-", "val-"))]
    if shards:
        parts.append(f"{len(shards)} shard file(s)")
    saved = [f for f in files if "/" in f and not f.endswith(".tmp")]
    if saved:
        parts.append("saved: " + ", ".join(saved))
    tmp = [f for f in files if f.endswith(".tmp")]
    if tmp:
        parts.append(f"{len(tmp)} *.tmp ({', '.join(t.split('.')[0] for t in tmp)})")
    return "; ".join(parts) or "empty folder"


def check_one_line_error(proc, match: str, code: int = 1) -> str:
    """Check a finished CLI run failed the way a user error must (see :func:`assert_one_line_error`)."""
    import re

    args = proc.args
    lines = [
        l for l in proc.stderr.replace("\r", "\n").splitlines() if l.strip() and "it/s" not in l and "s/it" not in l
    ]
    detail = f"args={args}\nrc={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, detail
    assert proc.returncode == code, detail
    errors = [l for l in lines if ": error:" in l]  # argparse may print its usage line above the error
    assert len(errors) == 1, detail
    assert re.search(match, errors[0]), f"{errors[0]!r} does not match {match!r}\n{detail}"
    return errors[0]


def assert_one_line_error(args: list[str], match: str, *, code: int = 1, **kwargs) -> str:
    """Run the CLI and check that it fails the way a user error must: exit ``code``, no traceback,
    and exactly one stderr line ``mechscope…: error: …`` containing ``match`` (a regex).
    Returns that line. Progress bars (lines ending in a carriage return) are ignored."""
    return check_one_line_error(run_cli(args, **kwargs), match, code)


if __name__ == "__main__":
    import sys

    # Run by path, this file puts tests/ first on sys.path; the repository root goes there instead, so a case can name
    # code of the tests (a scrub feature ``tests.e2e.test_scrub_cli:explodes``) as ``python -m mechscope.cli`` run
    # from the root would (run_cli does that).
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    _fork_server(int(sys.argv[1]) if len(sys.argv) > 1 else 120)

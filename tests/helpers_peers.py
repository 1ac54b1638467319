"""The peer packages of the interoperability tests: each in its own venv built by a ``.ci/setup-*`` script, run
in a subprocess that writes what the package computed to ``out.safetensors`` beside the inputs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file


def peer_python(env_var: str, venv: str) -> Path:
    """The peer's interpreter: ``$env_var``, else ``/tmp/mechscope-peers/<venv>/bin/python``."""
    return Path(os.environ.get(env_var, f"/tmp/mechscope-peers/{venv}/bin/python"))


PEERS_WAIT_S = float(os.environ.get("MECHSCOPE_PEERS_WAIT_S", "1800"))
"""How long a peer test waits for its venv while .ci/run is still building it."""


def _wait_for_setup(setup: str) -> int | None:
    """The exit status of ``.ci/<setup>`` when .ci/run builds the peer venvs beside the tests
    (``$MECHSCOPE_PEERS_PENDING/<peer>.rc``, waited for up to :data:`PEERS_WAIT_S`); None when nothing is pending."""
    pending = os.environ.get("MECHSCOPE_PEERS_PENDING")
    if not pending:
        return None
    rc_file = Path(pending) / (setup.removeprefix("setup-") + ".rc")
    deadline = time.monotonic() + PEERS_WAIT_S
    while not rc_file.exists():
        if time.monotonic() > deadline:
            pytest.fail(f".ci/{setup} did not finish within {PEERS_WAIT_S:g} s (no {rc_file})")
        time.sleep(1)
    return int(rc_file.read_text().strip() or "1")


def require_peer(python: Path, package: str, setup: str, env_var: str) -> None:
    """Skip without the peer venv, but only outside CI: in CI (CI set) its absence is a failure. While .ci/run is
    still building the venv, wait for it first (:func:`_wait_for_setup`)."""
    rc = _wait_for_setup(setup)
    if rc not in (None, 0):
        pytest.fail(
            f"CI must run the {package} interoperability test: .ci/{setup} exited {rc} (its log is printed "
            "at the end of .ci/run)"
        )
    if python.exists():
        return
    why = f"no {package} venv at {python} (run .ci/{setup} or set {env_var})"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the {package} interoperability test: {why}")
    pytest.skip(why)


def run_peer(python: Path, script: str, root: Path, *args: object, timeout: int = 120) -> dict:
    """Run ``script`` with the peer's python (argv: root, *args) and return the tensors it saved in root/out.safetensors."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    run = subprocess.run(
        [str(python), "-c", script, str(root), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return load_file(str(root / "out.safetensors"))

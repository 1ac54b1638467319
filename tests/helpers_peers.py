"""The peer packages of the interoperability tests: each in its own venv built by a ``.ci/setup-*`` script, run
in a subprocess that writes what the package computed to ``out.safetensors`` beside the inputs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file


def peer_python(env_var: str, venv: str) -> Path:
    """The peer's interpreter: ``$env_var``, else ``/tmp/mechscope-peers/<venv>/bin/python``."""
    return Path(os.environ.get(env_var, f"/tmp/mechscope-peers/{venv}/bin/python"))


def require_peer(python: Path, package: str, setup: str, env_var: str) -> None:
    """Skip without the peer venv, but only outside CI: in CI (CI set) its absence is a failure."""
    if python.exists():
        return
    why = f"no {package} venv at {python} (run .ci/{setup} or set {env_var})"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the {package} interoperability test: {why}")
    pytest.skip(why)


def run_peer(python: Path, script: str, root: Path, *args: object, timeout: int = 120) -> dict:
    """Run ``script`` with the peer's python (argv: root, *args) and return the tensors it saved in root/out.safetensors."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    run = subprocess.run([str(python), "-c", script, str(root), *map(str, args)], env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    return load_file(str(root / "out.safetensors"))

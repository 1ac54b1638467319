"""The zoo's cache: one folder per model, trained once per recipe and loaded strictly.

Layout under ``<mechscope cache>/zoo/<name>/`` (the cache dir is ``$MECHSCOPE_CACHE``, else the XDG cache):

- ``recipe.json``     ``{"format", "name", "digest", "config", "history", "metrics"}``
- ``model.safetensors``   final weights; metadata ``{"digest": …}``
- ``checkpoints/step_<step:07d>.safetensors``   weights along training (metadata ``{"digest", "step"}``)

The digest is the SHA-256 of the recipe's name, its config as JSON and :data:`RECIPE_FORMAT` (bumped when
the training code changes what a recipe produces), so a changed recipe retrains. Training writes a new
folder beside the old one and renames it into place (a crash leaves the old model or none, never half of
one) under an exclusive file lock, so two processes asking for the same model train it once.

Loading is strict: every tensor must be a parameter of the recipe's architecture with its shape, every
parameter must be present and the digest must match; anything else is refused with the fix named.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from mechscope.atomic import atomic_write_json, save_safetensors
from mechscope.config import to_dict
from mechscope.errors import MechscopeError
from mechscope.models.loading import cache_dir

RECIPE_FORMAT = 1


class ZooCacheError(MechscopeError):
    """A zoo folder that is not what its recipe would produce (corrupt, foreign or from another recipe)."""


def zoo_dir(name: str) -> Path:
    return cache_dir() / "zoo" / name


def digest(name: str, config: object) -> str:
    blob = json.dumps({"name": name, "config": to_dict(config), "format": RECIPE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_recipe(name: str) -> dict | None:
    """The cached ``recipe.json`` of ``name``, or None when the model was never trained here."""
    path = zoo_dir(name) / "recipe.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZooCacheError(f"{path} is unreadable ({e}); delete {path.parent} or run `mechscope zoo train {name} --force`") from e


def is_current(name: str, config: object) -> bool:
    rec = read_recipe(name)
    return rec is not None and rec.get("digest") == digest(name, config) and (zoo_dir(name) / "model.safetensors").is_file()


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock on one zoo model (blocks while another process trains it)."""
    path = cache_dir() / "zoo" / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def new_folder(name: str) -> Iterator[Path]:
    """A fresh folder beside ``zoo/<name>`` that replaces it when the block ends without error."""
    target = zoo_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        (tmp / "checkpoints").mkdir()
        yield tmp
        old = target.with_name(f".{name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_weights(path: Path, model: nn.Module, dig: str, step: int | None = None) -> None:
    meta = {"digest": dig} if step is None else {"digest": dig, "step": str(step)}
    save_safetensors(path, {k: v for k, v in model.state_dict().items()}, metadata=meta)


def write_recipe(folder: Path, name: str, config: object, history: list, metrics: dict) -> None:
    atomic_write_json(folder / "recipe.json", {"format": RECIPE_FORMAT, "name": name, "digest": digest(name, config),
                                               "config": to_dict(config), "history": history, "metrics": metrics})


def load_weights(path: Path, model: nn.Module, dig: str, name: str) -> nn.Module:
    """Load ``path`` into ``model`` strictly (names, shapes, digest); returns the model in eval mode."""
    fix = f"delete {zoo_dir(name)} or run `mechscope zoo train {name} --force`"
    if not path.is_file():
        raise ZooCacheError(f"{path} is missing; {fix}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ZooCacheError(f"{path} is not a readable safetensors file ({e}); {fix}") from e
    if meta.get("digest") != dig:
        raise ZooCacheError(f"{path} was written by another recipe (digest {meta.get('digest', 'none')[:12]}, expected {dig[:12]}); {fix}")
    own = model.state_dict()
    unknown, missing = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
    if unknown or missing:
        raise ZooCacheError(f"{path}: unknown tensors {unknown[:5]}, missing tensors {missing[:5]}; {fix}")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise ZooCacheError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the recipe needs {tuple(own[k].shape)}; {fix}")
    model.load_state_dict(tensors, strict=True)
    return model.eval()

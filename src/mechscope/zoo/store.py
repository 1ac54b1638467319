"""The zoo's place in the cache (:mod:`mechscope.cache`): one folder per model, trained once per recipe.

Layout under ``<mechscope cache>/zoo/<name>/``:

- ``recipe.json``     ``{"format", "name", "digest", "config", "history", "metrics"}``
- ``model.safetensors``   final weights; metadata: the tensors' digest, ``recipe`` (the recipe digest) and
  ``record`` (the digest of recipe.json's history and metrics, so edited metrics are caught too)
- ``checkpoints/step_<step:07d>.safetensors``   weights along training (metadata: tensors' digest, ``recipe``, ``step``)

The recipe digest is the SHA-256 of the recipe's name, its config as JSON and :data:`RECIPE_FORMAT` (bumped
when the training code changes what a recipe produces, or the files change), so a changed recipe retrains.
Training builds a new folder beside the old one and renames it into place under the model's lock.

Loading is strict: every file is read by :func:`mechscope.cache.read_tensors` (its tensors' digest and
recipe must match) and every tensor must be a parameter of the recipe's architecture with its shape;
anything else is refused with ``mechscope zoo train <name> --force`` named.

recipe.json is checked whole, with no digest of its own: ``history`` and ``metrics`` against the ``record``
digest in model.safetensors, and the rest (``format``, ``name``, ``config``, ``digest``, and no other key) against
the recipe digest, which hashes exactly those values. An edited, truncated or renamed key, or a changed digit,
is therefore refused by name like damaged weights. No new field had to be recorded for this, so every cache
written since :data:`RECIPE_FORMAT` 2 is checked in full and none has to be retrained. recipe.json is the only
JSON the cache keeps beside weights.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from mechscope import cache
from mechscope.atomic import atomic_write_json
from mechscope.config import to_dict
from mechscope.digest import json_digest

RECIPE_FORMAT = 2
"""2: every file carries its tensors' digest (format 1 had none and is trained again)."""

ZooCacheError = cache.CacheError


def zoo_dir(name: str) -> Path:
    return cache.cache_dir() / "zoo" / name


def fix(name: str) -> str:
    return f"run `mechscope zoo train {name} --force` to train it again"


def digest(name: str, config: object) -> str:
    return json_digest({"name": name, "config": to_dict(config), "format": RECIPE_FORMAT})


def _record(history: list, metrics: dict) -> str:
    return json_digest({"history": history, "metrics": metrics})


def read_recipe(name: str) -> dict | None:
    """The cached ``recipe.json`` of ``name``, or None when the model was never trained here."""
    path = zoo_dir(name) / "recipe.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ZooCacheError(f"{path} is unreadable ({e}); {fix(name)}") from e
    if not isinstance(rec, dict):
        raise ZooCacheError(f"{path} is not a JSON object; {fix(name)}")
    return rec


def is_current(name: str, config: object) -> bool:
    """The cache holds ``name`` trained by this recipe (its files are checked when read, or by :func:`check`)."""
    rec = read_recipe(name)
    return (
        rec is not None
        and rec.get("digest") == digest(name, config)
        and (zoo_dir(name) / "model.safetensors").is_file()
    )


def check(name: str, config: object) -> None:
    """Read every file of the cached ``name`` as :func:`load_weights` would (final weights, each checkpoint of
    the history, the record of recipe.json); raises :class:`ZooCacheError` on the first that fails."""
    folder, dig = zoo_dir(name), digest(name, config)
    rec = read_recipe(name) or {}
    read(folder / "model.safetensors", name, dig, rec)
    for h in rec.get("history", []):
        read(folder / "checkpoints" / f"step_{int(h['step']):07d}.safetensors", name, dig, step=int(h["step"]))


def state(name: str, config: object) -> tuple[str, str | None]:
    """("trained" | "not trained" | "damaged", the problem or None) of ``name`` under ``config``."""
    try:
        if not is_current(name, config):
            return "not trained", None
        check(name, config)
    except ZooCacheError as e:
        return "damaged", str(e)
    return "trained", None


def locked(name: str):
    """An exclusive lock on one zoo model (blocks while another process trains it)."""
    return cache.locked(zoo_dir(name))


@contextlib.contextmanager
def new_folder(name: str) -> Iterator[Path]:
    """A fresh folder (with ``checkpoints/``) that replaces ``zoo/<name>`` when the block ends without error."""
    with cache.new_folder(zoo_dir(name)) as folder:
        (folder / "checkpoints").mkdir()
        yield folder


def save_weights(
    path: Path, model: nn.Module, dig: str, step: int | None = None, record: tuple[list, dict] | None = None
) -> None:
    meta = {"recipe": dig}
    if step is not None:
        meta["step"] = str(step)
    if record is not None:
        meta["record"] = _record(*record)
    cache.save_tensors(path, model.state_dict(), meta)


def write_recipe(folder: Path, name: str, config: object, history: list, metrics: dict) -> None:
    atomic_write_json(
        folder / "recipe.json",
        {
            "format": RECIPE_FORMAT,
            "name": name,
            "digest": digest(name, config),
            "config": to_dict(config),
            "history": history,
            "metrics": metrics,
        },
    )


RECIPE_KEYS = ("format", "name", "digest", "config", "history", "metrics")
"""The keys of recipe.json, all of them required (see the module docstring)."""


def check_recipe(path: Path, rec: dict, name: str, dig: str) -> None:
    """Refuse a recipe.json whose keys or recipe fields (format, name, config, digest) are not those the recipe
    digest ``dig`` was computed from (history and metrics are checked against the weights by :func:`read`)."""
    keys = sorted(rec)
    if keys != sorted(RECIPE_KEYS):
        raise ZooCacheError(
            f"{path}: keys {', '.join(keys)} are not those mechscope writes ({', '.join(RECIPE_KEYS)}); {fix(name)}"
        )
    if (
        rec["digest"] != dig
        or json_digest({"name": rec["name"], "config": rec["config"], "format": rec["format"]}) != dig
    ):
        raise ZooCacheError(
            f"{path}: its format, name, config or digest differ from those the model was trained "
            f"with (edited after training); {fix(name)}"
        )


def read(path: Path, name: str, dig: str, rec: dict | None = None, step: int | None = None) -> dict:
    """The tensors of one zoo file, checked (digest, recipe; with ``rec``, the whole of recipe.json: its recipe
    fields by :func:`check_recipe`, its history and metrics against the record; with ``step``, the checkpoint's step)."""
    expect = {"recipe": dig} if step is None else {"recipe": dig, "step": str(step)}
    tensors, meta = cache.read_tensors(path, fix(name), expect)
    if rec is not None:
        check_recipe(path.parent / "recipe.json", rec, name, dig)
    if rec is not None and meta.get("record") != _record(rec.get("history", []), rec.get("metrics", {})):
        raise ZooCacheError(
            f"{path.parent / 'recipe.json'}: history or metrics differ from those recorded with "
            f"{path.name} (edited after training); {fix(name)}"
        )
    return tensors


def load_weights(
    path: Path, model: nn.Module, dig: str, name: str, rec: dict | None = None, step: int | None = None
) -> nn.Module:
    """Load ``path`` into ``model`` strictly (digest, recipe, names, shapes; see :func:`read` for ``rec`` and
    ``step``); returns the model in eval mode."""
    return cache.load_state(model, read(path, name, dig, rec, step), path, fix(name))

"""The zoo: small transformers trained here by deterministic recipes, whose mechanisms are known.

- ``parens``     balanced-parentheses classifier (3 layers, bidirectional) — :mod:`mechscope.zoo.parens`
- ``modadd``     (a + b) mod 113, one layer, grokked, with checkpoints along training — :mod:`~mechscope.zoo.modadd`
- ``induction``  two-layer attention-only induction model — :mod:`~mechscope.zoo.induction`

All three are :class:`~mechscope.zoo.transformer.ZooTransformer` (``forward(tokens [B, T]) -> logits [B, T, V]``)
with a site per head (``blocks.L.attn.heads.H.{q_in,k_in,v_in,q,k,v,pattern,z,result}``).

>>> zm = load_zoo("modadd")            # trains once (progress bar on stderr), then loads from the cache
>>> zm.model, zm.task, zm.config       # nn.Module in eval mode, its mechscope.task.Task, the frozen recipe
>>> zoo_checkpoints("modadd")          # [(step, path), ...] ascending
>>> load_zoo_checkpoint("modadd", step)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mechscope.errors import UsageError
from mechscope.task import Task
from mechscope.zoo import store
from mechscope.zoo.induction import InductionConfig
from mechscope.zoo.modadd import ModAddConfig
from mechscope.zoo.parens import ParensConfig
from mechscope.zoo.recipe import TrainRecipe, train
from mechscope.zoo.transformer import TransformerShape, ZooTransformer

__all__ = [
    "ZOO",
    "ZooModel",
    "ZooTransformer",
    "TransformerShape",
    "load_zoo",
    "train_zoo",
    "zoo_checkpoints",
    "load_zoo_checkpoint",
    "ZooCacheError",
]

ZooCacheError = store.ZooCacheError

ZOO: dict[str, TrainRecipe] = {
    "parens": ParensConfig(),
    "modadd": ModAddConfig(),
    "induction": InductionConfig(),
}
"""name → default recipe (a frozen config whose class knows the model's shape and task)."""


@dataclass
class ZooModel:
    """A trained zoo model with its task and the recipe that made it."""

    name: str
    model: nn.Module
    task: Task
    config: TrainRecipe
    metrics: dict[str, float] = field(default_factory=dict)
    """Final train/val loss and accuracy, plus the recipe's own metrics (e.g. induction's first_half_loss)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Loss and accuracy at each checkpoint step."""


def _recipe(name: str, config: TrainRecipe | None) -> TrainRecipe:
    if name not in ZOO:
        raise UsageError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO)}")
    return ZOO[name] if config is None else config


def _fresh(cfg: TrainRecipe) -> ZooTransformer:
    torch.manual_seed(cfg.seed)
    return ZooTransformer(cfg.shape())  # type: ignore[attr-defined]


def train_zoo(name: str, config: TrainRecipe | None = None, force: bool = False, progress: bool = True) -> ZooModel:
    """Train ``name`` by its recipe (one thread, deterministic) into the cache unless the cache already holds
    it intact (every file passes its digest check: a damaged cache is trained again)."""
    cfg = _recipe(name, config)
    with store.locked(name):
        if force or store.state(name, cfg)[0] != "trained":
            _train(name, cfg, progress)
    return load_zoo(name, cfg, train_if_missing=False)


def _train(name: str, cfg: TrainRecipe, progress: bool) -> None:
    dig = store.digest(name, cfg)
    task = cfg.make_task()  # type: ignore[attr-defined]
    model = _fresh(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with store.new_folder(name) as folder:
            history = train(
                model,
                task,
                cfg,
                lambda step, m: store.save_weights(
                    folder / "checkpoints" / f"step_{step:07d}.safetensors", m, dig, step
                ),
                progress=progress,
                desc=f"zoo {name}",
            )
            # the last checkpoint is the final step: its train/val numbers are the final ones
            final = {k: v for k, v in history[-1].items() if k != "step"}
            assert history[-1]["step"] == cfg.steps, "train() always evaluates the final step"
            metrics = {**final, **cfg.extra_metrics(model, task)}
            store.save_weights(folder / "model.safetensors", model, dig, record=(history, metrics))
            store.write_recipe(folder, name, cfg, history, metrics)
    finally:
        torch.set_num_threads(threads)


def load_zoo(name: str, config: TrainRecipe | None = None, train_if_missing: bool = True) -> ZooModel:
    """The zoo model ``name`` (default recipe unless ``config``), training it first if the cache lacks it.
    A cached model whose files fail their checks is refused (:class:`ZooCacheError`), not retrained."""
    cfg = _recipe(name, config)
    if not store.is_current(name, cfg):
        if not train_if_missing:
            raise store.ZooCacheError(
                f"zoo model {name!r} is not trained for this recipe; run `mechscope zoo train {name}`"
            )
        return train_zoo(name, cfg)
    rec = store.read_recipe(name) or {}
    model = store.load_weights(
        store.zoo_dir(name) / "model.safetensors", _fresh(cfg), store.digest(name, cfg), name, rec
    )
    return ZooModel(name, model, cfg.make_task(), cfg, rec.get("metrics", {}), rec.get("history", []))  # type: ignore[attr-defined]


def zoo_checkpoints(name: str, config: TrainRecipe | None = None) -> list[tuple[int, Path]]:
    """(training step, safetensors path) of every checkpoint kept for ``name``, ascending (trains if needed)."""
    cfg = _recipe(name, config)
    if not store.is_current(name, cfg):
        train_zoo(name, cfg)
    folder = store.zoo_dir(name) / "checkpoints"
    return sorted((int(p.stem.split("_")[1]), p) for p in folder.glob("step_*.safetensors"))


def load_zoo_checkpoint(name: str, step: int, config: TrainRecipe | None = None) -> nn.Module:
    """The model of ``name`` as it was at training ``step`` (eval mode); the step must be a kept checkpoint."""
    cfg = _recipe(name, config)
    kept = dict(zoo_checkpoints(name, cfg))
    if step not in kept:
        raise UsageError(f"zoo model {name!r} has no checkpoint at step {step}; kept steps: {sorted(kept)}")
    return store.load_weights(kept[step], _fresh(cfg), store.digest(name, cfg), name, step=step)

"""What ``mechscope llc --model SPEC`` estimates λ̂ on: a model at w*, its loss, its data, and
optionally its training checkpoints. Sources are a registry (spec prefix → builder):

- ``mlp`` — a small teacher–student MLP trained here in a few seconds (inputs N(0, I), labels from a random
  teacher MLP, cross-entropy), with checkpoints kept along training; a self-contained example of the
  generic path and what the checkpoint tests use.
- ``zoo:NAME`` — a model of the mechscope zoo (``mechscope.zoo``), with its training data, per-row loss
  and saved checkpoints.
- ``python:MODULE:FUNCTION`` — a user's own: ``FUNCTION()`` returns a :class:`Target` (or a dict with
  its fields), so any model, loss and data set can be measured without writing a command. A classifier
  with inputs and labels is ``Target.from_task(name, model, Task.classifier(inputs, labels))``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechscope.errors import MechscopeError, UsageError
from mechscope.slt.estimator import LossFn
from mechscope.task import Task
from mechscope.training import OptimConfig, fit


@dataclass(frozen=True, eq=False)
class Target:
    """A trained model with its loss and data (and checkpoints, when it has them)."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    data: tuple[Tensor, ...]
    """Training data, tensors [n, …] (the loss λ̂ is measured on)."""
    val_data: tuple[Tensor, ...] | None = None
    """Held-out data, recorded beside λ̂ along checkpoints."""
    checkpoints: Sequence[tuple[int, Callable[[], nn.Module]]] | None = None
    """(step, a function returning the model at that step), in any order."""
    accuracy: Callable[[nn.Module, Any], Tensor] | None = None
    """accuracy(model, batch) → the batch's mean accuracy, recorded beside λ̂ along checkpoints (optional)."""

    def to(self, device: torch.device | str) -> Target:
        """This target with its model, data and checkpoints on ``device`` (inputs follow the model)."""

        def move(t: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(x.to(device) for x in t)

        ckpts = (
            None if self.checkpoints is None else [(step, lambda f=f: f().to(device)) for step, f in self.checkpoints]
        )
        return dataclasses.replace(
            self,
            model=self.model.to(device),
            data=move(self.data),
            val_data=None if self.val_data is None else move(self.val_data),
            checkpoints=ckpts,
        )

    @classmethod
    def from_task(
        cls,
        name: str,
        model: nn.Module,
        task: Task,
        checkpoints: Sequence[tuple[int, Callable[[], nn.Module]]] | None = None,
    ) -> Target:
        """``model`` measured on a :class:`~mechscope.task.Task` (a zoo model's, a language model's from
        ``Task.from_texts``/``Task.next_token``, or any classifier's from ``Task.classifier(inputs, labels)``): λ̂ on
        its training split with the loss = mean over the batch of ``task.loss`` (of the logits of the model's output);
        its held-out split and ``task.accuracy`` are recorded beside λ̂ along checkpoints."""
        # a Hugging Face model's output is an object holding its logits
        from mechscope.evals.splice import model_logits

        def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
            x, y = batch
            return task.loss(model_logits(m(x)), y).mean()

        def accuracy(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
            x, y = batch
            return task.accuracy(model_logits(m(x)), y).mean()

        return cls(
            name,
            model,
            loss_fn,
            (task.train_inputs, task.train_targets),
            (task.val_inputs, task.val_targets),
            checkpoints,
            accuracy,
        )


def mean_cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def argmax_accuracy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return (model(x).argmax(-1) == y).float().mean()


def teacher_student_mlp(
    widths: Sequence[int] = (16, 32, 32, 4), n: int = 4096, steps: int = 1500, every: int = 150, seed: int = 0
) -> Target:
    """Train an MLP of ``widths`` on labels of a random teacher of the same shape; keep a checkpoint every
    ``every`` steps (Adam, lr 3e-3, batch 256). The last 1/8 of the rows are held out."""
    g = torch.Generator().manual_seed(seed)

    def mlp() -> nn.Sequential:
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    torch.manual_seed(seed)
    teacher, student = mlp(), mlp()
    x = torch.randn(n, widths[0], generator=g)
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    cut = n - n // 8
    train, val = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    states = [(0, copy.deepcopy(student.state_dict()))]

    def batch(step: int) -> tuple[Tensor, Tensor]:
        rows = torch.randint(0, cut, (256,), generator=g)
        return train[0][rows], train[1][rows]

    def keep(step: int, _: Tensor) -> None:
        if (step + 1) % every == 0:
            states.append((step + 1, copy.deepcopy(student.state_dict())))

    fit(
        student,
        lambda b: mean_cross_entropy(student, b),
        batch,
        OptimConfig("adam", lr=3e-3),
        steps=steps,
        on_step=keep,
    )

    def loader(state: dict) -> Callable[[], nn.Module]:
        def load() -> nn.Module:
            m = mlp()
            m.load_state_dict(state)
            return m

        return load

    return Target(
        "mlp", student, mean_cross_entropy, train, val, [(s, loader(st)) for s, st in states], argmax_accuracy
    )


def _mlp(arg: str) -> Target:
    if arg:
        raise UsageError(f"the built-in 'mlp' takes no argument, got 'mlp:{arg}'")
    return teacher_student_mlp()


def _zoo(name: str) -> Target:
    try:
        from mechscope.zoo import load_zoo_checkpoint, zoo_checkpoints
    except ImportError:
        raise MechscopeError(
            "this mechscope has no zoo (mechscope.zoo is missing): use the model mlp or python:MODULE:FUNCTION"
        ) from None
    if not name:
        raise UsageError("name the zoo model: zoo:NAME (e.g. zoo:modadd)")
    from mechscope.models.resolve import resolve_model

    zm = resolve_model(f"zoo:{name}").zoo

    def loader(step: int) -> Callable[[], nn.Module]:
        return lambda: load_zoo_checkpoint(name, step)

    ckpts = [(step, loader(step)) for step, _path in zoo_checkpoints(name)]
    return Target.from_task(f"zoo:{name}", zm.model, zm.task, ckpts or None)


def _python(ref: str) -> Target:
    module, _, fn = ref.rpartition(":")
    if not module or not fn:
        raise UsageError(f"the model python:MODULE:FUNCTION needs both parts, got 'python:{ref}'")
    try:
        obj = getattr(importlib.import_module(module), fn)()
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot load {module}:{fn} ({e}): check the module is importable and defines {fn}") from None
    if isinstance(obj, dict):
        obj = Target(**{"name": ref, **obj})
    if not isinstance(obj, Target):
        raise UsageError(
            f"{module}:{fn}() returned {type(obj).__name__}; it must return a mechscope.slt.targets.Target"
        )
    return obj


SOURCES: dict[str, Callable[[str], Target]] = {"mlp": _mlp, "zoo": _zoo, "python": _python}
"""Spec prefix → builder of the Target."""


def load_target(spec: str, device: torch.device | str | None = None) -> Target:
    """The Target of ``--model SPEC``, on ``device`` (None: where it was built, the cpu)."""
    kind, _, rest = spec.partition(":")
    if kind not in SOURCES:
        raise UsageError(f"unknown model source {spec!r}: use mlp, zoo:NAME or python:MODULE:FUNCTION")
    target = SOURCES[kind](rest)
    return target if device is None else target.to(device)

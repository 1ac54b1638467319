"""What a hypothesis is evaluated on: a model, its task, and the reference inputs and targets.

``--model`` / the hypothesis's ``model:`` picks the model: ``zoo:NAME`` (a zoo model, trained once if
needed), ``smollm2`` (the embedded SmolLM2-135M) or a local Hugging Face folder. ``task:`` picks the data
from :data:`TASKS`; a zoo model defaults to its own task (the first ``examples`` held-out examples).

``induction_repeats`` (for ``zoo:induction``): its held-out sequences scored only inside the second copy,
where the next token is predictable by induction alone.

``repeated_tokens`` (for language models): ``[BOS] s s`` with s a random sequence of ``seg`` tokens drawn
from ``vocab_size`` ordinary tokens (ids 1000…1000 + vocab_size − 1, so equivalence classes of token
features have many members); the scored targets are the next tokens inside the second copy (predictable
only by induction), IGNORE elsewhere. The rock is fit on a separate sample of 20,000 such sequences.
Arguments (``task_args``): ``seg`` (12), ``vocab_size`` (40), ``seed`` (0), ``distinct`` (False; True draws
each s without repeated tokens, so every token of the second copy has exactly one previous occurrence and
the first copy none, and per-position token features have classes of about pool / vocab_size members).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.models.loading import output_weight
from mechscope.task import IGNORE, Task


@dataclass
class Target:
    """The model under test and the data a hypothesis is scored on."""

    model: nn.Module
    task: Task
    inputs: Tensor
    """[N, T] reference inputs (also the sampling pool)."""
    targets: Tensor
    """[N] or [N, S] their targets."""
    name: str
    pool_inputs: Tensor | None = None
    """[P, T] a separate sampling pool shared by every node (None: the references are the pool)."""
    pool_targets: Tensor | None = None
    """[P] or [P, S] the pool's targets (features may read them)."""


_FIRST = 1000
"""The first token id repeated_tokens draws (ordinary tokens, past every tokenizer's special ones)."""


def _repeated(
    n: int, seg: int, vocab_size: int, bos: int, gen: torch.Generator, distinct: bool = False
) -> tuple[Tensor, Tensor]:
    if distinct:  # the first seg of a random permutation of the vocabulary, per row
        s = _FIRST + torch.rand(n, vocab_size, generator=gen).argsort(1)[:, :seg]
    else:
        s = _FIRST + torch.randint(0, vocab_size, (n, seg), generator=gen)
    x = torch.cat([torch.full((n, 1), bos), s, s], dim=1)  # [n, 2·seg + 1]
    t = torch.arange(x.shape[1] - 1)
    targets = torch.where(t >= seg + 1, x[:, 1:], IGNORE)  # position t predicts x[t+1]; scored inside copy 2
    return x, targets


@dataclass
class Loaded:
    """A loaded model: the module, its tokenizer (language models) or its zoo entry (zoo models)."""

    model: nn.Module
    tokenizer: Any = None
    zoo: Any = None


def repeated_tokens(
    loaded: Loaded, examples: int, seg: int = 12, vocab_size: int = 40, seed: int = 0, distinct: bool = False
) -> tuple[Task, Tensor, Tensor]:
    model, tokenizer = loaded.model, loaded.tokenizer
    if seg < 2 or vocab_size < 2 or (distinct and seg > vocab_size):
        raise UsageError(
            f"repeated_tokens needs seg ≥ 2, vocab_size ≥ 2 (and seg ≤ vocab_size when distinct); got {seg}, {vocab_size}"
        )
    W_U = output_weight(model)
    V = None if W_U is None else int(W_U.shape[0])
    if V is not None and V < _FIRST + vocab_size:
        raise UsageError(
            f"repeated_tokens draws token ids {_FIRST}..{_FIRST + vocab_size - 1} but the model's vocabulary "
            f"has {V} tokens; use a model with at least {_FIRST + vocab_size} tokens"
        )
    gen = torch.Generator().manual_seed(seed)
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else 0
    x, y = _repeated(examples, seg, vocab_size, bos, gen, distinct)
    xt, yt = _repeated(20_000, seg, vocab_size, bos, gen, distinct)
    V = int(y.max()) + 1 if V is None else V
    task = Task("repeated_tokens", xt, yt, x, y, positions=tuple(range(x.shape[1] - 1)), n_classes=V)
    return task, x, y


def induction_repeats(loaded: Loaded, examples: int) -> tuple[Task, Tensor, Tensor]:
    from mechscope.zoo.induction import repeated_half_task

    if loaded.zoo is None or loaded.zoo.name != "induction":
        raise UsageError("task induction_repeats needs `model` zoo:induction")
    task = repeated_half_task(loaded.zoo.task, loaded.zoo.config)
    n = min(examples, task.val_inputs.shape[0])
    return task, task.val_inputs[:n], task.val_targets[:n]


TASKS: dict[str, Callable[..., tuple[Task, Tensor, Tensor]]] = {
    "repeated_tokens": repeated_tokens,
    "induction_repeats": induction_repeats,
}
"""Task builders: ``builder(loaded, examples, **task_args) -> (task, inputs, their targets)``."""


def _split(model: nn.Module, task: Task, x: Tensor, y: Tensor, examples: int, pool: int, name: str) -> Target:
    """References = the first ``examples`` rows, the pool = the next ``pool`` (0: the references double as pool)."""
    from mechscope.models.loading import device_of

    x, y = x.to(device_of(model)), y.to(device_of(model))  # inputs follow the model
    if x.shape[0] < examples + pool:
        raise UsageError(
            f"{name}: only {x.shape[0]} held-out examples, {examples} references + {pool} pool asked; "
            f"give `examples` between 1 and {max(x.shape[0] - pool, 0)} or lower the hypothesis's pool"
        )
    if pool == 0:
        return Target(model, task, x[:examples], y[:examples], name)
    return Target(
        model, task, x[:examples], y[:examples], name, x[examples : examples + pool], y[examples : examples + pool]
    )


def load_target(
    model_spec: str,
    task_name: str | None,
    examples: int,
    pool: int = 0,
    task_args: dict[str, Any] | None = None,
    *,
    device: Any = None,
    dtype: Any = None,
) -> Target:
    """The model named by ``model_spec`` (:func:`mechscope.models.resolve.resolve_model`, on ``device`` in ``dtype``),
    the first ``examples`` references of its task and (``pool`` > 0) a separate sampling pool of the ``pool``
    examples after them."""
    from mechscope.models.resolve import resolve_model

    task_args = dict(task_args or {})
    try:
        subject = resolve_model(model_spec, device=device, dtype=dtype)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    model = subject.model  # None only for a toy
    if subject.kind == "zoo":
        assert model is not None
        zm = subject.zoo
        if task_name is None:
            if task_args:
                raise UsageError(
                    f"task_args {sorted(task_args)} given but no task: name one with `task:` ({', '.join(TASKS)})"
                )
            return _split(model, zm.task, zm.task.val_inputs, zm.task.val_targets, examples, pool, model_spec)
        loaded = Loaded(model, None, zm)
    elif subject.kind == "lm":
        assert model is not None
        loaded = Loaded(model, subject.tokenizer)
        task_name = task_name or "repeated_tokens"
    else:
        raise UsageError(f"`model` {model_spec!r}: scrub runs on zoo:NAME, smollm2 or a Hugging Face model folder")
    if task_name not in TASKS:
        raise UsageError(
            f"unknown task {task_name!r}; choose one of {', '.join(TASKS)} (zoo models default to their own)"
        )
    try:
        task, x, y = TASKS[task_name](loaded, examples + pool, **task_args)
    except TypeError as e:  # an unknown or missing task argument: the builder's own message names it
        raise UsageError(f"task {task_name!r}: bad task_args {task_args}: {e}") from e
    return _split(loaded.model, task, x, y, examples, pool, model_spec)

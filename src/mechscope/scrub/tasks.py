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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.zoo.task import IGNORE, ZooTask


@dataclass
class Target:
    """The model under test and the data a hypothesis is scored on."""

    model: nn.Module
    task: ZooTask
    inputs: Tensor
    """[N, T] reference inputs (also the sampling pool)."""
    targets: Tensor
    """[N] or [N, S] their targets."""
    name: str


def _repeated(n: int, seg: int, vocab_size: int, bos: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    s = 1000 + torch.randint(0, vocab_size, (n, seg), generator=gen)
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


def repeated_tokens(loaded: Loaded, examples: int, seg: int = 12, vocab_size: int = 40,
                    seed: int = 0) -> tuple[ZooTask, Tensor, Tensor]:
    model, tokenizer = loaded.model, loaded.tokenizer
    gen = torch.Generator().manual_seed(seed)
    bos = tokenizer.bos_token_id if tokenizer is not None and tokenizer.bos_token_id is not None else 0
    x, y = _repeated(examples, seg, vocab_size, bos, gen)
    xt, yt = _repeated(20_000, seg, vocab_size, bos, gen)
    V = int(model.get_output_embeddings().weight.shape[0]) if hasattr(model, "get_output_embeddings") else int(y.max()) + 1
    task = ZooTask("repeated_tokens", xt, yt, x, y, positions=tuple(range(x.shape[1] - 1)), n_classes=V)
    return task, x, y


def induction_repeats(loaded: Loaded, examples: int) -> tuple[ZooTask, Tensor, Tensor]:
    from mechscope.zoo.induction import repeated_half_task

    if loaded.zoo is None or loaded.zoo.name != "induction":
        raise UsageError("task induction_repeats needs --model zoo:induction")
    task = repeated_half_task(loaded.zoo.task, loaded.zoo.config)
    n = min(examples, task.val_inputs.shape[0])
    return task, task.val_inputs[:n], task.val_targets[:n]


TASKS: dict[str, Callable[..., tuple[ZooTask, Tensor, Tensor]]] = {
    "repeated_tokens": repeated_tokens,
    "induction_repeats": induction_repeats,
}
"""Task builders: ``builder(loaded, examples) -> (task, reference inputs, their targets)``."""


def load_target(model_spec: str, task_name: str | None, examples: int) -> Target:
    """The model named by ``model_spec`` and the first ``examples`` references of its task."""
    if model_spec.startswith("zoo:"):
        from mechscope.zoo import load_zoo

        zm = load_zoo(model_spec[4:])
        if task_name is None:
            n = min(examples, zm.task.val_inputs.shape[0])
            return Target(zm.model, zm.task, zm.task.val_inputs[:n], zm.task.val_targets[:n], model_spec)
        loaded = Loaded(zm.model, None, zm)
    else:
        from mechscope.models import load_model

        try:
            lm = load_model(model_spec)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from e
        loaded = Loaded(lm.model, lm.tokenizer)
        task_name = task_name or "repeated_tokens"
    if task_name not in TASKS:
        raise UsageError(f"unknown task {task_name!r}; choose one of {', '.join(TASKS)} (zoo models default to their own)")
    task, x, y = TASKS[task_name](loaded, examples)
    return Target(loaded.model, task, x, y, model_spec)

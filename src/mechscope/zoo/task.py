"""What a zoo model is trained and evaluated on: inputs, targets, the scored positions and the loss.

Shape letters: N examples, B batch, T tokens, S scored positions, C output classes (logits per position).

A task scores the logits at ``positions`` (indices into T, negative allowed). Targets are ``[N]`` when one
position is scored (parens: position 0; modadd: the "=" position) and ``[N, S]`` otherwise (induction);
entries equal to ``IGNORE`` (-100) are not scored (induction scores only the repeated half). A plain classifier
(any module mapping inputs [B, ...] to logits [B, C], e.g. an MLP on images) has no positions: its targets are
``[N]`` labels, and :meth:`ZooTask.classifier` builds its task from ``(inputs, labels)`` alone, and the methods
that take a task (``mechscope.slt.targets.Target.from_task`` for llc, causal scrubbing) take it as they take a
zoo model's.

- loss(logits, targets)      per example: mean over its scored, non-ignored positions of −log p(target)   [B]
- accuracy(logits, targets)  per example: fraction of those positions where argmax = target              [B]
- rock(targets)              the best constant predictor fit on the *training* targets, scored on
                             ``targets``: the one rock of :class:`mechscope.evals.rock.Rock` (add-α smoothed
                             training target distribution, α by leave-one-out likelihood on those targets),
                             rock = mean over scored targets t of −log q_t. Per example like loss: [B]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.evals.rock import Rock

IGNORE = -100


@dataclass(frozen=True, eq=False)
class ZooTask:
    """One zoo model's data and scoring (see the module docstring for the formulas)."""

    name: str
    """The zoo model this task belongs to (or the name a user gave a classifier's task)."""
    train_inputs: Tensor
    """[N_train, T] token ids the model was trained on."""
    train_targets: Tensor
    """[N_train] or [N_train, S] target class ids (IGNORE where not scored)."""
    val_inputs: Tensor
    """[N_val, T] held-out token ids (never seen in training)."""
    val_targets: Tensor
    """[N_val] or [N_val, S] held-out targets."""
    positions: tuple[int, ...]
    """Positions of the logits that are scored, in the order of the targets' last axis; empty for a plain
    classifier, whose logits [B, C] are one prediction per example (targets [N])."""
    n_classes: int
    """C, the number of logits per position."""

    @classmethod
    def classifier(cls, inputs: Tensor, labels: Tensor, *, n_classes: int | None = None, val_fraction: float = 0.2,
                   seed: int = 0, name: str = "classifier") -> "ZooTask":
        """The task of a plain classifier that maps ``inputs`` [N, ...] to logits [N, C], scored against ``labels``
        [N] (class ids in [0, C)); C is ``n_classes``, else the largest label + 1. A seeded random ``val_fraction``
        of the rows is held out: the rock is fit on the other rows only."""
        if labels.dim() != 1 or labels.dtype.is_floating_point or len(labels) != len(inputs):
            raise UsageError(f"labels must be integer class ids [N] with one per input; got {labels.dtype} {tuple(labels.shape)} "
                             f"for {len(inputs)} inputs")
        C = int(labels.max()) + 1 if n_classes is None else n_classes
        if labels.min() < 0 or labels.max() >= C:
            raise UsageError(f"labels must lie in [0, {C}); got {int(labels.min())}..{int(labels.max())} (check n_classes)")
        n_val = int(round(val_fraction * len(labels)))
        if not 0 < n_val < len(labels):
            raise UsageError(f"val_fraction={val_fraction} of {len(labels)} examples leaves no training or no held-out "
                             "example; give more examples or a val_fraction in (0, 1)")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        tr, va = order[n_val:], order[:n_val]
        return cls(name, inputs[tr], labels[tr], inputs[va], labels[va], positions=(), n_classes=C)

    def scored(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(logits at the scored positions [B, S, C], targets [B, S]); a classifier's logits [B, C] are S = 1."""
        if not self.positions:
            if logits.dim() != 2:
                raise UsageError(f"task {self.name!r} scores a classifier's logits [B, C], got shape {tuple(logits.shape)}; "
                                 "give the positions to score for a sequence model")
            return logits[:, None], targets.reshape(targets.shape[0], 1)
        picked = logits[:, list(self.positions)]
        return picked, targets.reshape(targets.shape[0], -1)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-example mean cross-entropy over scored positions, [B] (float32; keeps the graph)."""
        picked, t = self.scored(logits, targets)
        ce = torch.nn.functional.cross_entropy(picked.reshape(-1, picked.shape[-1]).float(), t.reshape(-1),
                                               ignore_index=IGNORE, reduction="none").reshape(t.shape)
        return ce.sum(-1) / (t != IGNORE).sum(-1).clamp_min(1)

    def accuracy(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-example fraction of scored positions predicted right, [B]."""
        picked, t = self.scored(logits, targets)
        keep = t != IGNORE
        right = (picked.argmax(-1) == t) & keep
        return right.sum(-1).float() / keep.sum(-1).clamp_min(1)

    @cached_property
    def rock_model(self) -> Rock:
        """The rock fit on the training targets (IGNORE entries left out), as every other method fits it."""
        return Rock.fit(self.train_targets, self.n_classes, what=f"{self.name} target distribution")

    @property
    def rock_logprobs(self) -> Tensor:
        """log q_c of the rock, [C] float64."""
        return self.rock_model.log_q

    def rock(self, targets: Tensor) -> Tensor:
        """Per-example loss of the best constant predictor fit on the training targets, [B] (float64)."""
        t = targets.reshape(targets.shape[0], -1)
        keep = t != IGNORE
        nll = -self.rock_logprobs.to(t.device)[t.clamp_min(0)] * keep  # targets may sit on the model's device
        return nll.sum(-1) / keep.sum(-1).clamp_min(1)

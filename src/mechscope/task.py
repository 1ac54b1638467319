"""The one task: what a model is evaluated on. Data only (no model): train/val inputs and targets, the scored
positions, the per-example loss and accuracy, and the rock fit on the training targets.

Every method that measures a model on data takes a :class:`Task`: splicing (``mechscope evaluate``, the report,
the frontier), causal scrubbing, circuits (whose clean/corrupted pairs are scored by one), llc
(:meth:`mechscope.slt.targets.Target.from_task`) and SPD. The zoo's models carry theirs (``zm.task``).

Shape letters: N examples, B batch, T tokens, S scored positions, C output classes (logits per position).

A task scores the logits at ``positions`` (indices into T, negative allowed). Targets are ``[N]`` when one
position is scored (parens: position 0; modadd: the "=" position) and ``[N, S]`` otherwise (induction, a
language model's next tokens); entries equal to ``IGNORE`` (-100) are not scored (padding, or the unrepeated
half of an induction sequence). A plain classifier (any module mapping inputs [B, ...] to logits [B, C]) has
no positions: its targets are ``[N]`` labels.

Constructors:

- ``Task.classifier(inputs, labels)``          inputs [N, ...] → logits [N, C] against labels [N]
- ``Task.next_token(train_ids, val_ids, n_classes=V)``   a language model: position t is scored against token
                                               t + 1 (positions 0..T−2; targets [N, T−1], IGNORE on padding)
- ``Task.from_texts(texts, tokenizer)``        texts tokenised, right-padded (attention mask 0 on padding),
                                               split into train/val by a seeded permutation (disjoint)

Formulas, per example (``[B]``):

- loss(logits, targets)      mean over its scored, non-ignored positions of −log p(target)
- accuracy(logits, targets)  fraction of those positions where argmax = target
- rock(targets)              the best constant predictor fit on the *training* targets, scored on
                             ``targets``: the one rock of :class:`mechscope.evals.rock.Rock` (add-α smoothed
                             training target distribution, α by leave-one-out likelihood on those targets),
                             rock = mean over scored targets t of −log q_t
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.evals.rock import Rock

IGNORE = -100

_ROCK_WHAT = {"lm": "unigram", "classifier": "label distribution"}
"""What the rock is called, per kind of task (others: "<name> target distribution")."""


@dataclass(frozen=True, eq=False)
class Task:
    """A model's data and scoring (see the module docstring for the formulas)."""

    name: str
    """What the task is (the zoo model's name, ``ioi``, or the name a user gave it)."""
    train_inputs: Tensor
    """[N_train, ...] inputs (token ids [N_train, T] for a sequence model) the rock and the mean are fit on."""
    train_targets: Tensor
    """[N_train] or [N_train, S] target class ids (IGNORE where not scored)."""
    val_inputs: Tensor
    """[N_val, ...] held-out inputs (the ones methods evaluate on)."""
    val_targets: Tensor
    """[N_val] or [N_val, S] held-out targets."""
    positions: tuple[int, ...]
    """Positions of the logits that are scored, in the order of the targets' last axis; empty for a plain
    classifier, whose logits [B, C] are one prediction per example (targets [N])."""
    n_classes: int
    """C, the number of logits per position."""
    train_mask: Tensor | None = None
    """[N_train, T] attention mask of padded text (0 on padding), passed to the model; None: no padding."""
    val_mask: Tensor | None = None
    """[N_val, T] attention mask of the held-out inputs; None: no padding."""
    kind: str = ""
    """``lm`` (next-token prediction), ``classifier`` (no positions) or ``positions`` (fixed scored positions);
    empty: ``classifier`` without positions, else ``positions``."""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "positions" if self.positions else "classifier")
        for split in ("train", "val"):
            x, y, m = self.split(split)
            if len(x) != len(y) or (m is not None and m.shape[0] != len(x)):
                raise UsageError(
                    f"{split}_inputs, {split}_targets and {split}_mask must have one row per example; got "
                    f"{len(x)}, {len(y)} and {None if m is None else m.shape[0]}"
                )

    # ---- constructors -------------------------------------------------------------------------------------------

    @classmethod
    def classifier(
        cls,
        inputs: Tensor,
        labels: Tensor,
        *,
        n_classes: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        name: str = "classifier",
    ) -> Task:
        """The task of a plain classifier that maps ``inputs`` [N, ...] to logits [N, C], scored against ``labels``
        [N] (class ids in [0, C)); C is ``n_classes``, else the largest label + 1. A seeded random ``val_fraction``
        of the rows is held out: the rock is fit on the other rows only."""
        if labels.dim() != 1 or labels.dtype.is_floating_point or len(labels) != len(inputs):
            raise UsageError(
                f"labels must be integer class ids [N] with one per input; got {labels.dtype} {tuple(labels.shape)} "
                f"for {len(inputs)} inputs"
            )
        C = int(labels.max()) + 1 if n_classes is None else n_classes
        if labels.min() < 0 or labels.max() >= C:
            raise UsageError(
                f"labels must lie in [0, {C}); got {int(labels.min())}..{int(labels.max())} (check n_classes)"
            )
        tr, va = _split_rows(len(labels), val_fraction, seed)
        return cls(name, inputs[tr], labels[tr], inputs[va], labels[va], positions=(), n_classes=C)

    @classmethod
    def next_token(
        cls,
        train_ids: Tensor,
        val_ids: Tensor,
        *,
        n_classes: int,
        train_mask: Tensor | None = None,
        val_mask: Tensor | None = None,
        name: str = "next token",
    ) -> Task:
        """A language model's task: ``train_ids`` [N_train, T] and ``val_ids`` [N_val, T'] token ids; the logits at
        position t are scored against token t + 1 (targets [N, T−1]); where a mask is given, a prediction counts
        only if both its position and its target are unpadded (mask[t] = mask[t + 1] = 1), else it is IGNORE.
        ``n_classes`` is the model's number of logits V."""
        tt, vt = _next_tokens(train_ids, train_mask), _next_tokens(val_ids, val_mask)
        T = val_ids.shape[1] if len(val_ids) else train_ids.shape[1]
        if len(train_ids) and len(val_ids) and train_ids.shape[1] != val_ids.shape[1]:
            raise UsageError(
                f"train_ids and val_ids must have the same context length; got {train_ids.shape[1]} and "
                f"{val_ids.shape[1]}"
            )
        for ids, what in ((train_ids, "train_ids"), (val_ids, "val_ids")):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_classes):
                raise UsageError(
                    f"{what} must be token ids in [0, {n_classes}) (n_classes={n_classes}); got "
                    f"{int(ids.min())}..{int(ids.max())}"
                )
        return cls(
            name,
            train_ids,
            tt,
            val_ids,
            vt,
            positions=tuple(range(T - 1)),
            n_classes=n_classes,
            train_mask=train_mask,
            val_mask=val_mask,
            kind="lm",
        )

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        tokenizer: Any,
        *,
        max_length: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        n_classes: int | None = None,
        name: str = "texts",
    ) -> Task:
        """:meth:`next_token` on ``texts`` tokenised by ``tokenizer`` (a Hugging Face tokenizer), each cut to
        ``max_length`` tokens and right-padded to the longest (mask 0 there, so padding is never scored); a seeded
        random ``val_fraction`` of the texts is held out. ``n_classes`` defaults to ``len(tokenizer)``; give the
        model's number of logits when it differs."""
        rows = [tokenizer(t)["input_ids"][:max_length] for t in texts]
        if any(len(r) < 2 for r in rows):
            raise UsageError(
                "every text must tokenise to at least 2 tokens (one prediction); drop the short texts of `texts`"
            )
        T = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        tr, va = _split_rows(len(rows), val_fraction, seed)
        return cls.next_token(
            ids[tr],
            ids[va],
            n_classes=len(tokenizer) if n_classes is None else n_classes,
            train_mask=mask[tr],
            val_mask=mask[va],
            name=name,
        )

    # ---- data ---------------------------------------------------------------------------------------------------

    def split(self, split: str) -> tuple[Tensor, Tensor, Tensor | None]:
        """(inputs, targets, mask) of ``split`` (``train`` or ``val``)."""
        if split not in ("train", "val"):
            raise UsageError(f"split must be 'train' or 'val', got {split!r}")
        return getattr(self, f"{split}_inputs"), getattr(self, f"{split}_targets"), getattr(self, f"{split}_mask")

    def size(self, split: str = "val") -> int:
        """Examples in ``split``."""
        return len(self.split(split)[0])

    def inputs(self, lo: int, hi: int, split: str = "val") -> tuple[tuple, dict]:
        """The model's (args, kwargs) for examples lo:hi of ``split``: the inputs, and the attention mask if any."""
        x, _, m = self.split(split)
        return (x[lo:hi],), ({} if m is None else {"attention_mask": m[lo:hi]})

    def flat_targets(self, split: str = "val", n: int | None = None) -> Tensor:
        """[M] the scored targets of the first ``n`` examples of ``split`` (all when None), IGNORE left out."""
        t = self.split(split)[1][:n]
        t = t.reshape(-1)
        return t[t != IGNORE]

    # ---- scoring ------------------------------------------------------------------------------------------------

    @cached_property
    def _index(self) -> slice | list[int]:
        """The scored positions as a slice when they are a run of non-negative positions (a view), else a list."""
        p = self.positions
        if p and p[0] >= 0 and p == tuple(range(p[0], p[0] + len(p))):
            return slice(p[0], p[0] + len(p))
        return list(p)

    def scored(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(logits at the scored positions [B, S, C], targets [B, S]); a classifier's logits [B, C] are S = 1."""
        if not self.positions:
            if logits.dim() != 2:
                raise UsageError(
                    f"task {self.name!r} scores a classifier's logits [B, C], got shape {tuple(logits.shape)}; "
                    "give the positions to score for a sequence model"
                )
            return logits[:, None], targets.reshape(targets.shape[0], 1)
        return logits[:, self._index], targets.reshape(targets.shape[0], -1)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-example mean cross-entropy over scored positions, [B] (float32; keeps the graph)."""
        picked, t = self.scored(logits, targets)
        ce = torch.nn.functional.cross_entropy(
            picked.reshape(-1, picked.shape[-1]).float(), t.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).reshape(t.shape)
        return ce.sum(-1) / (t != IGNORE).sum(-1).clamp_min(1)

    def accuracy(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-example fraction of scored positions predicted right, [B]."""
        picked, t = self.scored(logits, targets)
        keep = t != IGNORE
        right = (picked.argmax(-1) == t) & keep
        return right.sum(-1).float() / keep.sum(-1).clamp_min(1)

    @property
    def rock_what(self) -> str:
        """What the rock is, in words (``unigram`` for a language model, ``label distribution`` for a classifier)."""
        return _ROCK_WHAT.get(self.kind, f"{self.name} target distribution")

    def fit_rock(self, alpha: float | None = None) -> Rock:
        """The rock fit on the training targets (IGNORE entries left out); ``alpha`` None: by leave-one-out."""
        return Rock.fit(self.train_targets, self.n_classes, alpha, what=self.rock_what)

    @cached_property
    def rock_model(self) -> Rock:
        """The rock fit on the training targets, as every other method fits it."""
        return self.fit_rock()

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


def _split_rows(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train rows, val rows): a seeded permutation of range(n), its first round(val_fraction·n) held out."""
    n_val = round(val_fraction * n)
    if not 0 < n_val < n:
        raise UsageError(
            f"val_fraction={val_fraction} of {n} examples leaves no training or no held-out "
            "example; give more examples or a val_fraction in (0, 1)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def _next_tokens(ids: Tensor, mask: Tensor | None) -> Tensor:
    """[N, T−1] targets ids[:, 1:], IGNORE where the position or its target is padding."""
    t = ids[:, 1:].clone()
    if mask is not None:
        m = mask.bool()
        t[~(m[:, 1:] & m[:, :-1])] = IGNORE
    return t

"""``induction``: a two-layer attention-only transformer that learns to copy repeated random tokens.

Each sequence is ``prefix  s  s`` over ``vocab`` random tokens: a random prefix of even length P ∈ [0, 8]
(so the repeat does not sit at a fixed offset, which a positional head could exploit), then a random
segment s of length L = (n_ctx − P) / 2, then s again. The logits at position t predict token t + 1
(causal, next-token). The task (the training objective) scores every next token, targets [N, n_ctx − 1].
Inside the second copy of s (t ∈ [P + L, n_ctx − 2]) the next token is predictable only by induction
("find the previous occurrence of the current token, copy the token after it"); inside the first copy it
is fresh (best loss ln vocab).

``second_half_loss`` (positions inside the second copy) and ``first_half_loss`` (inside the first copy)
are reported beside the loss: induction shows as the second ≪ the first. :func:`repeated_half_task` is
the same data scored only inside the second copy (IGNORE elsewhere), for hypotheses about induction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.zoo.recipe import TrainRecipe
from mechscope.zoo.task import IGNORE, ZooTask  # noqa: F401  (IGNORE marks unscored targets)
from mechscope.zoo.transformer import TransformerShape


@dataclass(frozen=True)
class InductionConfig(TrainRecipe):
    """Recipe of the two-layer attention-only induction model (LayerNorm, causal)."""

    vocab: int = 48
    """Number of distinct tokens."""
    n_ctx: int = 32
    """Tokens per sequence (even)."""
    max_prefix: int = 8
    """Longest random prefix before the repeated segment (even)."""
    n_train: int = 50_000
    """Training sequences."""
    n_val: int = 2_000
    """Held-out sequences."""
    d_model: int = 64
    """Residual width."""
    n_heads: int = 2
    """Heads per layer."""
    n_layers: int = 2
    """Attention-only blocks."""
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_ctx % 2 or self.max_prefix % 2 or not 0 <= self.max_prefix <= self.n_ctx - 4 or self.vocab < 2:
            raise UsageError("induction needs an even n_ctx, an even 0 ≤ max_prefix ≤ n_ctx − 4 and vocab ≥ 2")
        if self.d_model % self.n_heads:
            raise UsageError("induction needs d_model divisible by n_heads")

    def shape(self) -> TransformerShape:
        return TransformerShape(vocab=self.vocab, n_out=self.vocab, n_ctx=self.n_ctx, d_model=self.d_model,
                                n_heads=self.n_heads, d_head=self.d_model // self.n_heads, n_layers=self.n_layers,
                                d_mlp=0, layer_norm=True, causal=True)

    def extra_metrics(self, model: torch.nn.Module, task: ZooTask) -> dict[str, float]:
        first, second = half_losses(model, self)
        return {"first_half_loss": first, "second_half_loss": second}

    def make_task(self) -> ZooTask:
        gen = torch.Generator().manual_seed(self.seed)
        xt, yt, _, _ = sample(self.n_train, self, gen)
        xv, yv, _, _ = sample(self.n_val, self, gen)
        return ZooTask("induction", xt, yt, xv, yv, positions=tuple(range(self.n_ctx - 1)), n_classes=self.vocab)


def sample(n: int, cfg: InductionConfig, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(tokens [n, T], next-token targets [n, T − 1], first-copy mask [n, T − 1], second-copy mask [n, T − 1])."""
    T = cfg.n_ctx
    prefix = 2 * torch.randint(0, cfg.max_prefix // 2 + 1, (n,), generator=gen)
    seg = (T - prefix) // 2
    tokens = torch.randint(0, cfg.vocab, (n, T), generator=gen)
    pos = torch.arange(T)
    second = pos[None, :] >= (prefix + seg)[:, None]
    src = torch.where(second, pos[None, :] - seg[:, None], pos[None, :])
    tokens = tokens.gather(1, src)  # the second copy repeats the first
    t = pos[:-1][None, :]
    in_second = t >= (prefix + seg)[:, None]
    in_first = (t >= prefix[:, None]) & (t < (prefix + seg - 1)[:, None])
    return tokens, tokens[:, 1:], in_first, in_second


def repeated_half_task(task: ZooTask, cfg: InductionConfig) -> ZooTask:
    """``task`` scored only inside the second copy (the induction positions); IGNORE elsewhere."""
    out = {}
    for split in ("train", "val"):
        x = getattr(task, f"{split}_inputs")
        out[split] = torch.where(_second_copy(x), x[:, 1:], IGNORE)
    return ZooTask("induction", task.train_inputs, out["train"], task.val_inputs, out["val"], task.positions, task.n_classes)


def _second_copy(x: Tensor) -> Tensor:
    """[N, T − 1] True at positions t inside the second copy, found from the tokens: t ≥ P + L where the
    sequence is prefix (P) + s + s with L = (T − P) / 2, P even — the P whose halves match."""
    N, T = x.shape
    mask = torch.zeros(N, T - 1, dtype=torch.bool)
    found = torch.zeros(N, dtype=torch.bool)
    for P in range(0, T - 2, 2):
        L = (T - P) // 2
        match = (x[:, P:P + L] == x[:, P + L:]).all(1) & ~found
        mask[match, P + L:] = True
        found |= match
    return mask


def half_losses(model: torch.nn.Module, cfg: InductionConfig, n: int = 1000) -> tuple[float, float]:
    """Mean next-token loss inside the first copy (fresh tokens) and inside the second (induction)."""
    x, y, first, second = sample(n, cfg, torch.Generator().manual_seed(cfg.seed + 7))
    with torch.no_grad():
        logits = model(x)[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                           reduction="none").reshape(first.shape)
    return float((ce * first).sum() / first.sum()), float((ce * second).sum() / second.sum())

"""``induction``: a two-layer attention-only transformer that learns to copy repeated random tokens.

Each sequence holds ``n_ctx`` random tokens over ``vocab``, in which a segment s of random length
L ∈ [min_seg, max_seg] appears twice: at a random start a, and again at b = a + L + g after a random gap
g ≥ 0. The distance d = L + g between the copies varies from example to example (4 … n_ctx), so no
positional rule predicts the repeat: the model has to find the previous occurrence of the current token
and copy the token after it (induction). The tokens inside the segment are distinct (``distinct_segment``;
the segment is the first L entries of a random permutation of the vocabulary), so within the copies "the
token after the previous occurrence of the current token" names one position; the tokens outside the
copies are uniform and may repeat anything.

The recipe (two attention-only layers, no LayerNorm, 8000 steps of AdamW at lr 3e-3 with warm-up and
linear decay) is the one that forms the textbook circuit here: a previous-token head in layer 0 and
induction heads in layer 1 (:func:`head_scores`). With LayerNorm, repeats allowed inside the segment and
2500 steps at lr 2e-3 the model learnt the repeat only partly (second-copy loss 0.995 nats) and no head
attended to the induction target. Which of the three changes (distinct segment tokens, no LayerNorm, the
longer schedule) is necessary was not measured; one seed (0) was trained.

The logits at position t predict token t + 1 (causal); the task (the training objective) scores every
next token, targets [N, n_ctx − 1]. Inside the second copy (t ∈ [b, b + L − 2]) the next token is
predictable by induction; inside the first (t ∈ [a, a + L − 2]) it is fresh (best loss ln vocab).
``second_half_loss`` and ``first_half_loss`` are these two averages, reported beside the loss: induction
shows as the second ≪ the first. :func:`repeated_half_task` scores only the second-copy positions
(IGNORE elsewhere), for hypotheses about induction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.task import IGNORE, Task  # noqa: F401  (IGNORE marks unscored targets)
from mechscope.zoo.recipe import TrainRecipe
from mechscope.zoo.transformer import TransformerShape


@dataclass(frozen=True)
class InductionConfig(TrainRecipe):
    """Recipe of the two-layer attention-only induction model (no LayerNorm, causal)."""

    vocab: int = 64
    """Number of distinct tokens."""
    n_ctx: int = 32
    """Tokens per sequence."""
    min_seg: int = 4
    """Shortest repeated segment."""
    max_seg: int = 16
    """Longest repeated segment (2 · max_seg ≤ n_ctx)."""
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
    layer_norm: bool = False
    """Pre-LayerNorm before attention and unembedding (off in the recipe that formed the circuit; one of three
    changes made together, see the module docstring)."""
    distinct_segment: bool = True
    """The repeated segment's tokens are all different (so the induction target inside it is unique)."""
    steps: int = 8000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 400
    decay: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.min_seg <= self.max_seg or 2 * self.max_seg > self.n_ctx or self.vocab < 2:
            raise UsageError("induction needs 2 ≤ min_seg ≤ max_seg, 2 · max_seg ≤ n_ctx and vocab ≥ 2")
        if self.distinct_segment and self.vocab < self.max_seg:
            raise UsageError(
                "induction with distinct_segment needs vocab ≥ max_seg; lower max_seg or set distinct_segment false"
            )
        if self.d_model % self.n_heads:
            raise UsageError("induction needs d_model divisible by n_heads")

    def shape(self) -> TransformerShape:
        return TransformerShape(
            vocab=self.vocab,
            n_out=self.vocab,
            n_ctx=self.n_ctx,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            n_layers=self.n_layers,
            d_mlp=0,
            layer_norm=self.layer_norm,
            causal=True,
        )

    def extra_metrics(self, model: torch.nn.Module, task: Task) -> dict[str, float]:
        first, second = half_losses(model, self)
        return {"first_half_loss": first, "second_half_loss": second, **head_scores(model, self)}

    def make_task(self) -> Task:
        (xt, yt, _, _), (xv, yv, _, _) = splits(self)
        return Task("induction", xt, yt, xv, yv, positions=tuple(range(self.n_ctx - 1)), n_classes=self.vocab)


def sample(n: int, cfg: InductionConfig, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(tokens [n, T], next-token targets [n, T − 1], first-copy mask [n, T − 1], second-copy mask [n, T − 1])."""
    T = cfg.n_ctx
    L = torch.randint(cfg.min_seg, cfg.max_seg + 1, (n,), generator=gen)
    gap = (torch.rand(n, generator=gen) * (T - 2 * L + 1)).long()
    a = (torch.rand(n, generator=gen) * (T - 2 * L - gap + 1)).long()
    d, b = L + gap, a + L + gap
    tokens = torch.randint(0, cfg.vocab, (n, T), generator=gen)
    pos = torch.arange(T)[None, :]
    if cfg.distinct_segment:  # the first copy: the first L entries of a random permutation of the vocabulary
        perm = torch.rand(n, cfg.vocab, generator=gen).argsort(1)[:, : cfg.max_seg]  # [n, max_seg]
        in_seg = (pos >= a[:, None]) & (pos < (a + L)[:, None])
        tokens = torch.where(in_seg, perm.gather(1, (pos - a[:, None]).clamp(0, cfg.max_seg - 1)), tokens)
    in_copy = (pos >= b[:, None]) & (pos < (b + L)[:, None])
    tokens = tokens.gather(1, torch.where(in_copy, pos - d[:, None], pos))  # the second copy repeats the first
    t = pos[:, :-1]
    in_first = (t >= a[:, None]) & (t < (a + L - 1)[:, None])
    in_second = (t >= b[:, None]) & (t < (b + L - 1)[:, None])
    return tokens, tokens[:, 1:], in_first, in_second


def splits(cfg: InductionConfig) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The training and held-out samples of the recipe (the same every call)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return sample(cfg.n_train, cfg, gen), sample(cfg.n_val, cfg, gen)


def repeated_half_task(task: Task, cfg: InductionConfig) -> Task:
    """``task`` scored only inside the second copy (the induction positions); IGNORE elsewhere."""
    (_, yt, _, st), (_, yv, _, sv) = splits(cfg)
    return Task(
        "induction",
        task.train_inputs,
        torch.where(st, yt, IGNORE),
        task.val_inputs,
        torch.where(sv, yv, IGNORE),
        task.positions,
        task.n_classes,
    )


def half_losses(model: torch.nn.Module, cfg: InductionConfig, n: int = 1000) -> tuple[float, float]:
    """Mean next-token loss inside the first copy (fresh tokens) and inside the second (induction)."""
    x, y, first, second = sample(n, cfg, torch.Generator().manual_seed(cfg.seed + 7))
    with torch.no_grad():
        logits = model(x)[:, :-1]
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
    ).reshape(first.shape)
    return float((ce * first).sum() / first.sum()), float((ce * second).sum() / second.sum())


def pattern_scores(pattern: Tensor, first: Tensor, second: Tensor) -> tuple[float, float]:
    """(previous-token score, induction score) of one head's attention ``pattern`` [N, T, T] (query, key)
    on sequences whose copies are marked by ``first`` / ``second`` [N, T − 1] (as :func:`sample` returns).

    previous-token score = mean over queries t ≥ 1 of A[t, t − 1];
    induction score      = mean over second-copy queries t (t ∈ [b, b + L − 2]) of A[t, t − d + 1], the
                           key holding the token after the previous occurrence of x_t (d = b − a).
    """
    N, T, _ = pattern.shape
    t = torch.arange(1, T)
    prev = pattern[:, t, t - 1].mean()
    d = second.float().argmax(1) - first.float().argmax(1)  # b − a, [N]
    rows, cols = second.nonzero(as_tuple=True)  # the scored second-copy queries
    ind = pattern[rows, cols, cols - d[rows] + 1].mean()
    return float(prev), float(ind)


def head_scores(model: torch.nn.Module, cfg: InductionConfig, n: int = 1000) -> dict[str, float]:
    """``prev_token_score.LlHh`` and ``induction_score.LlHh`` of every head (:func:`pattern_scores`) on
    ``n`` fresh sequences (seed + 7, as :func:`half_losses`)."""
    from mechscope.sites import capture

    x, _, first, second = sample(n, cfg, torch.Generator().manual_seed(cfg.seed + 7))
    names = {f"L{l}H{h}": f"blocks.{l}.attn.heads.{h}.pattern" for l in range(cfg.n_layers) for h in range(cfg.n_heads)}
    with torch.no_grad(), capture(model, list(names.values())) as acts:
        model(x)
    out: dict[str, float] = {}
    for head, site in names.items():
        prev, ind = pattern_scores(acts[site], first, second)
        out[f"prev_token_score.{head}"], out[f"induction_score.{head}"] = prev, ind
    return out

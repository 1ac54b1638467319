"""``parens``: is a string of "(" and ")" balanced? A bidirectional classifier read at the [BEGIN] position.

Input: ``[BEGIN] c_1 … c_n [PAD] …`` with n ≤ 40 (tokens PAD=0, BEGIN=1, "("=2, ")"=3), 42 positions.
Output: logits [B, T, 2] (0 unbalanced, 1 balanced); only position 0 is scored.

With e_i the elevation after i characters (+1 for "(", −1 for ")"), a string is balanced iff
e_n = 0 (*count test*) and e_i ≥ 0 for all i (*horizon test*). As in Redwood Research's causal-scrubbing
write-up, most unbalanced strings are made hard, failing only one test. Each example is drawn from one of
four sources with equal probability, and its label is then computed from the string itself:

- ``balanced``       even n; a walk forced up at elevation 0 and down when the remaining characters
                     equal the elevation, else a fair coin (balanced by construction; not uniform over
                     balanced strings)
- ``count_only``     even n; a random permutation of n/2 "(" and n/2 ")": passes the count test and
                     usually fails the horizon test
- ``horizon_only``   any n; a walk forced up at elevation 0, else a fair coin: never negative, usually
                     ends above 0
- ``uniform``        any n; fair coins

so about a quarter plus a little of the examples are balanced. Lengths are uniform over the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.task import Task
from mechscope.zoo.recipe import TrainRecipe
from mechscope.zoo.transformer import TransformerShape

PAD, BEGIN, OPEN, CLOSE = 0, 1, 2, 3
SOURCES = ("balanced", "count_only", "horizon_only", "uniform")


@dataclass(frozen=True)
class ParensConfig(TrainRecipe):
    """Recipe of the balanced-parentheses classifier (3 layers, 2 heads, bidirectional, LayerNorm)."""

    max_len: int = 40
    """Longest string of parentheses (positions = max_len + 2: [BEGIN] and one padding slot at least)."""
    n_train: int = 100_000
    """Training strings."""
    n_val: int = 10_000
    """Held-out strings, drawn after the training ones from the same generator."""
    d_model: int = 48
    """Residual width."""
    n_heads: int = 2
    """Heads per block."""
    n_layers: int = 3
    """Blocks."""
    d_mlp: int = 64
    """MLP hidden width."""
    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    decay: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len < 2 or self.n_train < 1 or self.n_val < 1 or self.d_model % self.n_heads:
            raise UsageError("parens needs max_len ≥ 2, n_train, n_val ≥ 1 and d_model divisible by n_heads")

    def shape(self) -> TransformerShape:
        return TransformerShape(
            vocab=4,
            n_out=2,
            n_ctx=self.max_len + 2,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            n_layers=self.n_layers,
            d_mlp=self.d_mlp,
            layer_norm=True,
            causal=False,
            pad_token=PAD,
        )

    def make_task(self) -> Task:
        gen = torch.Generator().manual_seed(self.seed)
        train, val = sample(self.n_train, self.max_len, gen), sample(self.n_val, self.max_len, gen)
        return Task("parens", train, is_balanced(train), val, is_balanced(val), positions=(0,), n_classes=2)


def _walk(lengths: Tensor, max_len: int, gen: torch.Generator, force_close: bool) -> Tensor:
    """Steps ±1 [N, max_len] (0 beyond each length): up at elevation 0, down when the remaining steps equal
    the elevation (if ``force_close``), else a fair coin."""
    n = lengths.shape[0]
    steps = torch.zeros(n, max_len, dtype=torch.long)
    h = torch.zeros(n, dtype=torch.long)
    coins = torch.randint(0, 2, (n, max_len), generator=gen) * 2 - 1
    for t in range(max_len):
        s = torch.where(h == 0, 1, coins[:, t])
        if force_close:
            s = torch.where((h > 0) & (h >= lengths - t), -1, s)
        s = torch.where(t < lengths, s, 0)
        steps[:, t], h = s, h + s
    return steps


def sample(n: int, max_len: int, gen: torch.Generator) -> Tensor:
    """``n`` token sequences [n, max_len + 2] from the four sources of the module docstring."""
    source = torch.randint(0, len(SOURCES), (n,), generator=gen)
    any_len = torch.randint(1, max_len + 1, (n,), generator=gen)
    even_len = 2 * torch.randint(1, max_len // 2 + 1, (n,), generator=gen)
    lengths = torch.where((source == 0) | (source == 1), even_len, any_len)
    balanced = _walk(lengths, max_len, gen, force_close=True)
    horizon = _walk(lengths, max_len, gen, force_close=False)
    pos = torch.arange(max_len)
    half = torch.where(pos < (lengths // 2)[:, None], 1, -1)
    keys = torch.rand(n, max_len, generator=gen).masked_fill(pos >= lengths[:, None], 2.0)
    count = half.gather(1, keys.argsort(1).argsort(1)) * (pos < lengths[:, None])  # a shuffle within each length
    uniform = (torch.randint(0, 2, (n, max_len), generator=gen) * 2 - 1) * (pos < lengths[:, None])
    steps = torch.stack([balanced, count, horizon, uniform])[source, torch.arange(n)]
    chars = torch.where(steps > 0, OPEN, torch.where(steps < 0, CLOSE, PAD))
    return torch.cat([torch.full((n, 1), BEGIN), chars, torch.full((n, 1), PAD)], dim=1)


def elevation(tokens: Tensor) -> Tensor:
    """Elevation after each position, [N, T]: cumulative +1 per "(", −1 per ")"."""
    return ((tokens == OPEN).long() - (tokens == CLOSE).long()).cumsum(1)


def is_balanced(tokens: Tensor) -> Tensor:
    """1 where the string is balanced (final elevation 0, never negative), else 0; [N] int64."""
    e = elevation(tokens)
    return ((e[:, -1] == 0) & (e.min(1).values >= 0)).long()

"""The models of the coverage table (scripts/coverage.py) beside :mod:`tests.helpers_families`: a family's tiny
model saved with a tokenizer as a Hugging Face folder, and two models outside the family table, a stub of
TransformerLens's ``HookedTransformer`` and a plain ``nn.Module`` classifier.

Shapes: B rows, T tokens, V vocabulary, d width; n heads of width e; m MLP neurons.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from tests.helpers_families import build


def save(name: str, folder: Path, tokenizer: Any) -> Path:
    """``build(name)`` (:mod:`tests.helpers_families`) over ``tokenizer``'s whole vocabulary, saved with it by
    save_pretrained into ``folder``."""
    ids = {k: getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    special = {f"{k}_token_id": v for k, v in ids.items() if v is not None}
    model = build(name, vocab_size=len(tokenizer), **special)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class HookPoint(nn.Identity):
    """TransformerLens's hook point: an identity module whose output is the activation it names."""


class _LayerNorm(nn.Module):
    """TransformerLens's LayerNorm: parameters ``w``, ``b`` and a hook on its output (the MLP's input for ln2)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        return self.hook_normalized(x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * self.w + self.b)


class _Attention(nn.Module):
    """Causal attention with TransformerLens's per-head weights W_Q, W_K, W_V [n, d, e] and W_O [n, e, d]."""

    def __init__(self, d: int, n: int, e: int) -> None:
        super().__init__()
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.randn(n, d, e) / math.sqrt(d)) for _ in range(3))
        self.W_O = nn.Parameter(torch.randn(n, e, d) / math.sqrt(n * e))
        self.b_O = nn.Parameter(torch.zeros(d))
        for hook in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z"):
            setattr(self, hook, HookPoint())

    def forward(self, x: Tensor) -> Tensor:  # x [B, T, d]
        q, k, v = (
            hook(torch.einsum("btd,nde->btne", x, w))
            for hook, w in ((self.hook_q, self.W_Q), (self.hook_k, self.W_K), (self.hook_v, self.W_V))
        )
        scores = torch.einsum("btne,bsne->bnts", q, k) / math.sqrt(q.shape[-1])
        T = x.shape[1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        z = self.hook_z(torch.einsum("bnts,bsne->btne", self.hook_pattern(scores.softmax(-1)), v))
        return torch.einsum("btne,ned->btd", z, self.W_O) + self.b_O


class _MLP(nn.Module):
    """TransformerLens's MLP: weight matrices W_in [d, m] and W_out [m, d] (no nn.Linear), hooks before and after GELU."""

    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.W_in, self.b_in = nn.Parameter(torch.randn(d, m) / math.sqrt(d)), nn.Parameter(torch.zeros(m))
        self.W_out, self.b_out = nn.Parameter(torch.randn(m, d) / math.sqrt(m)), nn.Parameter(torch.zeros(d))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_post(nn.functional.gelu(self.hook_pre(x @ self.W_in + self.b_in))) @ self.W_out + self.b_out


class _Block(nn.Module):
    def __init__(self, d: int, n: int, e: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = _LayerNorm(d), _LayerNorm(d)
        self.attn, self.mlp = _Attention(d, n, e), _MLP(d, 4 * d)
        for hook in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, hook, HookPoint())

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class _Matrix(nn.Module):
    """TransformerLens's Embed / PosEmbed / Unembed: one weight matrix under its TransformerLens name."""

    def __init__(self, name: str, rows: int, cols: int) -> None:
        super().__init__()
        self.name = name
        self.register_parameter(name, nn.Parameter(torch.randn(rows, cols) / math.sqrt(cols)))

    def forward(self, x: Tensor) -> Tensor:
        w = getattr(self, self.name)
        return w[x] if self.name != "W_U" else x @ w


class HookedTransformer(nn.Module):
    """A stand-in for TransformerLens's ``HookedTransformer`` (not a dependency of mechscope): its module and
    parameter names (``blocks.L.hook_resid_post``, ``blocks.L.attn.hook_z``, ``blocks.L.mlp.W_in`` …, no
    nn.Linear), its ``cfg`` (no Hugging Face ``config``) and its forward, ``model(input [B, T]) -> logits [B, T, V]``."""

    def __init__(
        self, d_vocab: int, d_model: int = 32, n_layers: int = 2, n_heads: int = 4, d_head: int = 16, n_ctx: int = 64
    ) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(
            d_vocab=d_vocab,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_head=d_head,
            d_mlp=4 * d_model,
            n_ctx=n_ctx,
            model_name="tiny-random",
            act_fn="gelu",
            normalization_type="LN",
        )
        self.embed, self.pos_embed = _Matrix("W_E", d_vocab, d_model), _Matrix("W_pos", n_ctx, d_model)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_head) for _ in range(n_layers))
        self.ln_final = _LayerNorm(d_model)
        self.unembed = _Matrix("W_U", d_model, d_vocab)

    def forward(self, input: Tensor, return_type: str = "logits") -> Tensor:  # noqa: A002 (TransformerLens's name)
        x = self.hook_embed(self.embed(input)) + self.hook_pos_embed(self.pos_embed(torch.arange(input.shape[1])))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))


# Classes of the real package live in transformer_lens.*, which is how mechscope tells a TransformerLens model.
for _cls in (HookPoint, _LayerNorm, _Attention, _MLP, _Block, _Matrix, HookedTransformer):
    _cls.__module__ = "transformer_lens.HookedTransformer"


def hooked_transformer(d_vocab: int) -> HookedTransformer:
    """A tiny random :class:`HookedTransformer` (seed 0) in eval mode."""
    torch.manual_seed(0)
    return HookedTransformer(d_vocab).eval()


class MLPClassifier(nn.Module):
    """A plain ``nn.Module``: inputs [B, d_in] → class logits [B, n_classes] through two ReLU layers."""

    def __init__(self, d_in: int = 16, d_hidden: int = 32, n_classes: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = (
            nn.Linear(d_in, d_hidden),
            nn.Linear(d_hidden, d_hidden),
            nn.Linear(d_hidden, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def mlp_classifier() -> MLPClassifier:
    """A tiny random :class:`MLPClassifier` (seed 0) in eval mode."""
    torch.manual_seed(0)
    return MLPClassifier().eval()

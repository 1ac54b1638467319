"""The zoo's one transformer: small, readable, with a named site for every per-head quantity.

Shape letters: B batch, T tokens, d model width, H heads, e head width (d_head), m MLP width, V outputs.

Forward (pre-LayerNorm when ``layer_norm``, else the residual stream is read as is)::

    x_0 = W_E[tokens] + W_P[positions]                                  [B, T, d]
    for each block l:
        for each head h:  q_h = LN(x) W_Q[h] + b_Q[h]  (k_h, v_h alike)  [B, T, e]
                          A_h = softmax(q_h k_hᵀ / √e + mask)             [B, T, T]
                          z_h = A_h v_h                                   [B, T, e]
                          r_h = z_h W_O[h]                                [B, T, d]
        x = x + Σ_h r_h + b_O
        x = x + W_out·act(W_in·LN(x) + b_in) + b_out                      (when d_mlp > 0)
    logits = LN(x) W_U + b_U                                              [B, T, V]

Sites (module paths usable with :mod:`mechscope.sites`; every one is an ``nn.Identity`` the value passes
through, so capturing reads it and patching replaces it):

- ``embed``, ``pos_embed``                          token and position embeddings, [B, T, d]
- ``blocks.L``                                      the residual stream after block L, [B, T, d]
                                                    (``blocks.L:input`` is the stream before it)
- ``blocks.L.attn.heads.H.q_in`` / ``k_in`` / ``v_in``  what head H's query/key/value read (after the
                                                    LayerNorm), [B, T, d]: patch one to change a single path
- ``blocks.L.attn.heads.H.q`` / ``k`` / ``v``        the head's query/key/value, [B, T, e]
- ``blocks.L.attn.heads.H.pattern``                 attention probabilities, [B, T_query, T_key]
- ``blocks.L.attn.heads.H.z``                       the head's output before W_O, [B, T, e]
- ``blocks.L.attn.heads.H.result``                  the head's write to the residual stream, z W_O[h], [B, T, d]
- ``blocks.L.attn``                                 all heads' sum + b_O, [B, T, d]
- ``blocks.L.mlp``                                  the MLP's output, [B, T, d] (``blocks.L.mlp.hidden``: [B, T, m])
- ``unembed``                                       logits, [B, T, V]

The cost of the per-head modules (a few Python calls per head) is nothing beside the readability of a
site per head; the models are tiny.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TransformerShape:
    """The architecture of one zoo transformer."""

    vocab: int
    """Input vocabulary size."""
    n_out: int
    """Number of output logits per position (the vocabulary for a language model, classes for a classifier)."""
    n_ctx: int
    """Maximum number of positions."""
    d_model: int
    """Residual stream width."""
    n_heads: int
    """Attention heads per block."""
    d_head: int
    """Width of each head's query, key and value."""
    n_layers: int
    """Number of blocks."""
    d_mlp: int
    """MLP hidden width; 0 means attention-only blocks."""
    layer_norm: bool
    """Pre-LayerNorm before attention, MLP and unembedding (False: none, as in the modular-addition model)."""
    causal: bool
    """Causal attention mask (False: bidirectional, as in the parentheses classifier)."""
    pad_token: int = -1
    """Keys holding this token are masked out of attention (-1: no padding token)."""


class Head(nn.Module):
    """The named sites of one attention head (the weights live in :class:`Attention`)."""

    # set in __init__, one nn.Identity each
    q_in: nn.Identity
    k_in: nn.Identity
    v_in: nn.Identity
    q: nn.Identity
    k: nn.Identity
    v: nn.Identity
    pattern: nn.Identity
    z: nn.Identity
    result: nn.Identity

    def __init__(self) -> None:
        super().__init__()
        for name in ("q_in", "k_in", "v_in", "q", "k", "v", "pattern", "z", "result"):
            setattr(self, name, nn.Identity())


class Attention(nn.Module):
    """Multi-head attention with per-head weights ``W_Q, W_K, W_V: [H, d, e]``, ``W_O: [H, e, d]``."""

    def __init__(self, s: TransformerShape) -> None:
        super().__init__()
        self.s = s
        H, d, e = s.n_heads, s.d_model, s.d_head
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.randn(H, d, e) / math.sqrt(d)) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(H, e)) for _ in range(3))
        self.W_O = nn.Parameter(torch.randn(H, e, d) / math.sqrt(H * e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.heads = nn.ModuleList(Head() for _ in range(H))

    def _project(self, x: Tensor, which: str, W: Tensor, b: Tensor) -> Tensor:
        """[B, T, d] → per head [B, T, e], each head reading its own ``<which>_in`` site."""
        return torch.stack(
            [getattr(hd, which)(getattr(hd, which + "_in")(x) @ W[h] + b[h]) for h, hd in enumerate(self.heads)], dim=0
        )  # [H, B, T, e]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: [B, T, d]; mask: [B, T, T] additive (0 or -inf). Returns Σ_h r_h + b_O, [B, T, d]."""
        q = self._project(x, "q", self.W_Q, self.b_Q)
        k = self._project(x, "k", self.W_K, self.b_K)
        v = self._project(x, "v", self.W_V, self.b_V)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.s.d_head) + mask  # [H, B, T, T]
        probs = scores.softmax(-1)
        out = self.b_O
        for h, hd in enumerate(cast("Iterable[Head]", self.heads)):
            z = hd.z(hd.pattern(probs[h]) @ v[h])  # [B, T, e]
            out = out + hd.result(z @ self.W_O[h])
        return out


class MLP(nn.Module):
    """W_out·GELU(W_in x + b_in) + b_out; ``hidden`` is the site of the post-activation [B, T, m]."""

    def __init__(self, s: TransformerShape) -> None:
        super().__init__()
        self.fc_in = nn.Linear(s.d_model, s.d_mlp)
        self.fc_out = nn.Linear(s.d_mlp, s.d_model)
        self.hidden = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.hidden(nn.functional.gelu(self.fc_in(x))))


class Block(nn.Module):
    def __init__(self, s: TransformerShape) -> None:
        super().__init__()
        norm = (lambda: nn.LayerNorm(s.d_model)) if s.layer_norm else nn.Identity
        self.ln1, self.attn = norm(), Attention(s)
        self.ln2: nn.Module | None = norm() if s.d_mlp > 0 else None
        self.mlp: MLP | None = MLP(s) if s.d_mlp > 0 else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), mask)
        if self.mlp is not None:
            assert self.ln2 is not None  # built with the MLP
            x = x + self.mlp(self.ln2(x))
        return x


class ZooTransformer(nn.Module):
    """``forward(tokens: LongTensor[B, T]) -> logits [B, T, V]``; see the module docstring for its sites."""

    def __init__(self, s: TransformerShape) -> None:
        super().__init__()
        self.shape = s
        self.W_E = nn.Parameter(torch.randn(s.vocab, s.d_model) / math.sqrt(s.d_model))
        self.W_P = nn.Parameter(torch.randn(s.n_ctx, s.d_model) / math.sqrt(s.d_model))
        self.embed, self.pos_embed = nn.Identity(), nn.Identity()
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.ln_final = nn.LayerNorm(s.d_model) if s.layer_norm else nn.Identity()
        self.W_U = nn.Parameter(torch.randn(s.d_model, s.n_out) / math.sqrt(s.d_model))
        self.b_U = nn.Parameter(torch.zeros(s.n_out))
        self.unembed = nn.Identity()

    def mask(self, tokens: Tensor) -> Tensor:
        """Additive attention mask [B, T, T] in the model's dtype: -inf on future keys (causal) and on padding keys."""
        B, T = tokens.shape
        allowed = torch.ones(B, T, T, dtype=torch.bool, device=tokens.device)
        if self.shape.causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        if self.shape.pad_token >= 0:
            allowed = allowed & (tokens != self.shape.pad_token)[:, None, :]
        return torch.zeros(B, T, T, device=tokens.device, dtype=self.W_E.dtype).masked_fill(~allowed, float("-inf"))

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        if T > self.shape.n_ctx:
            raise ValueError(f"{T} tokens but the model has {self.shape.n_ctx} positions")
        x = self.embed(self.W_E[tokens]) + self.pos_embed(self.W_P[:T].expand(tokens.shape[0], T, -1))
        mask = self.mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.unembed(self.ln_final(x) @ self.W_U + self.b_U)

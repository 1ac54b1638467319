"""AtP* (Kramár et al. 2024): attribution patching with its two corrections.

Shapes: B examples, T positions (T_q queries, T_k keys), e a head's width, N nodes, L layers.

1. **Attention-saturation fix.** For a node that is a head's query or key (a site ``….heads.H.q`` or ``.k`` of
   a :class:`~mechscope.zoo.transformer.ZooTransformer`, whose sibling ``….heads.H.pattern`` holds the
   attention probabilities), AtP's linear step through the softmax is replaced by the softmax itself:

       A' = softmax(q' kᵀ / √e + mask)        (q' the corrupted query; for a key node, q kᵀ' instead)
       Δ̂ = Σ (A' − A) · ∂m/∂A |clean          summed over B, T_q, T_k

   so a saturated clean pattern (gradient ≈ 0) no longer hides a large change of where the head looks.
   The paper applies the fix per key token; a node here is the whole head (all positions patched at
   once), so A' is recomputed once with every position's query (or key) corrupted.

   On a Hugging Face model the query/key nodes are one head's slice of a separate query or key projection
   (:func:`~mechscope.circuits.discover.hf_nodes` with ``qkv=True``; under grouped-query attention a key
   node is one key/value head, shared by its group of query heads). Its patched query (key) after rotary
   embeddings and any per-head q/k norm is the corrupted run's, so A' is the family's own eager attention
   function applied to the clean call with that head's query (key) taken from the corrupted call, and
   ∂m/∂A is read through :func:`~mechscope.circuits.hf.attention_patterns` (the eager function stands in for
   the model's attention implementation in these forwards). Refused by name: families whose query and key
   come out of one fused projection (GPT-2, GPT-NeoX, Phi-3: no query or key node exists) and a q/k norm over
   all heads together (OLMo 2: patching one head's slice changes every head's query).
2. **GradDrop.** For each layer ℓ the backward pass is re-run with layer ℓ's writes to the residual
   stream treated as constants (``detach``), giving AtP_ℓ(n); the score is

       Ĩ(n) = 1/(L − 1) · Σ_ℓ |AtP_ℓ(n)|

   (the node's own layer contributes 0, hence L − 1). It counters cancellation between a node's direct and
   indirect paths; the score is a magnitude, so the result has ``signed=False`` and agreement with exact
   patching is measured on |exact|.

Cost: one corrupted forward, one clean forward + backward, and with GradDrop L more forward + backward pairs.
Any node that is not a query/key site gets plain AtP (with GradDrop when on).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from mechscope.circuits.hf import attention_patterns
from mechscope.circuits.patching import Component, Effects, Metric, _check, _check_metric, _site_values, grad_leaves
from mechscope.errors import UsageError
from mechscope.models.families import block_path, family_of, heads, n_blocks
from mechscope.sites import patch, resolve_sites

if TYPE_CHECKING:
    from mechscope.zoo.transformer import Block, ZooTransformer

_QK = re.compile(r"^(?P<head>.*\.heads\.\d+)\.(?P<which>q|k)$")
_PATTERN = ":pattern"  # key suffix of a Hugging Face attention module's pattern (not a site)


def zoo_layer_writes(model: nn.Module) -> list[list[str]]:
    """Per layer of a zoo transformer, the sites whose output is added to the residual stream."""
    blocks = (
        cast("Sequence[Block]", cast("ZooTransformer", model).blocks) if family_of(model).name == "zoo" else None
    )  # never duck-typed: TransformerLens has blocks too
    if blocks is None:
        raise UsageError("GradDrop needs each layer's residual writes: pass layers=[[site, …], …] for this model")
    return [[f"blocks.{i}.attn"] + ([f"blocks.{i}.mlp"] if b.mlp is not None else []) for i, b in enumerate(blocks)]


def layer_writes(model: nn.Module) -> list[list[str]]:
    """Per layer, the sites whose output is added to the residual stream: a zoo transformer's attention and MLP,
    a Hugging Face model's ``attn_out.L`` and ``mlp_out.L`` (after any post-norm)."""
    try:
        family = family_of(model)
    except UsageError:
        family = None
    if family is None or family.per_head:
        return zoo_layer_writes(model)
    return [[str(s) for s in resolve_sites(model, [f"attn_out.{i}", f"mlp_out.{i}"])] for i in range(n_blocks(model))]


def _hf_qk(model: nn.Module, node: Component) -> tuple[str, str, int] | None:
    """(attention module path, ``q`` or ``k``, head) when ``node`` is one head's slice of a Hugging Face model's
    separate query or key projection (head: a key/value head for ``k``); None for any other node."""
    try:
        f = family_of(model)
    except UsageError:
        return None
    if f.per_head or not f.qkv:
        return None
    m = re.match(rf"^{re.escape(block_path(model, f))}\.(\d+)\.(.+)$", node.site)
    if not m or m.group(2) not in f.qkv[:2]:
        return None
    which, e = "qk"[f.qkv.index(m.group(2))], heads(model).head_dim
    if node.start is None or node.start % e or node.stop - node.start != e:  # type: ignore[operator]
        raise UsageError(
            f"node {node.name}: the attention fix patches one head's {which} slice "
            f"[h·{e}, (h+1)·{e}) of {m.group(2)}; use hf_nodes(model, qkv=True)"
        )
    block = f"{block_path(model, f)}.{m.group(1)}"
    norm = f.qk_norm[0 if which == "q" else 1] if f.qk_norm else None
    weight = getattr(dict(model.named_modules()).get(f"{block}.{norm}"), "weight", None) if norm else None
    if weight is not None and weight.numel() != e:
        raise UsageError(
            f"{f.name} models normalise the queries and keys of all heads together ({norm}), so patching one "
            "head's slice changes every head's query; the attention fix cannot be taken per head "
            "(use attention_fix=False, or atp)"
        )
    return f"{block}.{f.attn}", which, node.start // e


def _pattern_from(model: nn.Module, tokens: Tensor, q: Tensor, k: Tensor) -> Tensor:
    """softmax(q kᵀ/√e + mask) [B, T_q, T_k] with the model's own mask for ``tokens``."""
    own_mask = getattr(model, "mask", None)
    mask = own_mask(tokens) if own_mask is not None else 0.0
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask).softmax(-1)


def _deltas(
    model: nn.Module, nodes: Sequence[Component], clean: Tensor, corrupt: Tensor, attention_fix: bool
) -> tuple[list[tuple[str, Tensor]], list[str], Tensor]:
    """For each node, (the site where the linear step is taken, the change there [site's shape]); the sites to
    read; the corrupted output."""
    plan: list[tuple[Component, str | None]] = []
    hf: dict[int, tuple[str, str, int]] = {}
    for i, n in enumerate(nodes):
        m = _QK.match(n.site) if attention_fix else None
        if m and n.start is not None:
            raise UsageError(f"node {n.name}: the attention fix patches a whole query/key site, not a slice")
        if attention_fix and not m and (qk := _hf_qk(model, n)):
            hf[i] = qk
        plan.append((n, m.group("head") if m else None))
    sites = sorted({n.site for n, _ in plan} | {f"{h}.{x}" for _, h in plan if h for x in ("q", "k", "pattern")})
    paths = sorted({p for p, _, _ in hf.values()})
    with torch.no_grad(), attention_patterns(model, paths) as calls:
        _, clean_acts = _site_values(model, sites, clean)
        clean_calls = dict(calls)
        corrupt_out, corrupt_acts = _site_values(model, sites, corrupt)
        corrupt_calls = dict(calls)
        out = []
        for i, (n, head) in enumerate(plan):
            if i in hf:
                path, which, h = hf[i]
                c, k = clean_calls[path], corrupt_calls[path]
                q2, k2 = c.query.clone(), c.key.clone()
                (q2 if which == "q" else k2)[:, h] = (k.query if which == "q" else k.key)[:, h]
                out.append((path + _PATTERN, c.pattern_of(q2, k2) - c.pattern))
            elif head is None:
                full = corrupt_acts[n.site] - clean_acts[n.site]
                out.append((n.site, n.replaced(torch.zeros_like(full), full)))  # zero outside the node's slice
            else:
                out.append(_zoo_fix(model, clean, n, head, clean_acts, corrupt_acts))
    return out, sorted({s for s, _ in out}), corrupt_out


def _zoo_fix(
    model: nn.Module,
    clean: Tensor,
    n: Component,
    head: str,
    clean_acts: dict[str, Tensor],
    corrupt_acts: dict[str, Tensor],
) -> tuple[str, Tensor]:
    """(the head's pattern site, A' − A) for a zoo query/key node."""
    q, k = clean_acts[f"{head}.q"], clean_acts[f"{head}.k"]
    if n.site.endswith(".q"):
        q = corrupt_acts[n.site]
    else:
        k = corrupt_acts[n.site]
    return f"{head}.pattern", _pattern_from(model, clean, q, k) - clean_acts[f"{head}.pattern"]


def _grads(
    model: nn.Module, sites: list[str], clean: Tensor, metric: Metric, frozen: Sequence[str] = ()
) -> tuple[Tensor, dict[str, Tensor | None]]:
    """(metric, ∂metric/∂site) at the clean input, with the ``frozen`` sites' outputs treated as constants. A key
    ``<attention module>:pattern`` is that module's pattern A (Hugging Face models)."""
    real = [s for s in sites if not s.endswith(_PATTERN)]
    paths = [s.removesuffix(_PATTERN) for s in sites if s.endswith(_PATTERN)]
    # leaves first: a node that is itself a frozen write then gets no gradient (its own layer counts 0)
    with (
        torch.enable_grad(),
        grad_leaves(model, real) as leaves,
        attention_patterns(model, paths, leaves=True) as calls,
        _detached(model, list(frozen)),
    ):
        m = metric(model(clean))
        if not m.requires_grad:
            raise UsageError(
                "the metric does not depend on the model's output (no gradient reaches it); "
                "compute it from the logits the model returns"
            )
        # each call's leaf is set (leaves=True) by the forward above
        every = {**{s: leaves[s] for s in real}, **{p + _PATTERN: cast(Tensor, calls[p].leaf) for p in paths}}
        g = torch.autograd.grad(m, [every[s] for s in sites], allow_unused=True)
    return m.detach(), dict(zip(sites, g))


class _detached:
    """Context: every site in ``sites`` passes its value on unchanged but stops the gradient (GradDrop)."""

    def __init__(self, model: nn.Module, sites: list[str]) -> None:
        self.ctx = [patch(model, s, lambda a: a.detach()) for s in sites]

    def __enter__(self) -> None:
        for c in self.ctx:
            c.__enter__()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for c in reversed(self.ctx):
            c.__exit__(kind, err, tb)


def _estimate(deltas: list[tuple[str, Tensor]], grads: dict[str, Tensor | None]) -> Tensor:
    return torch.stack([(d * g).sum() if (g := grads[s]) is not None else torch.zeros(()) for s, d in deltas]).float()


def atp_star_effects(
    model: nn.Module,
    nodes: Sequence[Component],
    clean: Tensor,
    corrupt: Tensor,
    metric: Metric,
    attention_fix: bool = True,
    grad_drop: bool = True,
    layers: Sequence[Sequence[str]] | None = None,
) -> Effects:
    """AtP* estimates for ``nodes`` (see the module docstring). ``layers``: per layer, the sites it writes to the
    residual stream (default: :func:`layer_writes`)."""
    _check(nodes, clean, corrupt)
    deltas, sites, corrupt_out = _deltas(model, nodes, clean, corrupt, attention_fix)
    m, g = _grads(model, sites, clean, metric)
    m_corrupt = metric(corrupt_out)
    _check_metric(m, m_corrupt)
    if not grad_drop:
        return Effects(tuple(nodes), _estimate(deltas, g), float(m), float(m_corrupt), 3, 1)
    per_layer = [list(s) for s in (layers if layers is not None else layer_writes(model))]
    if len(per_layer) < 2:
        raise UsageError(
            f"GradDrop averages over layers and needs at least 2, the model has {len(per_layer)}; use grad_drop=False"
        )
    total = torch.zeros(len(deltas))
    for frozen in per_layer:
        total += _estimate(deltas, _grads(model, sites, clean, metric, frozen)[1]).abs()
    return Effects(
        tuple(nodes),
        total / (len(per_layer) - 1),
        float(m),
        float(m_corrupt),
        3 + len(per_layer),
        1 + len(per_layer),
        signed=False,
    )

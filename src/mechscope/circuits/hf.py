"""One head's own input on Hugging Face attention, through transformers' attention-function interface.

Shapes: B examples, T positions, d residual width, H query heads, H_kv key/value heads (H_kv < H under
grouped-query attention, g = H / H_kv query heads per key/value head), e head width.

A Hugging Face attention module computes every head's query, key and value from one input x (the normed
residual stream) inside its own forward, then hands them to an *attention function* looked up by name
(``config._attn_implementation``: eager, sdpa, …). To let head h read another input x' for its query (or key,
or value) while every other head reads x, :func:`head_inputs`

1. runs the attention module's own forward on x' (with no cache) until it calls the attention function, keeps
   the q', k', v' it passes [B, H or H_kv, T, e] — after rotary embeddings and any q/k norm, exactly as the
   module computes them, so fused projections (GPT-2, GPT-NeoX, Phi-3) need nothing of their own — and
   stops that run there;
2. in the real call, replaces head h's query by q'[:, h] (key, value: k'[:, h // g], v'[:, h // g]) and calls
   the model's own attention function. A query head that reads its own key or value under grouped-query
   attention gets its own copy: keys and values are expanded to H heads for that call (and the module's
   ``num_key_value_groups`` is 1 during it).

The attention function and the mask are the implementation's own (each is registered under a mechscope
name that delegates to them), so with nothing replaced the forward is the model's, bit for bit. The recording
costs one extra attention forward per layer, up to the attention function: the distinct x' of a layer's head
inputs (inputs with the same x' share one) run stacked along the batch, with the call's tensors whose first
dimension is the batch (mask, rotary cos/sin, position ids) tiled to match.

:func:`attention_patterns` (for AtP*'s attention fix) keeps, for chosen attention modules, each call's
query, key and value and its pattern A [B, H, T_q, T_k], the probabilities of the family's own *eager*
attention function (which every family has and which returns A; the model's own implementation, e.g. sdpa,
returns none, so inside it eager and eager's mask stand in for it: the outputs agree to float rounding).
``pattern_of(q', k')`` recomputes A by that same function for a changed query or key. With ``leaves`` the
output is recomputed as (A + leaf)·V so that ∂m/∂leaf = ∂m/∂A; that is checked against the function's own
output, and a family whose attention output is not A·V is refused.

:func:`head_write` is head h's write to the residual stream: z[..., h·e:(h+1)·e] through its columns of the
output projection (a Linear, or GPT-2's Conv1D whose weight is [in, out]); the projection's bias is the same
in every run and belongs to none of the heads.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from mechscope.errors import MechscopeError, UsageError
from mechscope.sites import _input_slot

_PREFIX = "mechscope_heads_"


@dataclass(frozen=True)
class HeadInput:
    """One head's query, key or value input."""

    attn: str
    """Module path of the attention module."""
    head: int
    """The query head."""
    part: str
    """``q``, ``k`` or ``v``."""


InputFn = Callable[[HeadInput], "tuple[Hashable, Callable[[], Tensor]] | None"]
"""A head input → (a key, a function giving the x' it reads [B, T, d]), or None when it reads the module's own
input. Inputs with equal keys (not None) read the same x': it is computed once and shares one recording run."""


class _Recorded(Exception):
    """Raised by the attention function to end a recording run once q', k', v' are kept."""


@dataclass(eq=False)
class _State:
    recording: nn.Module | None = None
    recorded: tuple[Tensor, Tensor, Tensor] | None = None
    subs: dict[int, list[tuple[int, str, Tensor]]] = field(default_factory=dict)
    watched: dict[int, str] = field(default_factory=dict)
    """id(attention module) → its path, for :func:`attention_patterns`."""
    calls: dict[str, AttentionCall] = field(default_factory=dict)
    leaves: bool = False


@dataclass(frozen=True)
class AttentionCall:
    """One call of an attention function: its inputs and its pattern."""

    query: Tensor
    """[B, H, T_q, e] after rotary embeddings and any q-norm."""
    key: Tensor
    """[B, H_kv, T_k, e]."""
    value: Tensor
    """[B, H_kv, T_k, e]."""
    pattern: Tensor
    """A [B, H, T_q, T_k], the attention probabilities."""
    pattern_of: Callable[[Tensor, Tensor], Tensor]
    """(query, key) → the pattern the same function gives them (the call's mask, scaling, softcapping …)."""
    leaf: Tensor | None = None
    """With leaves: the zero [B, H, T_q, T_k] added to A before it weighs the values."""


_ACTIVE: list[_State] = []


def _delegate(module: nn.Module, impl: str) -> Callable[..., Any]:
    """The attention function ``impl`` names for ``module`` (its own family's eager function for "eager")."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if impl == "eager" and getattr(module, "reorder_and_upcast_attn", False):  # GPT-2's own eager variant
        return lambda m, q, k, v, mask, *a, **kw: m._upcast_and_reordered_attn(q, k, v, mask)
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None and impl.removeprefix("paged|") == "eager":
        raise MechscopeError(
            f"{type(module).__name__} runs eager attention but its module ({type(module).__module__}) has no "
            "eager_attention_forward to run it through; load the model with a transformers attention class"
        )
    # the default is only returned for "eager", where it was just checked
    return ALL_ATTENTION_FUNCTIONS.get_interface(impl, cast(Callable[..., Any], eager))


def _substitute(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, subs: list[tuple[int, str, Tensor]]
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(q, k, v) with each (head, part, recorded tensor) of ``subs`` put in; whether k and v were expanded."""
    g = q.shape[1] // k.shape[1]
    expand = g > 1 and any(part != "q" for _, part, _ in subs)
    if expand:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    new = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
    for head, part, rec in subs:
        src = head if part == "q" or rec.shape[1] == new[part].shape[1] else head // g
        new[part][:, head] = rec[:, src]
    return new["q"], new["k"], new["v"], expand


def _attention_function(impl: str) -> Callable[..., Any]:
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any) -> Any:
        for state in _ACTIVE:
            if state.recording is module:
                state.recorded = (query, key, value)
                raise _Recorded
        for state in _ACTIVE:
            if id(module) in state.watched:
                return _watched_call(state, module, query, key, value, args, kwargs)
        subs = [s for state in _ACTIVE for s in state.subs.pop(id(module), [])]
        fn = _delegate(module, impl)
        if not subs:
            return fn(module, query, key, value, *args, **kwargs)
        query, key, value, expanded = _substitute(module, query, key, value, subs)
        if not expanded:
            return fn(module, query, key, value, *args, **kwargs)
        groups = getattr(module, "num_key_value_groups", None)
        if groups is None:
            raise MechscopeError(
                f"{type(module).__name__} shares keys between query heads without a num_key_value_groups "
                "attribute, so one query head cannot be given its own key or value"
            )
        cast(Any, module).num_key_value_groups = 1  # the attribute transformers' attention reads
        try:
            return fn(module, query, key, value, *args, **kwargs)
        finally:
            module.num_key_value_groups = groups

    return attention


def _watched_call(
    state: _State, module: nn.Module, query: Tensor, key: Tensor, value: Tensor, args: tuple, kwargs: dict
) -> tuple[Tensor, Tensor]:
    """The family's eager attention on this call, its inputs and pattern kept (and with leaves, A + leaf used)."""
    fn = _delegate(module, "eager")
    out, A = fn(module, query, key, value, *args, **kwargs)
    if A is None:
        raise MechscopeError(
            f"{type(module).__name__}'s eager attention returned no pattern; AtP*'s attention fix cannot read it"
        )
    leaf = None
    if state.leaves:
        g = query.shape[1] // value.shape[1]
        weighed = A.matmul(value.repeat_interleave(g, 1) if g > 1 else value).transpose(1, 2)
        if weighed.shape != out.shape or not torch.allclose(weighed, out, atol=1e-5, rtol=1e-4):
            raise MechscopeError(
                f"{type(module).__name__}'s attention output is not its pattern times its values, so the "
                "attention fix cannot take ∂m/∂pattern; use atp* with attention_fix=False (or atp)"
            )
        leaf = torch.zeros_like(A, requires_grad=True)
        out = (A + leaf).matmul(value.repeat_interleave(g, 1) if g > 1 else value).transpose(1, 2)
    state.calls[state.watched[id(module)]] = AttentionCall(
        query, key, value, A, lambda q, k: fn(module, q, k, value, *args, **kwargs)[1], leaf
    )
    return out, A


def _register(impl: str) -> str:
    """The mechscope name standing in for ``impl``: its attention function delegates to ``impl``'s, its mask
    function is ``impl``'s."""
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )

    if impl not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        raise UsageError(
            f"per-head inputs go through transformers' attention functions, and the model's attention "
            f"implementation {impl!r} has no mask function there; load it with attn_implementation='eager' or 'sdpa'"
        )
    name = _PREFIX + impl
    AttentionInterface.register(name, _attention_function(impl))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    return name


@contextlib.contextmanager
def _interface(model: nn.Module, impl: str | None = None) -> Iterator[None]:
    """Inside, every config of ``model`` names the mechscope stand-in for its own attention implementation (for
    ``impl``'s, when given)."""
    configs = {
        id(c): c
        for m in model.modules()
        if (c := getattr(m, "config", None)) is not None and hasattr(c, "_attn_implementation")
    }
    before = [(c, c._attn_implementation) for c in configs.values()]
    try:
        for c, own in before:
            if impl is not None:
                c._attn_implementation = _register(impl)
            elif own is None or not own.startswith(_PREFIX):
                c._attn_implementation = _register(own or "eager")
        yield
    finally:
        for c, own in reversed(before):
            c._attn_implementation = own


def _record(state: _State, module: nn.Module, args: tuple, kwargs: dict, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q', k', v' that ``module`` computes from ``x`` with the other arguments of this call and no cache."""
    from transformers.cache_utils import Cache

    slot, _ = _input_slot(args, kwargs)
    args2 = [None if isinstance(a, Cache) else a for a in args]
    kw2 = {k: None if isinstance(v, Cache) else v for k, v in kwargs.items()}
    if slot == "args":
        args2[0] = x
    else:
        kw2[slot] = x
    state.recording, state.recorded = module, None
    try:
        module.forward(*args2, **kw2)  # .forward: this module's own hooks must not see the recording run
    except _Recorded:
        return state.recorded  # type: ignore[return-value]
    finally:
        state.recording = None
    raise MechscopeError(
        f"{type(module).__name__} did not call transformers' attention function, so its heads' inputs "
        "cannot be read one by one; edge methods do not support this attention module"
    )


def _tiled(value: Any, batch: int, times: int) -> Any:
    """``value`` with every tensor of ≥ 2 dimensions whose first is the batch repeated ``times`` times along it
    (the mask, rotary cos/sin and position ids of a call, for a batch of ``times`` stacked inputs)."""
    if isinstance(value, Tensor):
        return value.repeat(times, *[1] * (value.ndim - 1)) if value.ndim >= 2 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_tiled(v, batch, times) for v in value)
    return value


def _record_many(
    state: _State, module: nn.Module, args: tuple, kwargs: dict, xs: list[Tensor]
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:func:`_record` for several inputs in one run, stacked along the batch (one attention forward per layer)."""
    if len(xs) == 1:
        return [_record(state, module, args, kwargs, xs[0])]
    B, R = xs[0].shape[0], len(xs)
    q, k, v = _record(state, module, _tiled(args, B, R), {n: _tiled(a, B, R) for n, a in kwargs.items()}, torch.cat(xs))
    return list(zip(q.split(B), k.split(B), v.split(B)))


@contextlib.contextmanager
def head_inputs(model: nn.Module, inputs: Sequence[HeadInput], read: InputFn) -> Iterator[None]:
    """Inside, each forward gives every head input in ``inputs`` the x' that ``read`` returns for it (see the
    module docstring)."""
    by_attn: dict[str, list[HeadInput]] = {}
    for i in inputs:
        by_attn.setdefault(i.attn, []).append(i)
    state = _State()

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict, which: list[HeadInput]) -> None:
        slot: dict[Hashable, int] = {}  # key → its x' in xs
        xs: list[Tensor] = []
        reads: list[tuple[HeadInput, int]] = []
        for i in which:
            got = read(i)
            if got is None:
                continue
            key, x = got
            if key is None or key not in slot:
                xs.append(x())
                if key is not None:
                    slot[key] = len(xs) - 1
            reads.append((i, slot[key] if key is not None else len(xs) - 1))
        if reads:
            recs = _record_many(state, module, args, kwargs, xs)
            state.subs[id(module)] = [(i.head, i.part, recs[j]["qkv".index(i.part)]) for i, j in reads]

    handles = []
    with _interface(model):
        _ACTIVE.append(state)
        try:
            for path, which in by_attn.items():
                handles.append(
                    model.get_submodule(path).register_forward_pre_hook(
                        lambda m, a, kw, w=which: pre_hook(m, a, kw, w), with_kwargs=True
                    )
                )
            yield
        finally:
            for h in handles:
                h.remove()
            _ACTIVE.remove(state)


@contextlib.contextmanager
def attention_patterns(
    model: nn.Module, paths: Sequence[str], leaves: bool = False
) -> Iterator[dict[str, AttentionCall]]:
    """Inside, the attention modules at ``paths`` run the family's eager attention function and each forward
    records path → :class:`AttentionCall` in the yielded dict (see the module docstring)."""
    if not paths:
        yield {}
        return
    state = _State(watched={id(model.get_submodule(p)): p for p in paths}, leaves=leaves)
    with _interface(model, "eager"):
        _ACTIVE.append(state)
        try:
            yield state.calls
        finally:
            _ACTIVE.remove(state)


def head_write(proj: nn.Module, z: Tensor, span: tuple[int, int]) -> Tensor:
    """Head write [..., d]: z's slice ``span`` [..., e] through those input columns of the output projection
    ``proj`` (no bias)."""
    s, e = span
    w = cast(Tensor, proj.weight)
    if isinstance(proj, nn.Linear):
        return z[..., s:e] @ w[:, s:e].T
    if type(proj).__name__ == "Conv1D":  # transformers' Conv1D: weight [in, out]
        return z[..., s:e] @ w[s:e, :]
    raise UsageError(
        f"the output projection is a {type(proj).__name__}, neither a Linear nor a Conv1D; "
        "a head's write cannot be read from it"
    )

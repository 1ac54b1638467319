"""Freeze the non-linear parts a replacement model keeps from the real forward: attention patterns and
normalisation denominators (Ameisen et al. 2025, "the local replacement model").

A :class:`Freezer` is used twice. In ``record`` mode (the clean forward) it stores, for every norm module,
its scale s = 1/√(mean(x²) + ε) (RMSNorm) or 1/√(var(x) + ε) (LayerNorm), and for every attention layer its
pattern A = softmax(q kᵀ·scale + mask) [B=1, H, T, T]. In ``replay`` mode the same modules read the stored
values instead of recomputing them, so the forward is exactly linear in the residual stream:

    RMSNorm:    y = g ⊙ x · s_frozen                       (x ↦ y linear)
    LayerNorm:  y = g ⊙ (x − mean(x)) · s_frozen + b       (affine; the mean subtraction is linear)
    attention:  o = A_frozen · (x W_V) W_O                 (per head; q and k no longer matter)

Stored values have batch 1 and broadcast over a replay batch of copies of the same prompt. Norms are
recognised by type (``nn.LayerNorm``, and any class named ``*RMSNorm`` with a ``weight`` and an epsilon); any
other module whose class name contains "Norm" is refused rather than left non-linear. Attention is frozen
through :data:`ATTENTION`, a registry of model kinds: ``zoo`` (the zoo transformer's ``pattern`` sites) and
``hf`` (Llama-family Hugging Face models, through transformers' attention-function interface; the prompt is
one unpadded sequence, so the mask is the causal one and the pattern is computed here, in float32, as the
eager implementation does).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.models.families import FAMILIES, is_zoo
from mechscope.sites import patch

Mode = Literal["record", "replay"]


class Freezer:
    """Stored norm scales and attention patterns, keyed by module path; ``mode`` says whether to store or read."""

    def __init__(self) -> None:
        self.mode: Mode = "record"
        self.store: dict[str, Tensor] = {}

    def value(self, key: str, compute: Callable[[], Tensor]) -> Tensor:
        """Record: compute, store (detached) and return it. Replay: the stored value."""
        if self.mode == "record":
            v = compute().detach()
            self.store[key] = v
            return v
        if key not in self.store:
            raise RuntimeError(f"nothing recorded for {key}: run the clean forward in record mode first")
        return self.store[key]


# ---- norms ------------------------------------------------------------------------------------------

def _eps(mod: nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if isinstance(getattr(mod, name, None), float):
            return float(getattr(mod, name))
    raise UsageError(f"{type(mod).__name__} has no epsilon attribute we know (variance_epsilon, eps); "
                     "attribution graphs support nn.LayerNorm and Llama-style RMSNorm")


def _norm_kind(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.LayerNorm):
        return "layer"
    name = type(mod).__name__
    if name.endswith("RMSNorm") and isinstance(getattr(mod, "weight", None), Tensor):
        if "Gemma" in name:  # Gemma multiplies by (1 + weight): a different formula we do not reproduce
            raise UsageError(f"{name} is not supported (it scales by 1 + weight); use a Llama-family model or the zoo")
        return "rms"
    if "Norm" in name:
        raise UsageError(f"cannot freeze {name}: attribution graphs support nn.LayerNorm and Llama-style RMSNorm only")
    return None


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(path, module, "rms" | "layer") for every normalisation module of ``model``."""
    out = []
    for path, mod in model.named_modules():
        kind = _norm_kind(mod)
        if kind is not None:
            out.append((path, mod, kind))
    return out


def _norm_hook(freezer: Freezer, key: str, kind: str, eps: float) -> Callable:
    def hook(mod: nn.Module, args: tuple, kwargs: dict, _out: Any) -> Tensor:
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))
        if kind == "rms":
            s = freezer.value(key, lambda: torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))
            return mod.weight * (x * s)
        centred = x - x.mean(-1, keepdim=True)
        s = freezer.value(key, lambda: torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps))
        y = centred * s
        if mod.weight is not None:
            y = y * mod.weight
        if mod.bias is not None:
            y = y + mod.bias
        return y
    return hook


# ---- attention ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _zoo_attention(model: nn.Module, freezer: Freezer) -> Iterator[None]:
    """Every ``blocks.L.attn.heads.H.pattern`` site reads its recorded pattern in replay."""
    with contextlib.ExitStack() as stack:
        for path, _ in model.named_modules():
            if path.endswith(".pattern"):
                def fn(act: Tensor, key: str = path) -> Tensor:
                    return freezer.value(key, lambda: act).expand_as(act)
                stack.enter_context(patch(model, path, fn))
        yield


_HF_NAME = "mechscope_frozen"
_ACTIVE: list[Freezer] = []


def _hf_frozen_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                         scaling: float, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ·scaling + causal mask) recorded, or read back, then · v. q: [B, H, T, e]; k, v: [B, H_kv, T, e]."""
    freezer = _ACTIVE[-1]
    groups = query.shape[1] // key.shape[1]
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value

    def pattern() -> Tensor:
        k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
        T_q, T_k = query.shape[2], k.shape[2]
        scores = (query.float() @ k.float().transpose(2, 3)) * scaling
        causal = torch.ones(T_q, T_k, dtype=torch.bool, device=query.device).tril(T_k - T_q)
        return scores.masked_fill(~causal, float("-inf")).softmax(-1).to(query.dtype)

    A = freezer.value(f"attn.{id(module)}", pattern)  # [1, H, T, T]
    out = A.expand(v.shape[0], -1, -1, -1) @ v
    return out.transpose(1, 2).contiguous(), A


def _check_hf_family(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    ready = [t for f in FAMILIES if f.graphs for t in f.model_types]
    if getattr(config, "model_type", None) not in ready:
        raise UsageError(f"attribution graphs cannot yet freeze {getattr(config, 'model_type', type(model).__name__)!r} "
                         f"models; they support the Hugging Face families {', '.join(ready)} and the zoo (use smollm2 or a zoo model)")


@contextlib.contextmanager
def _hf_attention(model: nn.Module, freezer: Freezer) -> Iterator[None]:
    from transformers import AttentionInterface

    _check_hf_family(model)
    AttentionInterface.register(_HF_NAME, _hf_frozen_attention)
    configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    before = [c._attn_implementation for c in configs]
    _ACTIVE.append(freezer)
    try:
        for c in configs:
            c._attn_implementation = _HF_NAME
        yield
    finally:
        _ACTIVE.pop()
        for c, b in zip(configs, before):
            c._attn_implementation = b


# Model kind → (does this model belong to it, the context manager that freezes its attention).
ATTENTION: dict[str, tuple[Callable[[nn.Module], bool], Callable[[nn.Module, Freezer], Any]]] = {
    "zoo": (is_zoo, _zoo_attention),
    "hf": (lambda m: hasattr(m, "config") and hasattr(getattr(m, "config"), "_attn_implementation"), _hf_attention),
}


def model_kind(model: nn.Module) -> str:
    """The :data:`ATTENTION` key of ``model``; a model of no known kind, or a Hugging Face family whose
    attention and norms graphs cannot freeze yet, is refused by name (before any transcoder is read)."""
    for kind, (belongs, _) in ATTENTION.items():
        if belongs(model):
            if kind == "hf":
                _check_hf_family(model)
            return kind
    raise UsageError(f"attribution graphs cannot freeze the attention of a {type(model).__name__}; "
                     "use a zoo model or a Llama-family Hugging Face model")


@contextlib.contextmanager
def frozen(model: nn.Module, freezer: Freezer, attention: bool = True) -> Iterator[Freezer]:
    """Inside, every norm and (if ``attention``) every attention pattern of ``model`` is recorded or replayed
    by ``freezer`` according to ``freezer.mode``. ``attention=False`` exists to show what the exactness check
    catches when attention is left live (tests)."""
    kind = model_kind(model)
    handles = []
    try:
        for path, mod, nk in norm_modules(model):
            handles.append(mod.register_forward_hook(_norm_hook(freezer, path, nk, _eps(mod)), with_kwargs=True))
        with contextlib.ExitStack() as stack:
            if attention:
                stack.enter_context(ATTENTION[kind][1](model, freezer))
            yield freezer
    finally:
        for h in handles:
            h.remove()

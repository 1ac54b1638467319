"""Freeze the non-linear parts a replacement model keeps from the real forward: attention patterns and
normalisation denominators (Ameisen et al. 2025, "the local replacement model").

A :class:`Freezer` is used twice. In ``record`` mode (the clean forward) it stores, for every norm module,
its scale s = 1/√(mean(x²) + ε) (RMSNorm) or 1/√(var(x) + ε) (LayerNorm), and for every attention layer its
pattern A = softmax(cap(q kᵀ·scale) + mask) [B=1, H, T, T]. In ``replay`` mode the same modules read the
stored values instead of recomputing them, so the forward is exactly linear in the residual stream:

    RMSNorm:    y = g ⊙ x · s_frozen                       (x ↦ y linear; Gemma: (1 + g) in place of g)
    LayerNorm:  y = g ⊙ (x − mean(x)) · s_frozen + b       (affine; the mean subtraction is linear)
    attention:  o = A_frozen · (x W_V) W_O                 (per head; q and k no longer matter)
    logit cap:  y = z ⊙ r_frozen,  r = c·tanh(z/c)/z       (Gemma 2's final logit soft-capping)

Stored values have batch 1 and broadcast over a replay batch of copies of the same prompt. Norms are
recognised by type (``nn.LayerNorm``, and any class named ``*RMSNorm`` with a ``weight`` and an epsilon; a
``Gemma*RMSNorm`` scales by 1 + weight), and each one's formula is checked against the module's own output
while recording; any other module whose class name contains "Norm" is refused rather than left non-linear.
Norms inside attention (Qwen 3's, Gemma 3's and OLMo 2's q/k norms) are frozen like the others; they only
feed the pattern. Attention is frozen through :data:`ATTENTION`, a registry of model kinds: ``zoo`` (the zoo
transformer's ``pattern`` sites) and ``hf`` (Hugging Face models of the families whose row in
:data:`mechscope.models.families.FAMILIES` says ``graphs``, through transformers' attention-function
interface; the pattern is computed here, in float32, as the eager implementation does, with the model's own
eager mask — causal, and windowed on sliding-window layers — and Gemma 2's attention-logit soft-cap).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.models.families import FAMILIES, family_of, is_zoo
from mechscope.sites import layer_list_path, patch

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
    raise UsageError(
        f"{type(mod).__name__} has no epsilon attribute we know (variance_epsilon, eps); "
        "attribution graphs support nn.LayerNorm and Llama- or Gemma-style RMSNorm"
    )


def _rms_scale(x: Tensor, eps: float) -> Tensor:
    return torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)


def _layer_scale(x: Tensor, eps: float) -> Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)


def _rms_apply(mod: nn.Module, x: Tensor, s: Tensor) -> Tensor:
    return cast(Tensor, mod.weight) * (x * s)


def _gemma_rms_apply(mod: nn.Module, x: Tensor, s: Tensor) -> Tensor:
    return ((x.float() * s) * (1.0 + cast(Tensor, mod.weight).float())).type_as(x)  # Gemma: (1 + w), in float32


def _layer_apply(mod: nn.Module, x: Tensor, s: Tensor) -> Tensor:
    y = (x - x.mean(-1, keepdim=True)) * s
    weight, bias = cast("Tensor | None", mod.weight), cast("Tensor | None", mod.bias)  # None: no affine part
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


NORMS: dict[str, tuple[Callable[[Tensor, float], Tensor], Callable[[nn.Module, Tensor, Tensor], Tensor]]] = {
    "rms": (_rms_scale, _rms_apply),  # Llama, Mistral, Qwen, Phi-3, OLMo 2:  y = w ⊙ x · s
    "gemma_rms": (_rms_scale, _gemma_rms_apply),  # Gemma 2, Gemma 3:                      y = (1 + w) ⊙ x · s
    "layer": (_layer_scale, _layer_apply),  # nn.LayerNorm (GPT-2, NeoX, Phi, zoo):  y = w ⊙ (x − mean x) · s + b
}
"""Norm kind → (its scale s from the input x and epsilon, the output from x and a frozen s)."""


def _norm_kind(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.LayerNorm):
        return "layer"
    name = type(mod).__name__
    if name.endswith("RMSNorm") and isinstance(getattr(mod, "weight", None), Tensor):
        return "gemma_rms" if name.startswith("Gemma") else "rms"
    if "Norm" in name:
        raise UsageError(
            f"cannot freeze {name}: attribution graphs support nn.LayerNorm, Llama-style and Gemma-style RMSNorm only"
        )
    return None


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(path, module, a :data:`NORMS` kind) for every normalisation module of ``model``."""
    out = []
    for path, mod in model.named_modules():
        kind = _norm_kind(mod)
        if kind is not None:
            out.append((path, mod, kind))
    return out


def _norm_hook(freezer: Freezer, key: str, kind: str, eps: float) -> Callable:
    """In record mode the formula's output is checked against the module's own: a norm whose arithmetic is not
    the one :data:`NORMS` says (a class named like one it is not) is refused, never frozen on a guess."""
    scale, apply = NORMS[kind]

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Tensor:
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))
        y = apply(mod, x, freezer.value(key, lambda: scale(x, eps)))
        if freezer.mode == "record" and isinstance(out, Tensor):
            tol = 64 * torch.finfo(out.dtype).eps * (1.0 + float(out.detach().abs().max()))
            if y.shape != out.shape or float((y.detach() - out.detach()).abs().max()) > tol:
                raise UsageError(
                    f"cannot freeze {type(mod).__name__} at {key}: its output is not the {kind} norm formula "
                    "attribution graphs freeze (Llama-style RMSNorm, Gemma-style RMSNorm, nn.LayerNorm)"
                )
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


def _hf_frozen_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Any,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """softmax(cap(q kᵀ·scaling) + mask) recorded, or read back, then · v, as transformers' eager attention
    computes it. q: [B, H, T, e]; k, v: [B, H_kv, T, e]. cap(s) = c·tanh(s/c) where the family soft-caps
    attention logits (Gemma 2's ``softcap``); the mask is the model's own eager mask (causal, and the sliding
    window on sliding layers), or, if the model passed none, the causal mask with ``sliding_window``."""
    freezer = _ACTIVE[-1]
    groups = query.shape[1] // key.shape[1]

    def pattern() -> Tensor:
        k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
        T_q, T_k = query.shape[2], k.shape[2]
        scores = (query.float() @ k.float().transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            return (scores + attention_mask[..., :T_k].float()).softmax(-1).to(query.dtype)
        if getattr(module, "is_causal", True) is False:  # e.g. Gemma 3's vision tower: not a causal pattern to rebuild
            raise UsageError(
                f"attribution graphs freeze causal attention only; {type(module).__name__} attends both ways"
            )
        keep = torch.ones(T_q, T_k, dtype=torch.bool, device=query.device).tril(T_k - T_q)
        if sliding_window is not None:  # as transformers' sliding_window_overlay: kv > q − window
            keep &= ~torch.ones_like(keep).tril(T_k - T_q - sliding_window)
        return scores.masked_fill(~keep, float("-inf")).softmax(-1).to(query.dtype)

    A = freezer.value(f"attn.{id(module)}", pattern)  # [1, H, T_q, T_k], recorded on the one prompt (B = 1)
    # query heads g·j … g·j + g − 1 read kv head j: one matmul per kv head with the g patterns stacked, A [H_kv, g·T_q, T_k],
    # and the batch moved into v's columns, [H_kv, T_k, B·e]: broadcasting A over the batch instead would copy it B
    # times ([B, H, T_q, T_k]) and the autograd graph would keep that copy (B·H·T² floats per layer, for v's gradient)
    B, H_kv, T_k, e = value.shape
    T_q = A.shape[2]
    v = value.permute(1, 2, 0, 3).reshape(H_kv, T_k, B * e)
    out = A.reshape(H_kv, groups * T_q, T_k) @ v  # [H_kv, g·T_q, B·e]
    out = out.reshape(H_kv * groups, T_q, B, e).permute(2, 1, 0, 3)  # [B, T_q, H, e]
    return out.contiguous(), A


def _check_hf_family(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    ready = [t for f in FAMILIES if f.graphs for t in f.model_types]
    if getattr(config, "model_type", None) not in ready:
        raise UsageError(
            f"attribution graphs cannot yet freeze {getattr(config, 'model_type', type(model).__name__)!r} "
            f"models; they support the Hugging Face families {', '.join(ready)} and the zoo (use smollm2 or a zoo model)"
        )


@contextlib.contextmanager
def _hf_attention(model: nn.Module, freezer: Freezer) -> Iterator[None]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    _check_hf_family(model)
    AttentionInterface.register(_HF_NAME, _hf_frozen_attention)
    AttentionMaskInterface.register(_HF_NAME, eager_mask)  # the model builds its own masks (sliding windows) for us
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


@contextlib.contextmanager
def _final_logit_softcap(model: nn.Module, freezer: Freezer) -> Iterator[None]:
    """Gemma 2's logits are c·tanh(z/c) of the unembedding's output z (``config.final_logit_softcapping`` = c).
    Inside, the model's own cap is off and the unembedding's output hook applies it: record computes c·tanh(z/c)
    and stores the gain r = c·tanh(z/c)/z (1 where z = 0); replay returns z ⊙ r, linear in z like a frozen norm
    scale, and equal to the capped logits at the recorded point. A model without the setting is left alone."""
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if config is None or cap is None:
        yield
        return
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Module):
        raise UsageError(
            f"{type(model).__name__} soft-caps its logits but has no output embedding module to freeze the cap at"
        )

    def hook(_mod: nn.Module, _args: tuple, z: Tensor) -> Tensor:
        if freezer.mode == "record":
            y = torch.tanh(z / cap) * cap
            freezer.value("final_logit_softcap", lambda: torch.where(z == 0, torch.ones_like(z), y / z))
            return y
        return z * freezer.value("final_logit_softcap", lambda: z)

    handle = head.register_forward_hook(hook)
    config.final_logit_softcapping = None
    try:
        yield
    finally:
        config.final_logit_softcapping = cap
        handle.remove()


# Model kind → (does this model belong to it, the context manager that freezes its attention).
ATTENTION: dict[str, tuple[Callable[[nn.Module], bool], Callable[[nn.Module, Freezer], Any]]] = {
    "zoo": (is_zoo, _zoo_attention),
    "hf": (lambda m: hasattr(m, "config") and hasattr(m.config, "_attn_implementation"), _hf_attention),
}


def model_kind(model: nn.Module) -> str:
    """The :data:`ATTENTION` key of ``model``; a model of no known kind, or a Hugging Face family whose
    attention and norms graphs cannot freeze yet, is refused by name (before any transcoder is read)."""
    for kind, (belongs, _) in ATTENTION.items():
        if belongs(model):
            if kind == "hf":
                _check_hf_family(model)
            return kind
    raise UsageError(
        f"attribution graphs cannot freeze the attention of a {type(model).__name__}; "
        "use a zoo model or a Hugging Face model of a family they support"
    )


@contextlib.contextmanager
def skipped(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Inside, ``module`` runs ``forward`` in place of its own (its hooks still run); restored on exit."""
    before = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if before is None:
            del module.forward
        else:
            module.forward = before


def _zeros_out(mod: nn.Module) -> Callable[..., Tensor]:
    """A stand-in forward for the Linear ``mod``: zeros of its output's shape, without gradient."""
    return lambda x, *_a, **_k: x.new_zeros(*x.shape[:-1], mod.out_features)


def _unread_projections(model: nn.Module) -> list[nn.Module]:
    """The query and key projections of every block (separate Linear modules, :attr:`Family.qkv`): under a frozen
    pattern nothing reads them. Empty for a family with fused or per-head projections."""
    f, base = family_of(model), layer_list_path(model)
    if f.qkv is None or base is None:
        return []
    mods = [
        model.get_submodule(f"{base}.{i}.{name}")
        for i in range(len(cast(nn.ModuleList, model.get_submodule(base))))
        for name in f.qkv[:2]
    ]
    return [m for m in mods if isinstance(m, nn.Linear)]


@contextlib.contextmanager
def frozen(model: nn.Module, freezer: Freezer, attention: bool = True) -> Iterator[Freezer]:
    """Inside, every norm and (if ``attention``) every attention pattern of ``model`` is recorded or replayed
    by ``freezer`` according to ``freezer.mode`` (in replay the query and key projections, where a family has
    them as separate modules, return zeros: the frozen pattern does not read them). ``attention=False`` exists to show what the exactness check
    catches when attention is left live (tests)."""
    kind = model_kind(model)
    handles = []
    try:
        for path, mod, nk in norm_modules(model):
            handles.append(mod.register_forward_hook(_norm_hook(freezer, path, nk, _eps(mod)), with_kwargs=True))
        with contextlib.ExitStack() as stack:
            if attention:
                stack.enter_context(ATTENTION[kind][1](model, freezer))
                if freezer.mode == "replay":  # the pattern is read back: queries and keys are not computed
                    for mod in _unread_projections(model):
                        stack.enter_context(skipped(mod, _zeros_out(mod)))
            stack.enter_context(_final_logit_softcap(model, freezer))
            yield freezer
    finally:
        for h in handles:
            h.remove()

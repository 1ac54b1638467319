"""Per-family facts: where a model keeps its blocks, attention, MLP and norms, and how wide its heads are.

One row of :data:`FAMILIES` per architecture, keyed by Hugging Face's ``config.model_type`` (plus the zoo
transformer, recognised by its class). Everything that needs to know a model's layout asks here —
:mod:`mechscope.sites` derives its aliases from these rows, circuit discovery slices heads with
:func:`heads` — so a family is described once. A model of no family in the table is refused by name
(:func:`family_of`); nothing is computed on a guess such as a head width taken as hidden/heads or a norm
assumed absent.

Paths inside a block are relative to one block (``<blocks>.L``). The residual wiring of each family, as in
its transformers source (x is the block's input, dropout is the identity in eval mode)::

    llama, mistral, qwen2, qwen3, phi3, gpt2:  h = x + attn(n1(x));         y = h + mlp(n2(h))
    gemma2, gemma3:                            h = x + p1(attn(n1(x)));     y = h + p2(mlp(n2(h)))
    olmo2:                                     h = x + p1(attn(x));         y = h + p2(mlp(h))
    phi:                                       y = x + attn(n1(x)) + mlp(n1(x))          (parallel, one norm)
    gpt_neox, use_parallel_residual:           y = x + attn(n1(x)) + mlp(n2(x))          (parallel)
    gpt_neox, otherwise:                       h = x + attn(n1(x));         y = h + mlp(n2(h))
    zoo:                                       h = x + attn(ln1(x));        y = h + mlp(ln2(h))

n1, n2 are :attr:`Family.attn_norm`, :attr:`Family.mlp_norm`; p1, p2 are :attr:`Family.attn_post_norm`,
:attr:`Family.mlp_post_norm`. In every family attn(·) and mlp(·) (post-normed where p1/p2 exist) are
module outputs, so the residual updates are readable sites.

Head width: families whose attention code reads ``config.head_dim`` when it is set (Llama and its
descendants, Gemma, Qwen, Phi, OLMo 2) use it; GPT-2 and GPT-NeoX always split hidden/heads, as their
code does. :func:`heads` checks the result against the output projection's input width and refuses a
model where they disagree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict, TypeGuard, cast

from torch import Tensor, nn

from mechscope.errors import UsageError

if TYPE_CHECKING:  # for annotations only: the zoo is never imported from here (see is_zoo)
    from mechscope.zoo.transformer import ZooTransformer

NormKind = Literal["layernorm", "rmsnorm", "gemma_rmsnorm", "layernorm_or_none"]


@dataclass(frozen=True)
class Family:
    """The layout of one architecture. Module paths inside a block are relative to the block."""

    name: str
    """The family's name as mechscope reports it: its ``model_type`` (``gemma3`` is multimodal Gemma 3, whose
    language model sits under ``model.language_model``), or ``zoo``."""
    model_types: tuple[str, ...]
    """Hugging Face ``config.model_type`` values of this family (empty for the zoo, matched by class)."""
    blocks: str
    """Path of the block list (an ``nn.ModuleList``) from the causal-LM model; on the bare base model the
    same path less its first component (``model.layers`` → ``layers``)."""
    attn: str
    """The attention module; its output (element 0 of a tuple) is attention's write before any post-norm."""
    out_proj: str | None
    """Attention's output projection (``o_proj``; GPT-2's ``attn.c_proj``, a Conv1D; NeoX's ``attention.dense``;
    Phi's ``self_attn.dense``). Its input is z: every head's output side by side, head-major,
    [..., heads·head_dim]. None for the zoo, whose heads are separate modules (:attr:`per_head`)."""
    mlp: str
    """The MLP module; its input is what the MLP reads, its output its write before any post-norm."""
    attn_norm: str | None
    """The norm attention reads through (None: attention reads the residual stream as is, OLMo 2)."""
    mlp_norm: str | None
    """The norm the MLP reads through (Phi: the same module as :attr:`attn_norm`; NeoX's is named
    ``post_attention_layernorm`` although it comes before the MLP; None: OLMo 2)."""
    attn_post_norm: str | None
    """Norm applied to attention's output before it is added to the residual stream (Gemma 2/3, OLMo 2)."""
    mlp_post_norm: str | None
    """Norm applied to the MLP's output before it is added to the residual stream (Gemma 2/3, OLMo 2)."""
    final_norm: str
    """The norm between the last block and the unembedding, from the causal-LM model."""
    norm_kind: NormKind
    """``layernorm`` (centred, with bias), ``rmsnorm`` (x/rms·w), ``gemma_rmsnorm`` (x/rms·(1 + w), in float32)
    or ``layernorm_or_none`` (the zoo: LayerNorm, or identity when the model was built without norms)."""
    parallel: bool | str
    """Attention and MLP both read the block's input (True: Phi), one after the other (False), or the name
    of the config flag that decides (NeoX's ``use_parallel_residual``)."""
    head_rule: Literal["config", "split", "zoo"]
    """How the head facts are read: ``config`` — heads ``num_attention_heads``, kv-heads
    ``num_key_value_heads`` (default: heads), head_dim ``config.head_dim`` when set else hidden/heads (what
    these families' attention code does); ``split`` — head_dim always hidden/heads and kv-heads = heads
    (GPT-2, NeoX); ``zoo`` — the zoo model's ``shape``."""
    qkv: tuple[str, str, str] | None
    """Separate query, key and value projections (outputs before rotary embeddings and any q/k norm), or None
    where they are one fused module (GPT-2 ``attn.c_attn``, NeoX ``attention.query_key_value``, Phi-3
    ``self_attn.qkv_proj``) or per-head modules (the zoo)."""
    qk_norm: tuple[str, str] | None = None
    """Norms on the queries and keys inside attention (Qwen 3, Gemma 3: per head; OLMo 2: over all heads),
    None where the family has none (Phi's optional ``q_layernorm``/``k_layernorm`` are listed; they exist only
    when ``config.qk_layernorm``)."""
    per_head: str | None = None
    """The zoo's list of per-head modules (each with sites q, k, v, pattern, z, result); None elsewhere."""
    text_config: str | None = None
    """Config attribute holding the language model's config when it is not the top config (Gemma 3 multimodal)."""
    graphs: bool = False
    """Attribution graphs (:mod:`mechscope.graph`) freeze this family's norms and attention."""
    learned_positions: bool = False
    """Positions are a learned table (GPT-2's ``wpe``), so a sequence past ``max_position_embeddings`` indexes
    outside it; False where they are rotary (every other family here), which runs on past the trained length."""

    def modules(self) -> dict[str, str]:
        """Block-relative path → role (``attn``, ``out_proj``, ``mlp``, ``attn_norm``, ``q`` …) of every module this
        row names inside a block."""
        roles = {
            "attn": self.attn,
            "out_proj": self.out_proj,
            "mlp": self.mlp,
            "attn_norm": self.attn_norm,
            "mlp_norm": self.mlp_norm,
            "attn_post_norm": self.attn_post_norm,
            "mlp_post_norm": self.mlp_post_norm,
            "per_head": self.per_head,
            **dict(zip("qkv", self.qkv or ())),
            **dict(zip(("q_norm", "k_norm"), self.qk_norm or ())),
        }
        out: dict[str, str] = {}
        for role, path in roles.items():
            if path:
                out.setdefault(path, role)  # Phi's one norm is attn_norm (and mlp_norm)
        return out


class _Layout(TypedDict):
    """The :class:`Family` fields that rows of related families share (typed, so that ``**`` keeps each field's type)."""

    attn: str
    out_proj: str | None
    mlp: str
    attn_norm: str | None
    mlp_norm: str | None
    attn_post_norm: str | None
    mlp_post_norm: str | None
    final_norm: str
    norm_kind: NormKind
    parallel: bool | str
    head_rule: Literal["config", "split", "zoo"]
    qkv: tuple[str, str, str] | None


_LLAMA_LIKE = _Layout(
    attn="self_attn",
    out_proj="self_attn.o_proj",
    mlp="mlp",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    attn_post_norm=None,
    mlp_post_norm=None,
    final_norm="model.norm",
    norm_kind="rmsnorm",
    parallel=False,
    head_rule="config",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
)
_GEMMA: _Layout = {
    **_LLAMA_LIKE,
    "mlp_norm": "pre_feedforward_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
    "norm_kind": "gemma_rmsnorm",
}
_QK_NORM = ("self_attn.q_norm", "self_attn.k_norm")

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), "model.layers", **_LLAMA_LIKE, graphs=True),
    Family("mistral", ("mistral",), "model.layers", **_LLAMA_LIKE, graphs=True),
    Family("qwen2", ("qwen2",), "model.layers", **_LLAMA_LIKE, graphs=True),
    Family("qwen3", ("qwen3",), "model.layers", **_LLAMA_LIKE, qk_norm=_QK_NORM, graphs=True),
    Family("gemma2", ("gemma2",), "model.layers", **_GEMMA, graphs=True),
    Family("gemma3_text", ("gemma3_text",), "model.layers", **_GEMMA, qk_norm=_QK_NORM, graphs=True),
    Family(
        "gemma3",
        ("gemma3",),
        "model.language_model.layers",
        **_Layout({**_GEMMA, "final_norm": "model.language_model.norm"}),
        qk_norm=_QK_NORM,
        text_config="text_config",
        graphs=True,
    ),
    Family(
        "olmo2",
        ("olmo2",),
        "model.layers",
        **_Layout(
            {
                **_LLAMA_LIKE,
                "attn_norm": None,
                "mlp_norm": None,
                "attn_post_norm": "post_attention_layernorm",
                "mlp_post_norm": "post_feedforward_layernorm",
            }
        ),
        qk_norm=_QK_NORM,
        graphs=True,
    ),
    Family("phi3", ("phi3",), "model.layers", **_Layout({**_LLAMA_LIKE, "qkv": None}), graphs=True),
    Family(
        "phi",
        ("phi",),
        "model.layers",
        **_Layout(
            {
                **_LLAMA_LIKE,
                "out_proj": "self_attn.dense",
                "mlp_norm": "input_layernorm",
                "final_norm": "model.final_layernorm",
                "norm_kind": "layernorm",
                "parallel": True,
            }
        ),
        qk_norm=("self_attn.q_layernorm", "self_attn.k_layernorm"),
        graphs=True,
    ),
    Family(
        "gpt2",
        ("gpt2",),
        "transformer.h",
        attn="attn",
        out_proj="attn.c_proj",
        mlp="mlp",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        attn_post_norm=None,
        mlp_post_norm=None,
        final_norm="transformer.ln_f",
        norm_kind="layernorm",
        parallel=False,
        head_rule="split",
        qkv=None,
        graphs=True,
        learned_positions=True,
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        attn="attention",
        out_proj="attention.dense",
        mlp="mlp",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        attn_post_norm=None,
        mlp_post_norm=None,
        final_norm="gpt_neox.final_layer_norm",
        norm_kind="layernorm",
        parallel="use_parallel_residual",
        head_rule="split",
        qkv=None,
        graphs=True,
    ),
    Family(
        "zoo",
        (),
        "blocks",
        attn="attn",
        out_proj=None,
        mlp="mlp",
        attn_norm="ln1",
        mlp_norm="ln2",
        attn_post_norm=None,
        mlp_post_norm=None,
        final_norm="ln_final",
        norm_kind="layernorm_or_none",
        parallel=False,
        head_rule="zoo",
        qkv=None,
        per_head="attn.heads",
        graphs=True,
    ),
)
"""Every family mechscope supports; :func:`family_of` picks a model's row."""

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}
_ZOO = next(f for f in FAMILIES if f.name == "zoo")


def supported() -> str:
    """The supported ``model_type`` values, comma-separated (for messages)."""
    return ", ".join(sorted(_BY_TYPE))


def is_zoo(model: nn.Module) -> TypeGuard[ZooTransformer]:
    """Whether ``model`` is a zoo transformer (:mod:`mechscope.zoo.transformer`), asked without importing the zoo."""
    zoo = sys.modules.get("mechscope.zoo.transformer")  # no zoo model exists before its module is imported
    return zoo is not None and isinstance(model, zoo.ZooTransformer)


def model_type(model: nn.Module) -> str | None:
    """``model.config.model_type``, or None when the model has no Hugging Face config."""
    return getattr(getattr(model, "config", None), "model_type", None)


def is_transformer_lens(model: nn.Module) -> bool:
    """Whether ``model`` is a TransformerLens model (``HookedTransformer`` or any class of that package), told by
    its classes' modules so that transformer_lens is never imported to ask. Such a model has ``blocks`` like the
    zoo transformer but none of its layout, so nothing may take it for the zoo."""
    return any(c.__module__.split(".")[0] == "transformer_lens" for c in type(model).__mro__)


def transformer_lens_refusal(model: nn.Module, what: str) -> UsageError:
    """The one refusal of a TransformerLens ``model`` by ``what`` (a method or a fact), naming the ways on."""
    return UsageError(
        f"TransformerLens models ({type(model).__name__}) are not supported by {what} yet; load the Hugging Face "
        "model it was converted from (transformers' AutoModelForCausalLM, or its folder as `model`), "
        "or read the TransformerLens model's own hook points by module path (e.g. blocks.0.hook_resid_post)"
    )


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` row of ``model``; a model of no known family is refused (:class:`UsageError`), a
    TransformerLens model by name (:func:`is_transformer_lens`)."""
    if is_zoo(model):
        return _ZOO
    if is_transformer_lens(model):
        raise transformer_lens_refusal(model, "mechscope's per-family layout table (aliases, heads, circuits, graphs)")
    mt = model_type(model)
    if mt is None:
        raise UsageError(
            f"{type(model).__name__} has no Hugging Face config.model_type and is not a zoo transformer, "
            f"so mechscope knows none of its layout; use module paths, or a model of a supported family ({supported()})"
        )
    if mt not in _BY_TYPE:
        raise UsageError(
            f"model type {mt!r} ({type(model).__name__}) is not in mechscope's family table; "
            f"supported: {supported()} (use module paths instead of aliases and head nodes)"
        )
    return _BY_TYPE[mt]


def block_path(model: nn.Module, family: Family | None = None) -> str:
    """Path of ``model``'s block list: :attr:`Family.blocks`, or on the bare base model that path less its
    first component. A model of the family without either is refused."""
    f = family or family_of(model)
    names = dict(model.named_modules())
    for path in (f.blocks, f.blocks.split(".", 1)[-1]):
        if isinstance(names.get(path), nn.ModuleList):
            return path
    raise UsageError(
        f"{type(model).__name__} is a {f.name} model without its block list at {f.blocks!r}; "
        "load the model with its transformers class (e.g. AutoModelForCausalLM)"
    )


def n_blocks(model: nn.Module) -> int:
    """Number of blocks in the block list."""
    return len(cast(nn.ModuleList, model.get_submodule(block_path(model))))


class Heads(NamedTuple):
    """A model's attention heads: counts and the width of each."""

    n_heads: int
    """Query heads per layer."""
    n_kv_heads: int
    """Key/value heads per layer (fewer than n_heads under grouped-query attention)."""
    head_dim: int
    """Width e of each head's query, key, value and z."""

    @property
    def z_width(self) -> int:
        """Width of z, every head side by side: n_heads · head_dim."""
        return self.n_heads * self.head_dim

    def span(self, head: int) -> tuple[int, int]:
        """[start, stop) of ``head``'s slice of z's last dimension."""
        return head * self.head_dim, (head + 1) * self.head_dim

    def split(self, z: Tensor) -> Tensor:
        """z [..., n_heads·head_dim] viewed as [..., n_heads, head_dim]."""
        return z.unflatten(-1, (self.n_heads, self.head_dim))


def lm_config(model: nn.Module, family: Family | None = None):  # -> transformers PretrainedConfig
    """The language model's Hugging Face config (``config.text_config`` on multimodal Gemma 3)."""
    f = family or family_of(model)
    cfg: Any = model.config  # a transformers PretrainedConfig
    return getattr(cfg, f.text_config) if f.text_config else cfg


def _in_width(mod: nn.Module) -> int | None:
    """Input width of a Linear or transformers' Conv1D (weight [in, out]); None for anything else."""
    if isinstance(mod, nn.Linear):
        return mod.in_features
    if type(mod).__name__ == "Conv1D":
        return int(cast(Tensor, mod.weight).shape[0])
    return None


def heads(model: nn.Module) -> Heads:
    """Head counts and width of ``model`` by its family's :attr:`Family.head_rule`, checked against the width
    of the first block's output projection (a model where they disagree is refused)."""
    f = family_of(model)
    if f.head_rule == "zoo":
        s = cast("ZooTransformer", model).shape
        return Heads(s.n_heads, s.n_heads, s.d_head)
    cfg = lm_config(model, f)
    n = int(cfg.num_attention_heads)
    if f.head_rule == "split":
        h = Heads(n, n, cfg.hidden_size // n)
    else:
        e = getattr(cfg, "head_dim", None)
        h = Heads(n, int(getattr(cfg, "num_key_value_heads", None) or n), int(e) if e else cfg.hidden_size // n)
    proj = model.get_submodule(f"{block_path(model, f)}.0.{f.out_proj}")
    width = _in_width(proj)
    if width != h.z_width:
        raise UsageError(
            f"{f.name} model: {f.out_proj} reads {width} features but the config gives {h.n_heads} heads × "
            f"{h.head_dim} = {h.z_width}; mechscope will not slice heads on a guess (check the config's head_dim)"
        )
    return h


def is_parallel(model: nn.Module) -> bool:
    """Whether attention and the MLP of each block both read the block's input (see :attr:`Family.parallel`)."""
    f = family_of(model)
    if isinstance(f.parallel, bool):
        return f.parallel
    return bool(getattr(lm_config(model, f), f.parallel))


def position_limit(model: nn.Module) -> int | None:
    """The most positions ``model`` can take: its config's ``max_position_embeddings`` (GPT-2's ``n_positions``)
    when its family's positions are a learned table (:attr:`Family.learned_positions`: GPT-2), past which the
    forward indexes outside that table; None for rotary families (they run on past the trained length; nothing
    is refused) and for models of no known family."""
    try:
        family = family_of(model)
    except UsageError:
        return None
    if not family.learned_positions:
        return None
    limit = getattr(lm_config(model, family), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_positions(model: nn.Module, length: int, what: str) -> None:
    """Refuse, naming ``what``, a sequence of ``length`` tokens longer than :func:`position_limit` allows."""
    limit = position_limit(model)
    if limit is not None and length > limit:
        raise UsageError(
            f"{what} needs {length} positions, but this {model_type(model)} model's positions are a learned table "
            f"of {limit} (config.max_position_embeddings); shorten it"
        )

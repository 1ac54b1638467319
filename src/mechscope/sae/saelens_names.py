"""What SAELens needs to attach an exported SAE to a model: the TransformerLens hook and the model name.

mechscope names a site by alias (``resid_post.6``, :data:`mechscope.sites.ALIASES`) or module path
(``model.layers.6:output``); SAELens names the same place by TransformerLens hook. For block i:

=============  ============================================================  ===============================
alias           what it reads (every family, :mod:`mechscope.models.families`)  TransformerLens hook
=============  ============================================================  ===============================
resid_pre.i     the block's input                                             ``blocks.i.hook_resid_pre``
resid_post.i    the block's output                                            ``blocks.i.hook_resid_post``
attn_out.i      attention's write, after the post-attention norm if any       ``blocks.i.hook_attn_out``
mlp_out.i       the MLP's write, after the post-feedforward norm if any       ``blocks.i.hook_mlp_out``
mlp_in.i        the MLP's input (the normalised stream)                       ``blocks.i.ln2.hook_normalized``
=============  ============================================================  ===============================

A module path is matched against every family's alias sites (:func:`mechscope.sites.alias_templates`). The
same path can mean different places in different families (Llama's ``self_attn`` output is ``attn_out``,
Gemma 2's is not: a post-norm follows it), so without ``model_type`` a path that some family reads differently
gets no hook name. A site outside the table has no hook name we can vouch for: :func:`hook_name` returns
None and the export says so instead of guessing.
"""

from __future__ import annotations

import re

from mechscope.models.families import FAMILIES, Family
from mechscope.sites import LAYER_LISTS, Site, alias_templates, parse_site

TL_HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{i}.hook_resid_pre",
    "resid_post": "blocks.{i}.hook_resid_post",
    "attn_out": "blocks.{i}.hook_attn_out",
    "mlp_out": "blocks.{i}.hook_mlp_out",
    "mlp_in": "blocks.{i}.ln2.hook_normalized",
}
"""mechscope alias kind → TransformerLens hook template of block ``i``."""

MODEL_NAMES: dict[str, str] = {
    "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
"""mechscope model id (a store's ``model_id``) → the name SAELens / TransformerLens load it by."""


def _key(site: Site) -> tuple[str, str, int]:
    """``x``, ``x:output`` and ``x:output.0`` are one place (index None reads element 0)."""
    return site.module, site.io, site.index or 0


def _relative(module: str, blocks: str) -> tuple[int, str] | None:
    """(block index, path inside the block) of ``module`` under the block list ``blocks``, else None."""
    m = re.fullmatch(re.escape(blocks) + r"\.(\d+)(?:\.(.+))?", module)
    return (int(m.group(1)), m.group(2) or "") if m else None


def _kinds(family: Family, blocks: str, site: Site) -> tuple[int, set[str], bool] | None:
    """On ``family`` with block list ``blocks``: (block, the TL-hooked alias kinds ``site`` is, whether the
    family names the module at all), or None when ``site`` is not under that block list."""
    where = _relative(site.module, blocks)
    if where is None:
        return None
    i, rel = where
    kinds = {
        kind
        for kind, t in alias_templates(family).items()
        if kind in TL_HOOKS and _key(parse_site(t.format(L=f"{blocks}.{i}"))) == _key(site)
    }
    return i, kinds, rel == "" or rel in family.modules()


def hook_name(site: str | None, model_type: str | None = None) -> str | None:
    """TransformerLens hook of a mechscope site (alias or module path), or None when not in the table or,
    without ``model_type`` (a Hugging Face ``config.model_type``), when families disagree on what the path reads."""
    if not site:
        return None
    alias = re.fullmatch(r"([a-z_]+)\.(\d+)", site.strip())
    if alias and alias.group(1) in TL_HOOKS:
        return TL_HOOKS[alias.group(1)].format(i=int(alias.group(2)))
    s = parse_site(site)
    families = [f for f in FAMILIES if model_type is None or model_type in f.model_types]
    found: set[tuple[str, int]] = set()
    disputed = False
    for f in families:
        for blocks in dict.fromkeys((f.blocks, f.blocks.split(".", 1)[-1])):
            hit = _kinds(f, blocks, s)
            if hit is not None:
                i, kinds, named = hit
                found |= {(k, i) for k in kinds}
                disputed |= named and not kinds
    if model_type is None and not found:  # a block list of no known family: only the block's input and output
        for blocks in LAYER_LISTS:
            where = _relative(s.module, blocks)
            if where and where[1] == "" and (s.index or 0) == 0:
                found.add(("resid_pre" if s.io == "input" else "resid_post", where[0]))
    if len(found) != 1 or disputed:
        return None
    kind, i = found.pop()
    return TL_HOOKS[kind].format(i=i)


def model_name(model_id: str | None) -> str | None:
    """The name SAELens loads ``model_id`` by (the id itself when we know no other)."""
    return MODEL_NAMES.get(model_id, model_id) if model_id else None

"""What SAELens needs to attach an exported SAE to a model: the TransformerLens hook and the model name.

mechscope names a site by module path (``model.layers.6:output``) or alias (``resid_post.6``,
:data:`mechscope.sites.ALIASES`); SAELens names the same place by TransformerLens hook. For block i:

====================================  ===============================
mechscope (alias / module path)        TransformerLens hook
====================================  ===============================
resid_pre.i   ``<blocks>.i:input``      ``blocks.i.hook_resid_pre``
resid_post.i  ``<blocks>.i:output``     ``blocks.i.hook_resid_post``
attn_out.i    ``<blocks>.i.self_attn:output.0``  ``blocks.i.hook_attn_out``
mlp_out.i     ``<blocks>.i.mlp:output`` ``blocks.i.hook_mlp_out``
mlp_in.i      ``<blocks>.i.mlp:input``  ``blocks.i.ln2.hook_normalized`` (the MLP reads the normalised stream)
====================================  ===============================

``<blocks>`` is any block list :mod:`mechscope.sites` recognises. A site outside this table has no
hook name we can vouch for: :func:`hook_name` returns None and the export says so instead of guessing.
"""

from __future__ import annotations

import re

from mechscope.sites import ALIASES, LAYER_LISTS

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


def _canonical(site: str) -> str:
    """``model.layers.6`` and ``model.layers.6:output.0`` both mean the block's output."""
    site = site.strip()
    if ":" not in site:
        site += ":output"
    return site[: -len(".0")] if site.endswith(":output.0") and ".self_attn:" not in site else site


def hook_name(site: str | None) -> str | None:
    """TransformerLens hook of a mechscope site (alias or module path), or None when not in the table."""
    if not site:
        return None
    alias = re.fullmatch(r"([a-z_]+)\.(\d+)", site.strip())
    if alias and alias.group(1) in TL_HOOKS:
        return TL_HOOKS[alias.group(1)].format(i=int(alias.group(2)))
    site = _canonical(site)
    for kind, template in ALIASES.items():
        for blocks in LAYER_LISTS:
            pattern = re.escape(template).replace(re.escape("{L}"), re.escape(blocks) + r"\.(\d+)")
            m = re.fullmatch(pattern, site)
            if m and kind in TL_HOOKS:
                return TL_HOOKS[kind].format(i=int(m.group(1)))
    return None


def model_name(model_id: str | None) -> str | None:
    """The name SAELens loads ``model_id`` by (the id itself when we know no other)."""
    return MODEL_NAMES.get(model_id, model_id) if model_id else None

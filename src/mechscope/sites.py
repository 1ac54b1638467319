"""Sites: named places in any ``nn.Module`` where activations are read or written.

A site string is ``<module path>[:<io>[.<index>]]``:

- ``model.layers.6``                 output of that module (the default io)
- ``model.layers.6.mlp:input``       its first positional input (or ``hidden_states=`` kwarg)
- ``model.layers.6.self_attn:output.0``  element 0 of a tuple output
- ``model.layers.*``                 a wildcard: one site per matching module
- ``resid_post.6``                   an alias, derived per model family (see :data:`ALIASES`)

For tuple outputs or inputs with no index given, element 0 is used.

Operations are context managers that always remove their hooks, even when the body raises:
:func:`capture` reads, :func:`patch` writes, :func:`stop_after` aborts the forward pass once the
last needed site has run (the reason harvesting at layer 6 of a 30-layer model is cheap).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from mechscope.errors import UsageError
from mechscope.models.families import Family, block_path, family_of, is_transformer_lens

__all__ = [
    "Site",
    "SiteError",
    "StopForward",
    "parse_site",
    "resolve_sites",
    "capture",
    "patch",
    "stop_after",
    "run_to_sites",
    "layer_list_path",
    "alias_templates",
    "ALIASES",
]


class SiteError(UsageError):
    """A site that does not exist, or an activation written with the wrong shape: the site or the patch
    the user named is wrong, so the command line ends with exit 2 (usage)."""


class StopForward(Exception):
    """Raised inside a forward pass by :func:`stop_after`; swallowed by its context manager."""


@dataclass(frozen=True)
class Site:
    """One place in a model: a module path, whether its input or output, and a tuple index."""

    module: str
    """Dotted module path as in ``model.named_modules()`` ("" is the root)."""
    io: Literal["output", "input"] = "output"
    """Read or write the module's output (default) or its first input."""
    index: int | None = None
    """Element of a tuple output/input; None means the tensor itself, or element 0 of a tuple."""

    def __str__(self) -> str:
        if self.io == "output" and self.index is None:
            return self.module
        return f"{self.module}:{self.io}" + ("" if self.index is None else f".{self.index}")


_SITE_RE = re.compile(r"^(?P<module>[^:]*)(?::(?P<io>input|output)(?:\.(?P<index>\d+))?)?$")


def parse_site(spec: str | Site) -> Site:
    """Parse ``path[:input|:output[.i]]`` into a :class:`Site` (no check against a model)."""
    if isinstance(spec, Site):
        return spec
    m = _SITE_RE.match(spec.strip())
    if not m:
        raise SiteError(
            f"cannot parse site {spec!r}: expected 'module.path', 'module.path:input' or 'module.path:output.0'"
        )
    idx = m.group("index")
    return Site(m.group("module"), m.group("io") or "output", int(idx) if idx is not None else None)  # type: ignore[arg-type]


# Block-list paths tried, in order, on a model of no family in :mod:`mechscope.models.families`; such a model
# gets only the aliases that need nothing but its blocks (resid_pre, resid_post).
LAYER_LISTS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "layers",
    "blocks",
    "h",
)

ALIASES: dict[str, str] = {
    "resid_pre": "the residual stream entering block L (the block's input)",
    "resid_post": "the residual stream leaving block L (the block's output)",
    "attn_out": "attention's write to the residual stream (after the family's post-attention norm, if any)",
    "mlp_in": "what the MLP reads (after its pre-norm, if any)",
    "mlp_out": "the MLP's write to the residual stream (after the family's post-feedforward norm, if any)",
    "z": "every head's output before the output projection, head-major [..., heads·head_dim] (zoo: one site per head)",
    "q": "the query projection's output, before rotary embeddings and any q-norm (zoo: one site per head)",
    "k": "the key projection's output, before rotary embeddings and any k-norm (zoo: one site per head)",
    "v": "the value projection's output (zoo: one site per head)",
    "pattern": "attention probabilities, one site per head (zoo only)",
    "result": "one head's write to the residual stream, one site per head (zoo only)",
}
"""Alias kind → what it reads; ``kind.L`` (or ``kind.*``) names it in block L. Per family the sites are
derived from :data:`mechscope.models.families.FAMILIES` by :func:`alias_templates`, so that on every family
``resid_post.L − resid_pre.L == attn_out.L + mlp_out.L``."""

_GENERIC = {"resid_pre": "{L}:input", "resid_post": "{L}:output"}

# A TransformerLens model (outside the family table: no heads, circuits or graphs) has hook points that are the
# residual-stream aliases. Its mlp_in is the MLP's input, after ln2 (TransformerLens's own hook_mlp_in is before ln2).
# Its per-head hook points keep TransformerLens's shapes (hook_z [..., heads, head_dim], not head-major): refused.
_TRANSFORMER_LENS = {
    "resid_pre": "{L}.hook_resid_pre",
    "resid_post": "{L}.hook_resid_post",
    "attn_out": "{L}.hook_attn_out",
    "mlp_in": "{L}.mlp:input",
    "mlp_out": "{L}.hook_mlp_out",
}
_TRANSFORMER_LENS_NO_ALIAS = (
    "a TransformerLens model's per-head hook points (attn.hook_z, hook_q, hook_k, hook_v, hook_pattern) "
    "keep TransformerLens's shapes ([..., heads, head_dim] for z), not this alias's; read them by "
    "module path (e.g. blocks.0.attn.hook_z)"
)


def alias_templates(family: Family) -> dict[str, str]:
    """Alias kind → site template on ``family`` (``{L}`` stands for block L's path). A kind the family does not
    have is absent (:func:`_no_alias` says why)."""
    f = family
    out = dict(_GENERIC)
    out["attn_out"] = "{L}." + (f.attn_post_norm or f"{f.attn}:output.0")
    out["mlp_in"] = f"{{L}}.{f.mlp}:input"
    out["mlp_out"] = "{L}." + (f.mlp_post_norm or f"{f.mlp}:output")
    if f.per_head:
        for kind in ("z", "q", "k", "v", "pattern", "result"):
            out[kind] = f"{{L}}.{f.per_head}.*.{kind}"
    if f.out_proj:
        out["z"] = f"{{L}}.{f.out_proj}:input"
    if f.qkv:
        out.update({kind: f"{{L}}.{path}" for kind, path in zip("qkv", f.qkv)})
    return out


def _no_alias(family: Family, kind: str) -> str:
    if kind in ("q", "k", "v"):
        return f"{family.name} models compute q, k and v in one fused projection, so there is no {kind} site of its own; use a module path"
    return (
        f"{kind} is not a module output in {family.name} attention (transformers computes it inside one function); "
        "read z.L (every head's output side by side) or use a zoo model"
    )


def layer_list_path(model: nn.Module) -> str | None:
    """Path of the model's list of transformer blocks (its family's, else the first of :data:`LAYER_LISTS` it
    has), or None when it has none we recognise."""
    try:
        return block_path(model)
    except UsageError:
        pass
    names = dict(model.named_modules())
    for path in LAYER_LISTS:
        if isinstance(names.get(path), nn.ModuleList):
            return path
    return None


def _expand_alias(model: nn.Module, spec: str) -> list[str] | None:
    m = re.match(r"^(?P<kind>[a-z_]+)\.(?P<layer>\d+|\*)$", spec)
    if not m or m.group("kind") not in ALIASES:
        return None
    names = dict(model.named_modules())
    if spec in names:  # a real module that happens to look like an alias (a ModuleList named v, say) wins
        return None
    kind = m.group("kind")
    try:
        family: Family | None = family_of(model)
        base: str | None = block_path(model, family)
        templates = alias_templates(family)  # type: ignore[arg-type]
    except UsageError as err:
        family, base, templates, why = None, layer_list_path(model), _GENERIC, str(err)
        if is_transformer_lens(model):
            templates, why = _TRANSFORMER_LENS, _TRANSFORMER_LENS_NO_ALIAS
    if base is None:
        raise SiteError(
            f"alias {spec!r}: a {type(model).__name__} has no block list mechscope knows ({', '.join(LAYER_LISTS)}) "
            f"and is of no known family; use a module path instead"
        )
    if kind not in templates:
        raise SiteError(f"alias {spec!r}: " + (_no_alias(family, kind) if family else why))
    n = len(cast(nn.ModuleList, names[base]))
    layers = range(n) if m.group("layer") == "*" else [int(m.group("layer"))]
    out = []
    for i in layers:
        if not 0 <= i < n:
            raise SiteError(f"alias {spec!r}: layer {i} out of range, the model has {n} blocks (0..{n - 1})")
        site = templates[kind].format(L=f"{base}.{i}")
        module = parse_site(site).module
        if family is not None and "*" not in module and module not in names:
            raise SiteError(
                f"alias {spec!r} reads {module!r}, which this {family.name} model does not have "
                f"(block {i} has no {module.rsplit('.', 1)[-1]}); use a module path"
            )
        out.append(site)
    return out


def _alias_suggestions(spec: str) -> list[str]:
    """Aliases close to a mistyped one: ``resid_pots.6`` → ``resid_post.6`` (same layer part)."""
    m = re.match(r"^(?P<kind>[A-Za-z_]+)\.(?P<layer>\d+|\*)$", spec)
    if not m:
        return []
    kinds = difflib.get_close_matches(m.group("kind").lower(), list(ALIASES), n=2, cutoff=0.6)
    return [f"{k}.{m.group('layer')}" for k in kinds]


def resolve_sites(model: nn.Module, specs: str | Site | Sequence[str | Site]) -> list[Site]:
    """Expand aliases and wildcards and check every site exists; raises :class:`SiteError` with
    the closest valid names before any forward pass. Order follows ``specs``, then module order."""
    if isinstance(specs, (str, Site)):
        specs = [specs]
    names = [n for n, _ in model.named_modules()]
    known = set(names)
    out: list[Site] = []
    for spec in specs:
        raw = [str(spec)] if isinstance(spec, Site) else (_expand_alias(model, spec.strip()) or [spec])
        for s in raw:
            site = parse_site(s)
            if any(c in site.module for c in "*?["):
                hits = [n for n in names if fnmatch.fnmatchcase(n, site.module)]
                if not hits:
                    raise SiteError(f"wildcard {s!r} matches no module; e.g. {', '.join(names[1:6])}")
                out += [Site(h, site.io, site.index) for h in hits]
            elif site.module not in known:
                close = _alias_suggestions(site.module) if layer_list_path(model) else []
                close += difflib.get_close_matches(site.module, names, n=5 - len(close), cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                aliases = ", ".join(f"{a}.N" for a in ALIASES) if layer_list_path(model) else ""
                raise SiteError(
                    f"unknown site {s!r}: no module {site.module!r} in {type(model).__name__}{hint}"
                    + (f" (aliases: {aliases})" if aliases else "")
                )
            else:
                out.append(site)
    return out


# --- reading and writing one activation --------------------------------------------------------


def _get(value: Any, index: int | None) -> Tensor:
    if isinstance(value, Tensor):
        if index not in (None, 0):
            raise SiteError(f"index {index} given but the value is a single tensor")
        return value
    if isinstance(value, (tuple, list)):
        return value[index or 0]
    if hasattr(value, "to_tuple"):  # transformers ModelOutput
        return value.to_tuple()[index or 0]
    raise SiteError(f"cannot read a tensor from a {type(value).__name__}")


def _set(value: Any, index: int | None, new: Tensor) -> Any:
    if isinstance(value, Tensor):
        return new
    if isinstance(value, (tuple, list)):
        items = list(value)
        items[index or 0] = new
        return type(value)(items) if isinstance(value, tuple) else items
    raise SiteError(f"cannot write a tensor into a {type(value).__name__}")


def _input_slot(args: tuple, kwargs: dict) -> tuple[str, Any]:
    """Where a module's first input lives: positional 0, else the ``hidden_states`` kwarg, else the first tensor kwarg."""
    if args:
        return "args", args[0]
    if "hidden_states" in kwargs:
        return "hidden_states", kwargs["hidden_states"]
    for k, v in kwargs.items():
        if isinstance(v, Tensor):
            return k, v
    raise SiteError("module was called with no tensor input")


def _register(model: nn.Module, site: Site, fn: Callable[[Tensor], Tensor | None]) -> torch.utils.hooks.RemovableHandle:
    """Hook ``fn`` on a site: it sees the activation; a non-None return replaces it."""
    module = model.get_submodule(site.module)
    if site.io == "output":

        def out_hook(_mod: nn.Module, _args: tuple, output: Any) -> Any:
            new = fn(_get(output, site.index))
            return None if new is None else _set(output, site.index, new)

        return module.register_forward_hook(out_hook)

    def in_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        slot, value = _input_slot(args, kwargs)
        new = fn(_get(value, site.index))
        if new is None:
            return None
        if slot == "args":
            return (_set(args[0], site.index, new), *args[1:]), kwargs
        return args, {**kwargs, slot: _set(value, site.index, new)}

    return module.register_forward_pre_hook(in_hook, with_kwargs=True)


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(
    model: nn.Module, sites: str | Site | Sequence[str | Site], detach: bool = True
) -> Iterator[dict[str, Tensor]]:
    """Record the activation at each site during forwards run in the block.

    Yields a dict ``str(site) → Tensor`` (the last forward's value; shapes as the module emits them,
    e.g. ``[N, T, d]`` for a residual stream).
    """
    resolved = resolve_sites(model, sites)
    acts: dict[str, Tensor] = {}
    handles = []
    try:
        for s in resolved:

            def rec(t: Tensor, key: str = str(s)) -> None:
                acts[key] = t.detach() if detach else t

            handles.append(_register(model, s, rec))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    with _hooks(handles):
        yield acts


PatchFn = Callable[[Tensor], Tensor]
PatchMode = Literal["replace", "add", "zero", "mean", "resample"] | PatchFn


def _patch_fn(site: Site, mode: PatchMode, value: Tensor | None, generator: torch.Generator | None) -> PatchFn:
    def check(act: Tensor, new: Tensor, what: str) -> Tensor:
        try:
            shape = torch.broadcast_shapes(new.shape, act.shape)
        except RuntimeError:
            shape = None
        if shape != act.shape:
            raise SiteError(
                f"patch at site {site}: {what} has shape {tuple(new.shape)} but the activation has shape {tuple(act.shape)}"
            )
        return new.to(act.dtype).expand_as(act)

    if callable(mode):
        return lambda act: check(act, mode(act), "the patch function's result")
    if mode == "zero":
        return torch.zeros_like
    if value is None:
        raise SiteError(f"patch mode {mode!r} at site {site} needs a value tensor")
    if mode in ("replace", "mean"):
        return lambda act: check(act, value, f"the {mode} value")
    if mode == "add":
        return lambda act: act + check(act, value, "the added value")

    if mode == "resample":

        def resample(act: Tensor) -> Tensor:
            # Rows of another batch: same shape is used as is, else rows are drawn with replacement.
            if value.shape == act.shape:
                return value.to(act.dtype)
            if value.shape[1:] != act.shape[1:]:
                check(act, value, "the resample source")
            rows = torch.randint(0, value.shape[0], (act.shape[0],), generator=generator)
            return value[rows].to(act.dtype)

        return resample
    raise SiteError(f"unknown patch mode {mode!r}; use replace, add, zero, mean, resample or a function")


@contextlib.contextmanager
def patch(
    model: nn.Module,
    site: str | Site,
    mode: PatchMode,
    value: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[None]:
    """Replace the activation at one site during forwards in the block.

    ``mode``: ``"replace"`` (with ``value``), ``"add"`` (act + value), ``"zero"``, ``"mean"`` (value is a mean
    activation, broadcast), ``"resample"`` (value: activations from another batch), or any function
    ``act → new act`` of the same shape. Shape mismatches raise :class:`SiteError` naming the site and shapes.
    """
    resolved = resolve_sites(model, site)
    if len(resolved) != 1:
        raise SiteError(f"patch needs exactly one site, {site!r} expands to {len(resolved)}")
    s = resolved[0]
    handle = _register(model, s, _patch_fn(s, mode, value, generator))
    with _hooks([handle]):
        yield


@contextlib.contextmanager
def stop_after(model: nn.Module, sites: str | Site | Sequence[str | Site]) -> Iterator[None]:
    """Abort a forward pass once every site has run; the :class:`StopForward` it raises is swallowed here.

    The abort happens at the start of the next module call after the last site, so every other hook on
    the site (capture, patch) has already run, whatever the order the context managers were entered in.
    Use one forward pass per block: the exception ends the block's body.
    """
    resolved = resolve_sites(model, sites)
    needed = {(s.module, s.io) for s in resolved}
    seen: set[tuple[str, str]] = set()
    members = {id(m) for m in model.modules()}
    handles = []

    def arm(key: tuple[str, str]) -> Callable[[Tensor], None]:
        def mark(_t: Tensor) -> None:
            seen.add(key)

        return mark

    def reset(_mod: nn.Module, _args: tuple) -> None:
        seen.clear()

    def gate(mod: nn.Module, _args: tuple) -> None:
        if mod is not model and seen >= needed and id(mod) in members:
            raise StopForward

    try:
        handles.append(model.register_forward_pre_hook(reset))
        for s in resolved:
            handles.append(_register(model, Site(s.module, s.io, s.index), arm((s.module, s.io))))
        handles.append(nn.modules.module.register_module_forward_pre_hook(gate))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    with _hooks(handles):
        try:
            yield
        except StopForward:
            pass


@torch.no_grad()
def run_to_sites(
    model: nn.Module, sites: str | Site | Sequence[str | Site], *args: Any, **kwargs: Any
) -> dict[str, Tensor]:
    """One forward pass that captures every site and stops after the last one. Returns ``str(site) → Tensor``."""
    with capture(model, sites) as acts, stop_after(model, sites):
        model(*args, **kwargs)
    return acts

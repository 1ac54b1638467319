"""Latent-level nodes (sparse feature circuits, Marks et al. 2024): an SAE spliced in at a site, so that each
latent's code and the SAE's error term are nodes that exact patching, AtP and AtP* score like any other.

Shapes: B examples, T positions, d the site's width, n latents.

At the site, the activation x [B, T, d] is rewritten as

    c = encode(x) [B, T, n],   e = x − decode(c) [B, T, d],   x' = decode(c) + e  (= x exactly)

with ``c`` readable and patchable at the site ``<name>.codes`` and ``e`` at ``<name>.error``. The model's output
is unchanged; patching latent i is patching the slice [i, i + 1) of the codes (:func:`latent_nodes`). The
gradient reaches x through both c and e, so upstream nodes see the model's own gradient, as in Marks et al.
Any object with ``encode(x [N, d]) -> [N, n]`` and ``decode(c [N, n]) -> [N, d]`` works (a mechscope SAE does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.circuits.patching import Component
from mechscope.errors import UsageError
from mechscope.sites import capture, patch


class Splice(nn.Module):
    """x → decode(encode(x)) + error, with ``codes`` and ``error`` sites (the value is x)."""

    def __init__(self, sae: Any) -> None:
        super().__init__()
        self.sae = sae
        self.codes, self.error = nn.Identity(), nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        c = self.sae.encode(flat)
        e = self.error((flat - self.sae.decode(c)).reshape(x.shape))
        c = self.codes(c.reshape(*x.shape[:-1], c.shape[-1]))
        return self.sae.decode(c.reshape(-1, c.shape[-1])).reshape(x.shape) + e


@contextlib.contextmanager
def spliced(model: nn.Module, site: str, sae: Any, name: str = "sae") -> Iterator[Splice]:
    """Inside, ``site`` is routed through :class:`Splice` registered on the model as ``name`` (sites
    ``<name>.codes``, ``<name>.error``); removed on exit."""
    if hasattr(model, name):
        raise UsageError(f"the model already has a module {name!r}; splice the SAE under another name")
    splice = Splice(sae)
    model.add_module(name, splice)
    try:
        with patch(model, site, splice):
            yield splice
    finally:
        delattr(model, name)


def latent_nodes(name: str, latents: range | list[int], error: bool = True) -> list[Component]:
    """One node per latent (a slice of ``<name>.codes``) and, with ``error``, the error term."""
    return [Component(f"{name}.codes", i, i + 1) for i in latents] + ([Component(f"{name}.error")] if error else [])


# ---- several sites at once (the ``--sae SITE=DIR`` circuit) -------------------------------------------------


def parse_sae_specs(sae: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``sae``: ``["SITE=DIR", …]`` → [(site, dir)], each site once."""
    out: list[tuple[str, str]] = []
    for s in sae:
        site, sep, path = s.partition("=")
        if not sep or not site or not path:
            raise UsageError(f"`sae` {s!r}: expected SITE=DIR, e.g. resid_post.6=runs/topk")
        if site in (x for x, _ in out):
            raise UsageError(f"`sae` names the site {site!r} twice; splice one SAE per site")
        out.append((site, path))
    return out


def load_site_saes(specs: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """[(site, dir)] → [(site, SAE)] loaded strictly; an SAE whose recorded site differs from SITE is refused."""
    from mechscope.preflight import sae_metadata
    from mechscope.sae.io import load_sae

    out = []
    for site, path in specs:
        sae = load_sae(path)
        sae.eval()
        for p in sae.parameters():
            p.requires_grad_(False)
        recorded = sae_metadata(path).get("site")  # none in a SAELens folder: its hook name is not a mechscope site
        if recorded and recorded != site:
            raise UsageError(
                f"the SAE in {path} was trained at {recorded!r}, not {site!r}; pair it with its site: `sae` {recorded}={path}"
            )
        out.append((site, sae))
    return out


@contextlib.contextmanager
def spliced_many(model: nn.Module, saes: list[tuple[str, Any]]) -> Iterator[list[str]]:
    """Nested :func:`spliced` contexts, one per (site, SAE), named ``sae0``, ``sae1`` …; yields the names."""
    with contextlib.ExitStack() as stack:
        names = []
        for i, (site, sae) in enumerate(saes):
            stack.enter_context(spliced(model, site, sae, f"sae{i}"))
            names.append(f"sae{i}")
        yield names


@torch.no_grad()
def active_latents(model: nn.Module, names: list[str], inputs: list[Tensor]) -> dict[str, list[int]]:
    """name → the latents whose code is non-zero at some position of some input in ``inputs``."""
    fired: dict[str, Tensor] = {}
    for x in inputs:
        with capture(model, [f"{n}.codes" for n in names]) as acts:
            model(x)
        for n in names:
            f = (acts[f"{n}.codes"] != 0).reshape(-1, acts[f"{n}.codes"].shape[-1]).any(0)
            fired[n] = f if n not in fired else fired[n] | f
    return {n: torch.nonzero(fired[n]).flatten().tolist() for n in names}


def latent_circuit_nodes(
    model: nn.Module,
    sites: list[str],
    names: list[str],
    clean: Tensor,
    corrupt: Tensor,
    metric: Callable[[Tensor], Tensor],
    per_site: int = 0,
) -> tuple[dict[str, Component], dict[str, Component], dict[str, Any]]:
    """The nodes of a latent circuit over spliced SAEs (``names`` at ``sites``).

    Returns (scored, all, selection): ``all`` holds every latent active on the clean or corrupted inputs plus
    each site's error term (labels ``SITE#i`` and ``SITE#error``); ``scored`` is ``all`` with each site cut to
    its ``per_site`` latents of largest |AtP| when ``per_site`` > 0 (one extra AtP pass, counted in
    ``selection``). Marks et al. keep every latent and prune by a threshold on the AtP/IG score; the cap is a
    top-N so that exact patching (one forward per node) stays affordable. Faithfulness ablates ``all``: a capped
    latent is still outside the circuit. Latents inactive on every input are 0 there, so mean ablation leaves
    them unchanged and they are left out.
    """
    active = active_latents(model, names, [clean, corrupt])
    every: dict[str, Component] = {}
    for site, n in zip(sites, names):
        every.update({f"{site}#{i}": Component(f"{n}.codes", i, i + 1) for i in active[n]})
        every[f"{site}#error"] = Component(f"{n}.error")
    selection: dict[str, Any] = {
        "active": {s: len(active[n]) for s, n in zip(sites, names)},
        "per_site": per_site,
        "forwards": 0,
        "backwards": 0,
    }
    scored = dict(every)
    if per_site > 0 and any(len(a) > per_site for a in active.values()):
        from mechscope.circuits.patching import atp_effects

        labels = [k for k in every if not k.endswith("#error")]
        eff = atp_effects(model, [every[k] for k in labels], clean, corrupt, metric)
        selection["forwards"], selection["backwards"] = eff.forwards, eff.backwards
        size = dict(zip(labels, eff.effects.abs().tolist()))
        scored = {}
        for site in sites:
            mine = sorted((k for k in labels if k.rsplit("#", 1)[0] == site), key=lambda k: -size[k])[:per_site]
            scored.update({k: every[k] for k in sorted(mine, key=lambda k: int(k.rsplit("#", 1)[1]))})
            scored[f"{site}#error"] = every[f"{site}#error"]
    selection["scored"] = {
        s: sum(1 for k in scored if k.rsplit("#", 1)[0] == s and not k.endswith("#error")) for s in sites
    }
    return scored, every, selection

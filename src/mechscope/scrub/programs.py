"""Program replacement: a site's activation computed by a plain Python function instead of the model.

A program is built by a factory from the model and its task, ``factory(model, task, **args) -> fn``, and
``fn(inputs: LongTensor[B, T]) -> Tensor`` returns the site's activation for those inputs (the shape the
model would produce there). A program that needs earlier activations computes them from the model it
was given (e.g. with :func:`mechscope.sites.run_to_sites`). In a hypothesis a program node replaces one
site; scrubbing then measures how much loss the program recovers, exactly as for any claim.

:data:`PROGRAMS` holds the built-in programs; a hypothesis may name any ``package.module:factory``.

``modadd.fourier_logits`` — the modular-addition model's whole embedding → logit computation as the
"clock" algorithm (Nanda et al. 2023), written by hand:

    logit(a, b, c) = Σ_{k ∈ K} α_k · cos(2πk(a + b − c)/p)          (the logits at "=", [B, p])

- K, the key frequencies, are read from the embedding: with the Fourier basis cos_k(a) = cos(2πka/p),
  sin_k(a) = sin(2πka/p) (k = 1 … (p−1)/2), frequency k's energy is ‖cos_kᵀ W_E‖² + ‖sin_kᵀ W_E‖² over the
  p number tokens; K = {k : energy_k ≥ ``threshold`` · max energy}.
- α_k, one scale per key frequency, is the projection of the model's own logits on the training pairs
  onto the basis: the basis functions are orthogonal over c (Σ_c cos(ω_k(s − c)) cos(ω_j(s − c)) = p/2 · [k = j]),
  so α_k = (2/p) · mean_i Σ_c L_i,c cos(ω_k(s_i − c)) with s_i = a_i + b_i. Nothing else of the model is used.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mechscope.zoo.transformer import ZooTransformer

from mechscope.scrub.errors import HypothesisError

ProgramFn = Callable[[Tensor], Tensor]


def key_frequencies(W_E: Tensor, p: int, threshold: float = 0.25) -> tuple[list[int], Tensor]:
    """(key frequencies K, energy of every frequency [(p−1)/2]) of the number embeddings ``W_E[:p]`` [p, d]."""
    a = torch.arange(p, dtype=torch.float64)
    k = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)
    ang = 2 * math.pi * k[:, None] * a[None, :] / p  # [K, p]
    basis = torch.cat([ang.cos(), ang.sin()]) * math.sqrt(2 / p)  # orthonormal rows
    proj = basis @ W_E[:p].double()  # [2K, d]
    energy = (proj**2).sum(-1).reshape(2, -1).sum(0)
    keys = [int(i) + 1 for i in (energy >= threshold * energy.max()).nonzero().squeeze(1)]
    return keys, energy


def modadd_fourier_logits(model: nn.Module, task: Any, threshold: float = 0.25) -> ProgramFn:
    """The clock algorithm of the module docstring for a zoo ``modadd`` model (inputs "a b =")."""
    p = task.n_classes
    keys, _ = key_frequencies(cast("ZooTransformer", model).W_E.detach(), p, threshold)
    omega = 2 * math.pi * torch.tensor(keys, dtype=torch.float64) / p  # [K]
    c = torch.arange(p, dtype=torch.float64)

    def basis(x: Tensor) -> Tensor:  # [B, K, p]: cos(ω_k (a + b − c))
        s = (x[:, 0] + x[:, 1]).double()
        return torch.cos(omega[None, :, None] * (s[:, None, None] - c[None, None, :]))

    with torch.no_grad():
        x = task.train_inputs
        logits = torch.cat([model(x[i : i + 4096])[:, 2] for i in range(0, x.shape[0], 4096)]).double()  # [N, p]
        alpha = 2 / p * torch.einsum("nc,nkc->k", logits, basis(x)) / x.shape[0]

    def program(x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], x.shape[1], p)
        out[:, 2] = torch.einsum("k,bkc->bc", alpha, basis(x)).float()
        return out

    program.key_frequencies = keys  # type: ignore[attr-defined]
    program.alpha = alpha  # type: ignore[attr-defined]
    return program


PROGRAMS: dict[str, Callable[..., ProgramFn]] = {
    "modadd.fourier_logits": modadd_fourier_logits,
}
"""Built-in program factories by name."""


def resolve_program(spec: str, args: dict, node: str) -> tuple[Callable[..., ProgramFn], dict]:
    """(factory, args) for a program named in :data:`PROGRAMS` or as ``package.module:factory``."""
    if not isinstance(args, dict):
        raise HypothesisError(f"node {node!r}: program_args must be a mapping, got {type(args).__name__}")
    if spec in PROGRAMS:
        return PROGRAMS[spec], dict(args)
    if ":" not in str(spec):
        raise HypothesisError(
            f"node {node!r}: unknown program {spec!r}; use one of {', '.join(PROGRAMS)} or 'package.module:factory'"
        )
    mod_name, fn_name = str(spec).split(":", 1)
    try:
        return getattr(importlib.import_module(mod_name), fn_name), dict(args)
    except (ImportError, AttributeError) as e:
        raise HypothesisError(f"node {node!r}: cannot import program {spec!r} ({e})") from e


def build_programs(nodes: list, model: nn.Module, task: Any) -> dict[str, ProgramFn]:
    """Call each program node's factory: {node name: fn}. A factory that raises is named with its node."""
    out = {}
    for n in nodes:
        if n.program is None:
            continue
        factory, args = n.program
        try:
            out[n.name] = factory(model, task, **args)
        except Exception as e:  # a user's factory: its failure is reported with the node
            raise HypothesisError(f"node {n.name!r}: program raised {type(e).__name__}: {e}") from e
    return out

"""What a trained decomposition says: alive subcomponents, recovery of known mechanisms, co-activation,
and per-subcomponent dashboards (the inputs that need each subcomponent most).

Shapes: B evaluation inputs, C subcomponents per target, F true mechanisms of one target, K alive
subcomponents over all targets.

- alive_{l,c} = [max_x g_{l,c}(x) > threshold] over the evaluation inputs.
- recovery of target l: MMCS = (1/F) Σ_f max_{c alive} cos(vec T_f, vec U_c V_cᵀ) with the true rank-one
  mechanisms T [F, d_out, d_in] (the cosine of the flattened matrices; a product U_c V_cᵀ has a definite sign,
  so this cosine can be negative). With no alive subcomponent the MMCS is 0.
- co-activation of alive subcomponents i, j: P(g_j > t | g_i > t) over the evaluation inputs (row i, column j);
  its diagonal is 1. "Feed each other" is left to the reader of this matrix: two targets in series whose
  subcomponents co-activate at 1 form one mechanism across layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechscope.decompose.spd import SPD
from mechscope.toy.recovery import hungarian, mmcs


@dataclass(frozen=True)
class Alive:
    """Alive subcomponents as (target name, index) pairs, and their binary activity on the evaluation inputs."""

    labels: tuple[tuple[str, int], ...]
    active: Tensor
    """[B, K] bool: g > threshold."""
    importances: Tensor
    """[B, K] g (clamped to [0, 1])."""

    def per_target(self, names: list[str]) -> dict[str, int]:
        return {n: sum(1 for t, _ in self.labels if t == n) for n in names}


@torch.no_grad()
def alive(spd: SPD, x_eval: Tensor, threshold: float | None = None, batch: int = 4096) -> Alive:
    """The subcomponents whose causal importance exceeds ``threshold`` (default the config's) on some input."""
    t = spd.cfg.alive_threshold if threshold is None else threshold
    chunks = [spd.causal_importances(x_eval[i : i + batch]) for i in range(0, len(x_eval), batch)]
    labels, cols = [], []
    for n in spd.names:
        g = torch.cat([c[n].reshape(-1, c[n].shape[-1]) for c in chunks])  # [B·positions, C]
        for c in torch.nonzero(g.max(0).values > t).flatten().tolist():
            labels.append((n, c))
            cols.append(g[:, c])
    imp = torch.stack(cols, 1) if cols else torch.zeros(sum(len(x) for x in chunks), 0, device=x_eval.device)
    return Alive(tuple(labels), imp > t, imp)


def recovery(
    spd: SPD, truth: dict[str, Tensor], live: Alive, basis: dict[str, Tensor] | None = None
) -> dict[str, dict[str, float]]:
    """Per target with known truth: MMCS over alive subcomponents, Hungarian mean cosine, counts. With a
    ``basis`` B [d_in, k] for a target, its subcomponents are compared as the maps U_c V_cᵀ B [d_out, k]."""
    out = {}
    for n, T in truth.items():
        idx = [c for t, c in live.labels if t == n]
        F = T.shape[0]
        if not idx:
            out[n] = {"mmcs": 0.0, "matched_mean_cos": 0.0, "alive": 0, "true_mechanisms": F}
            continue
        subs = spd.comp(n).subcomponents().detach()[idx]
        if basis is not None and n in basis:
            subs = subs @ basis[n]
        subs = subs.flatten(1)
        truth_flat = T.flatten(1)
        out[n] = {
            "mmcs": mmcs(truth_flat, subs),
            "matched_mean_cos": float(hungarian(truth_flat, subs).cos.mean()),
            "alive": len(idx),
            "true_mechanisms": F,
        }
    return out


def coactivation(live: Alive) -> Tensor:
    """[K, K] P(j active | i active) over the evaluation inputs."""
    a = live.active.double()
    both = a.T @ a
    return (both / a.sum(0).clamp_min(1)[:, None]).float()


@dataclass(frozen=True)
class SubcomponentDashboard:
    """One alive subcomponent: how often inputs need it and the inputs that need it most."""

    target: str
    index: int
    density: float
    """Fraction of evaluation inputs with g > threshold."""
    norm: float
    """‖U_c V_cᵀ‖_F."""
    top: tuple[tuple[float, str], ...]
    """(g, description of the input) for the inputs with the largest g."""


def dashboards(spd: SPD, live: Alive, describe, k: int = 8) -> list[SubcomponentDashboard]:
    """One dashboard per alive subcomponent; ``describe(row index) -> str`` names an evaluation input."""
    out = []
    for j, (n, c) in enumerate(live.labels):
        g = live.importances[:, j]
        top = torch.topk(g, min(k, len(g)))
        norm = float(spd.comp(n).subcomponents()[c].detach().norm())
        out.append(
            SubcomponentDashboard(
                n,
                c,
                float(live.active[:, j].float().mean()),
                norm,
                tuple((float(v), describe(int(i))) for v, i in zip(top.values, top.indices)),
            )
        )
    return out

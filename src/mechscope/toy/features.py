"""Synthetic sparse features with known truth: the one generator every toy experiment draws from.

Shapes: B rows, n features (``n_features``).

Feature i is *active* on a row with probability p_i and then takes the value
``f_i = s_i · u``, u ~ U[0, 1] (U[−1, 1] when ``signed``), where s_i is the feature's scale; inactive
features are 0. The truth a benchmark needs is on :class:`SyntheticFeatures`:

- frequencies: p_i = p (``frequency="uniform"``) or p_i = p · (i + 1)^(−α) (``"power_law"``, α = ``power_law_exponent``);
- importance: I_i = ``importance_decay``^i (Elhage et al. 2022 use 0.7^i; 1 = uniform);
- scales: s_i = exp(σ z_i), z_i ~ N(0, 1) (log-normal with median 1; σ = ``scale_sigma``, 0 = all 1);
- structure, laid out from feature 0 on: ``parents`` parent features, each followed by nothing but
  indexed after all parents come their ``children_per_parent`` children (a child fires only when its
  parent fires, then with probability ``child_given_parent``: p_child = p_parent · child_given_parent);
  then ``correlated_groups`` groups of ``group_size`` features that fire together (one draw per group);
  then ``anticorrelated_groups`` groups of which at most one member fires (the group fires with
  probability min(1, size·p) and picks one member uniformly); the remaining features are independent.

Batches are generated on the fly and deterministically: batch number b comes from a generator seeded
with (seed, b), so a run of millions of rows needs no disk and can resume at any batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from mechscope.config import check_ranges, in_range
from mechscope.errors import UsageError

SCALE_SIGMA = in_range(0, 5, why="past it the scales exp(σz) overflow float32 losses")
"""Range of σ of the log-normal per-feature scales: [0, 5]."""


@dataclass(frozen=True)
class FeatureConfig:
    """Sparse synthetic features: how often each fires, how large, how important, and how they co-occur."""

    n_features: int = 5
    """Number of features n."""
    p: float = 0.1
    """Probability that a feature is active on a row (the first feature's, under a power law); in (0, 1]."""
    frequency: Literal["uniform", "power_law"] = "uniform"
    """Feature frequencies: all p, or p·(i+1)^(−power_law_exponent)."""
    power_law_exponent: float = 0.5
    """α of the power-law frequencies."""
    importance_decay: float = 1.0
    """Importance of feature i is importance_decay^i (weights the toy models' loss); 1 = all equal."""
    scale_sigma: float = field(default=0.0, metadata=SCALE_SIGMA)
    """σ of the log-normal per-feature scales s_i = exp(σ z_i); 0 gives every feature scale 1."""
    signed: bool = False
    """Magnitudes U[−1, 1] instead of U[0, 1] (for models that compute functions such as |x|)."""
    parents: int = 0
    """Features (from index 0) that are parents in the hierarchy."""
    children_per_parent: int = 0
    """Children of each parent (indexed after all parents); a child fires only with its parent."""
    child_given_parent: float = 0.5
    """Probability that a child fires when its parent does."""
    correlated_groups: int = 0
    """Groups of ``group_size`` features that always fire together."""
    anticorrelated_groups: int = 0
    """Groups of ``group_size`` features of which at most one fires on a row."""
    group_size: int = 2
    """Members of each correlated or anti-correlated group."""
    seed: int = 0
    """Seed of the scales and of every batch."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.n_features < 1:
            raise UsageError(f"n_features must be ≥ 1, got {self.n_features}")
        if not 0 < self.p <= 1:
            raise UsageError(f"p must lie in (0, 1], got {self.p}; it is the probability that a feature is active")
        if not 0 < self.child_given_parent <= 1:
            raise UsageError(f"child_given_parent must lie in (0, 1], got {self.child_given_parent}")
        if min(self.parents, self.children_per_parent, self.correlated_groups, self.anticorrelated_groups) < 0:
            raise UsageError("parents, children_per_parent and the group counts must be ≥ 0")
        if self.group_size < 2:
            raise UsageError(f"group_size must be ≥ 2, got {self.group_size}")
        if not (
            0 < self.importance_decay < math.inf
            and 0 <= self.scale_sigma < math.inf
            and 0 <= self.power_law_exponent < math.inf
        ):
            raise UsageError(
                f"importance_decay must be finite and > 0, scale_sigma and power_law_exponent finite and ≥ 0; got "
                f"{self.importance_decay}, {self.scale_sigma}, {self.power_law_exponent}"
            )
        check_importance_decay(self.importance_decay, self.n_features)
        if self.structured > self.n_features:
            raise UsageError(
                f"the hierarchy and groups need {self.structured} features but n_features is {self.n_features}; "
                "raise `n_features` or use fewer parents/groups"
            )

    @property
    def structured(self) -> int:
        """Features taken by the hierarchy and the groups (the rest are independent)."""
        return (
            self.parents * (1 + self.children_per_parent)
            + (self.correlated_groups + self.anticorrelated_groups) * self.group_size
        )


def check_importance_decay(decay: float, n_features: int, name: str = "importance_decay") -> None:
    """Refuse a decay D (finite, > 0 assumed) whose largest importance D^i, i < n, exceeds 1e30, where the float32
    losses overflow (a small D is fine: the late features just weigh little); ``name`` is the flag or field named."""
    if n_features < 2:
        return  # the one feature's importance is D^0 = 1
    top = 10 ** (30 / (n_features - 1))
    if decay > top:
        raise UsageError(
            f"{name} {decay}: feature i's importance decay^i must stay ≤ 1e30 (float32 losses stay finite); "
            f"with {n_features} features give {name} between 0 (excluded) and {top:.3g}"
        )


class SyntheticFeatures:
    """The generator and its truth. ``probs [n]`` (marginal p_i), ``importance [n]``, ``scales [n]``,
    ``parent [n]`` (index of the parent, −1 for none), ``group [n]`` (group id, −1 for none)."""

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        n = cfg.n_features
        i = torch.arange(n, dtype=torch.float64)
        base = (
            cfg.p * (i + 1).pow(-cfg.power_law_exponent)
            if cfg.frequency == "power_law"
            else torch.full((n,), cfg.p, dtype=torch.float64)
        )
        self.importance = (cfg.importance_decay**i).float()
        g = torch.Generator().manual_seed(cfg.seed)
        self.scales = torch.exp(cfg.scale_sigma * torch.randn(n, generator=g, dtype=torch.float64)).float()
        self.parent = torch.full((n,), -1, dtype=torch.long)
        self.group = torch.full((n,), -1, dtype=torch.long)
        self._draw_p = base.clone()  # probability of each feature's own draw (conditional for children)
        probs = base.clone()
        at = cfg.parents
        for par in range(cfg.parents):
            kids = torch.arange(at, at + cfg.children_per_parent)
            self.parent[kids] = par
            self._draw_p[kids] = cfg.child_given_parent
            probs[kids] = probs[par] * cfg.child_given_parent
            at += cfg.children_per_parent
        self._correlated, self._anti = [], []
        for gid in range(cfg.correlated_groups + cfg.anticorrelated_groups):
            members = torch.arange(at, at + cfg.group_size)
            self.group[members] = gid
            if gid < cfg.correlated_groups:
                self._correlated.append(members)
                probs[members] = float(probs[members[0]])
            else:
                self._anti.append(members)
                probs[members] = min(1.0, cfg.group_size * float(probs[members[0]])) / cfg.group_size
            at += cfg.group_size
        self.probs = probs.float()

    @property
    def n(self) -> int:
        return self.cfg.n_features

    def expected_l0(self) -> float:
        """Σ_i p_i: the mean number of active features per row."""
        return float(self.probs.sum())

    def active(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """BoolTensor[B, n]: which features are active on each of B rows."""
        B, n = batch_size, self.n
        on = torch.rand(B, n, generator=generator) < self._draw_p.float()
        for members in self._correlated:
            on[:, members] = on[:, members[:1]]
        for members in self._anti:
            fires = torch.rand(B, generator=generator) < self.probs[members].sum()
            pick = torch.randint(len(members), (B,), generator=generator)
            on[:, members] = torch.nn.functional.one_hot(pick, len(members)).bool() & fires[:, None]
        if self.cfg.parents and self.cfg.children_per_parent:
            kids = self.parent >= 0
            on[:, kids] &= on[:, self.parent[kids]]
        return on

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(values [B, n], active BoolTensor[B, n]): f_i = s_i·u on active features, 0 elsewhere."""
        on = self.active(batch_size, generator)
        u = torch.rand(batch_size, self.n, generator=generator)
        if self.cfg.signed:
            u = 2 * u - 1
        return u * self.scales * on, on

    def batch(self, index: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """Batch number ``index`` (same seed and index → same rows): (values [B, n], active [B, n])."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index + 1)
        return self.sample(batch_size, g)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless deterministic batches from number ``start`` on."""
        b = start
        while True:
            yield self.batch(b, batch_size)
            b += 1


def random_directions(n: int, d: int, seed: int = 0) -> Tensor:
    """[n, d] random unit rows: the hand-made superposition's true feature directions (x = f D)."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n, d, generator=g)
    return D / D.norm(dim=1, keepdim=True)

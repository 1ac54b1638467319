"""Known answer for a latent-level circuit over SAEs at two sites (Marks et al. 2024).

The model: x [B, T, 4] → s1 (= x) → s2 = A·s1 → out = s2[..., 0] (a linear readout), with

    s2[0] = s1[1] + s1[3],   s2[1] = s1[2],   s2[2] = s1[0],   s2[3] = s1[0].

SAE 1 at s1: latents = coordinates 0, 1, 2 (identity dictionary), so coordinate 3 is its error term.
SAE 2 at s2: latents = coordinates 2, 0, 1 (a permutation, orthogonal), so coordinate 3 is its error term.
Inputs are positive (every ReLU in its linear part) and the corruption changes coordinates 0, 1 and 3. The
readout sees only s2[0], so the true circuit is {s1#1, s1#error, s2#1}: s1#0 changes but feeds only unread
coordinates, s1#2 does not change, s2#0 and s2#error change but are not read, s2#2 does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mechscope.circuits import atp_effects, exact_effects
from mechscope.circuits.discover import DiscoverConfig, discover
from mechscope.circuits.latents import latent_circuit_nodes, parse_sae_specs, spliced_many
from mechscope.circuits.patching import Component
from mechscope.errors import UsageError


class PermSAE:
    """Latent j reads and writes coordinate ``coords[j]`` (ReLU encoder); the other coordinates are error."""

    def __init__(self, coords: list[int], d: int = 4) -> None:
        self.D = torch.zeros(len(coords), d)
        for j, c in enumerate(coords):
            self.D[j, c] = 1.0

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(x @ self.D.T)

    def decode(self, c: Tensor) -> Tensor:
        return c @ self.D


class TwoSites(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s1, self.s2 = nn.Identity(), nn.Identity()
        A = torch.zeros(4, 4)
        A[0, 1] = A[0, 3] = A[1, 2] = A[2, 0] = A[3, 0] = 1.0
        self.register_buffer("A", A)

    def forward(self, x: Tensor) -> Tensor:
        return self.s2(self.s1(x) @ self.A.T)[..., 0]  # [B, T]


def metric(out: Tensor) -> Tensor:
    return out.sum(-1).mean()


@dataclass
class LinearTask:
    """Duck-typed CircuitTask: loss = squared error of Σ_t out against the clean value."""

    clean: Tensor
    corrupt: Tensor
    name: str = "two-sites"
    metric_name: str = "sum of the readout"
    metric: Any = staticmethod(metric)

    @property
    def evaluation(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.clean, self.corrupt, self.clean[..., 1].sum(-1) + self.clean[..., 3].sum(-1)

    def loss(self, out: Tensor) -> Tensor:
        return (out.sum(-1) - self.evaluation[2]) ** 2

    def rock(self) -> Tensor:
        y = self.evaluation[2]
        return (y - y.mean()) ** 2


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    clean = 0.5 + torch.rand(16, 3, 4, generator=g)
    corrupt = clean.clone()
    corrupt[..., [0, 1, 3]] = 0.5 + torch.rand(16, 3, 3, generator=g)
    return clean, corrupt


SITES = ["s1", "s2"]
SAES = [("s1", PermSAE([0, 1, 2])), ("s2", PermSAE([2, 0, 1]))]


def test_exact_and_atp_find_the_known_latent_circuit_and_the_pieces_add_up():
    model, (clean, corrupt) = TwoSites(), _data()
    whole = {s: float(exact_effects(model, [Component(s)], clean, corrupt, metric).effects[0]) for s in SITES}
    with spliced_many(model, SAES) as names:
        assert names == ["sae0", "sae1"]
        scored, every, sel = latent_circuit_nodes(model, SITES, names, clean, corrupt, metric)
        assert list(scored) == ["s1#0", "s1#1", "s1#2", "s1#error", "s2#0", "s2#1", "s2#2", "s2#error"]
        assert sel["active"] == {"s1": 3, "s2": 3}
        nodes = list(scored.values())
        exact = exact_effects(model, nodes, clean, corrupt, metric)
        atp = atp_effects(model, nodes, clean, corrupt, metric)
    assert not hasattr(model, "sae0") and not hasattr(model, "sae1")
    eff = dict(zip(scored, exact.effects.tolist()))
    d1 = float((corrupt[..., 1] - clean[..., 1]).sum(-1).mean())
    d3 = float((corrupt[..., 3] - clean[..., 3]).sum(-1).mean())
    assert eff["s1#1"] == pytest.approx(d1, abs=1e-5) and eff["s1#error"] == pytest.approx(d3, abs=1e-5)
    assert eff["s2#1"] == pytest.approx(d1 + d3, abs=1e-5)
    for k in ("s1#0", "s1#2", "s2#0", "s2#2", "s2#error"):
        assert eff[k] == pytest.approx(0.0, abs=1e-6), k
    assert torch.allclose(atp.effects, exact.effects, atol=1e-5)  # linear after every code: AtP is exact
    for s in SITES:  # latents + error at a site = patching the whole site
        assert sum(v for k, v in eff.items() if k.startswith(s + "#")) == pytest.approx(whole[s], abs=1e-5)


@pytest.mark.parametrize("method", ["exact", "atp"])
def test_discover_keeps_the_known_latents_and_the_circuit_is_faithful(method):
    model, (clean, corrupt) = TwoSites(), _data()
    task = LinearTask(clean, corrupt)
    with spliced_many(model, SAES) as names:
        scored, every, _ = latent_circuit_nodes(model, SITES, names, clean, corrupt, metric)
        res = discover(model, task, DiscoverConfig(method=method, top=3, budget=8), nodes=scored, ablate=every)  # type: ignore[arg-type]
    assert {n["name"] for n in res["nodes"]} == {"s1#1", "s1#error", "s2#1"}
    f = res["faithfulness"]
    assert f["nodes_kept"] == 3 and f["nodes_total"] == 8
    assert f["recovered"] == pytest.approx(1.0, abs=1e-6)  # the readout sees only the kept path
    assert f["loss_empty"] > 0.1
    if method == "atp":
        assert res["agreement_with_exact"]["max_abs_error"] < 1e-5 and res["agreement_with_exact"]["budget"] == 8


def test_the_cap_keeps_each_sites_largest_atp_latents():
    model, (clean, corrupt) = TwoSites(), _data()
    with spliced_many(model, SAES) as names:
        scored, every, sel = latent_circuit_nodes(model, SITES, names, clean, corrupt, metric, per_site=1)
    assert list(scored) == ["s1#1", "s1#error", "s2#1", "s2#error"] and len(every) == 8
    assert sel["scored"] == {"s1": 1, "s2": 1} and sel["backwards"] == 1


def test_bad_sae_specs_are_one_line_errors():
    with pytest.raises(UsageError, match="^`sae` 'resid_post.6': expected SITE=DIR"):
        parse_sae_specs(["resid_post.6"])
    with pytest.raises(UsageError, match="^`sae` names the site 'a' twice"):
        parse_sae_specs(["a=x", "a=y"])
    with pytest.raises(UsageError, match="scores edges of the residual graph, not SAE latents; use `method` exact"):
        discover(TwoSites(), LinearTask(*_data()), DiscoverConfig(method="eap"), nodes={"s1#0": Component("s1")})  # type: ignore[arg-type]

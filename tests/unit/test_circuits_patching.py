"""Exact patching and AtP on models whose effects are known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.circuits import Component, agreement, atp_effects, exact_effects
from mechscope.errors import UsageError


class Heads(nn.Module):
    """Three "heads" read x [B, T, d] and write to the output linearly: out = Σ_h head_h(x W_h) U_h.
    ``both`` holds heads 0 and 1 side by side ([B, T, 2e]) so that slices are nodes too."""

    def __init__(self, d=4, e=3, v=5, square=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(3, d, e, generator=g))
        self.U = nn.Parameter(torch.randn(3, e, v, generator=g))
        self.both, self.h2 = nn.Identity(), nn.Identity()
        self.square = square

    def forward(self, x):
        z = torch.einsum("btd,hde->hbte", x, self.W)
        both = self.both(torch.cat([z[0], z[1]], -1))
        parts = [both[..., :3], both[..., 3:], self.h2(z[2])]
        if self.square:
            parts = [p**2 for p in parts]
        return sum(torch.einsum("bte,ev->btv", p, self.U[h]) for h, p in enumerate(parts))


NODES = [Component("both", 0, 3), Component("both", 3, 6), Component("h2")]


def metric(logits):
    return logits[:, -1, 0].mean()


def test_atp_equals_exact_patching_when_the_metric_is_linear_in_every_node():
    model = Heads()
    g = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randn(8, 6, 4, generator=g), torch.randn(8, 6, 4, generator=g)
    exact = exact_effects(model, NODES, clean, corrupt, metric)
    atp = atp_effects(model, NODES, clean, corrupt, metric)
    assert torch.allclose(atp.effects, exact.effects, atol=1e-4)
    # By construction each head's effect is its own term of the linear output.
    with torch.no_grad():
        z = lambda x, h: x[:, -1] @ model.W[h] @ model.U[h][:, 0]  # noqa: E731
        want = torch.stack([(z(corrupt, h) - z(clean, h)).mean() for h in range(3)])
    assert torch.allclose(exact.effects, want, atol=1e-4)
    assert (exact.forwards, exact.backwards, atp.forwards, atp.backwards) == (5, 0, 2, 1)
    ag = agreement(atp, exact, top=1 / 3)
    assert ag["spearman"] == pytest.approx(1.0) and ag["auc_top"] == pytest.approx(1.0)
    assert exact.clean_metric == pytest.approx(float(metric(model(clean))))


def test_atp_overshoots_a_quadratic_by_the_known_factor():
    """out = Σ z_h² U_h: the exact effect is (z_c² − z_k²)U, AtP's is 2 z_k (z_c − z_k) U; with z_c = 0 (a zero
    corrupted input) AtP says −2 z_k² U where patching says −z_k² U: exactly twice."""
    model = Heads(square=True)
    clean = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(2))
    exact = exact_effects(model, NODES, clean, torch.zeros_like(clean), metric)
    atp = atp_effects(model, NODES, clean, torch.zeros_like(clean), metric)
    assert torch.allclose(atp.effects, 2 * exact.effects, rtol=1e-4, atol=1e-5)
    assert agreement(atp, exact)["max_abs_error"] > 0.01  # the check can fail: here it reports the error


def test_bad_inputs_name_the_problem():
    model = Heads()
    x = torch.randn(2, 6, 4)
    with pytest.raises(UsageError, match="positions must align"):
        exact_effects(model, NODES, x, torch.randn(2, 5, 4), metric)
    with pytest.raises(UsageError, match="no nodes"):
        atp_effects(model, [], x, x, metric)
    with pytest.raises(UsageError, match="does not depend on the model's output"):
        atp_effects(model, NODES, x, x, lambda logits: torch.tensor(1.0))
    with pytest.raises(UsageError, match="scalar"):
        exact_effects(model, NODES, x, x, lambda logits: logits[:, -1, 0])
    with pytest.raises(UsageError, match="unknown site"):
        exact_effects(model, [Component("nowhere")], x, x, metric)

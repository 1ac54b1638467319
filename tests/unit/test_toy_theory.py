"""The TMS optimum in the symmetric pentagon family (mechscope.toy.theory): the closed forms against
numerical integration and against the model's own loss, and the optimum's known values."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from mechscope.toy import FeatureConfig, SyntheticFeatures, feature_dimensionality
from mechscope.toy.models import ToyAutoencoder, weighted_loss
from mechscope.toy.theory import expected_loss, limit_optimum, one_active_loss, own_loss, polygon, relu_sq_mean


@pytest.mark.parametrize(
    "alpha, beta", [(1.3, -0.25), (0.4, -0.28), (-0.8, -0.1), (-0.8, 0.3), (0.5, 0.2), (0.2, -0.5), (0.0, 0.3)]
)
def test_piecewise_polynomials_match_numerical_integration(alpha, beta):
    assert relu_sq_mean(alpha, beta) == pytest.approx(
        quad(lambda u: max(alpha * u + beta, 0) ** 2, 0, 1, points=[0.5])[0], abs=1e-9
    )


def test_one_active_loss_matches_its_definition():
    s, b = 1.37, -0.28
    own = quad(lambda u: (u - max(s * u + b, 0)) ** 2, 0, 1, points=[-b / s])[0]
    interference = sum(
        quad(lambda u: max(s * math.cos(2 * math.pi * j / 5) * u + b, 0) ** 2, 0, 1)[0]  # noqa: B023 (called in the loop)
        for j in range(1, 5)
    )
    assert own_loss(s, b) == pytest.approx(own, abs=1e-9)
    assert one_active_loss(s, b) == pytest.approx(own + interference, abs=1e-9)


def test_expected_loss_is_the_toy_models_loss():
    """L(s, β; p) from the decomposition by active count agrees with the ReLU toy model's own loss on sampled rows."""
    a, b, p = 1.135, -0.247, 0.05
    model = ToyAutoencoder(5, 2, 1, relu=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W.copy_(torch.tensor(polygon(5, a), dtype=torch.float32)[None])
        model.b.fill_(b)
    feats = SyntheticFeatures(FeatureConfig(n_features=5, p=p, seed=3))
    x = torch.cat([feats.batch(i, 50_000)[0] for i in range(8)]).double()
    model.double()
    sampled = float(weighted_loss(model, x, torch.ones(5, dtype=torch.float64))[0])
    assert expected_loss(a * a, b, p) == pytest.approx(sampled, rel=0.03)
    # and at p → 0 it is n p ℓ₁
    assert expected_loss(a * a, b, 1e-5) / (5e-5) == pytest.approx(one_active_loss(a * a, b), rel=1e-3)


def test_limit_optimum_of_the_pentagon():
    opt = limit_optimum(5)
    assert opt.a == pytest.approx(1.1705, abs=1e-3) and opt.bias == pytest.approx(-0.2823, abs=1e-3)
    assert opt.dims_per_feature == pytest.approx(0.292, abs=1e-3)  # < 2/5: rows longer than 1
    assert opt.feature_dimensionality == pytest.approx(0.4)
    assert torch.allclose(feature_dimensionality(torch.tensor(polygon(5, opt.a))), torch.full((5,), 0.4), atol=1e-6)
    # a true minimum: every nearby (a, β) is worse, and so is the "unit norm, no bias" pentagon
    for da, db in [(0.02, 0), (-0.02, 0), (0, 0.02), (0, -0.02), (0.02, 0.02), (-0.02, -0.02)]:
        assert one_active_loss((opt.a + da) ** 2, opt.bias + db) > opt.loss
    assert one_active_loss(1.0, 0.0) > 1.5 * opt.loss

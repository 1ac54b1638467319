"""Known answers for feature and data dimensionality on hand-built matrices."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.toy import data_dimensionality, dims_per_feature, feature_dimensionality


def polygon(k: int, radius: float = 1.0) -> torch.Tensor:
    a = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return (radius * torch.stack([a.cos(), a.sin()], 1)).float()


def test_orthogonal_features_own_a_dimension_each():
    W = torch.diag(torch.tensor([1.0, 2.0, 0.5]))
    assert torch.allclose(feature_dimensionality(W), torch.ones(3))
    assert dims_per_feature(torch.eye(3)) == pytest.approx(1.0)


def test_antipodal_pair_shares_one_dimension():
    W = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # a pair on x, a lone feature on y
    assert torch.allclose(feature_dimensionality(W), torch.tensor([0.5, 0.5, 1.0]))
    assert dims_per_feature(W) == pytest.approx(2 / 3)


@pytest.mark.parametrize("radius", [1.0, 3.0])
def test_pentagon_gives_two_fifths(radius):
    W = polygon(5, radius)
    # Σ_j cos² of the angles 0, ±72°, ±144° = 1 + 2cos²72° + 2cos²144° = 5/2, so D_i = 2/5 at any radius.
    assert torch.allclose(feature_dimensionality(W), torch.full((5,), 0.4), atol=1e-6)
    assert dims_per_feature(polygon(5)) == pytest.approx(0.4)


def test_triangle_and_unrepresented_feature():
    W = torch.cat([polygon(3), torch.zeros(1, 2)])
    # Σ_j cos² over 0°, ±120° = 1 + 2·(1/4) = 3/2 → D = 2/3; a zero row owns nothing.
    assert torch.allclose(feature_dimensionality(W), torch.tensor([2 / 3, 2 / 3, 2 / 3, 0.0]), atol=1e-6)


def test_data_dimensionality_uses_the_same_formula_on_examples():
    H = torch.cat([polygon(5, 2.0), torch.tensor([[0.0, 0.0]])])
    assert torch.allclose(data_dimensionality(H), torch.tensor([0.4] * 5 + [0.0]), atol=1e-6)
    assert torch.allclose(data_dimensionality(torch.eye(4) * 7), torch.ones(4))


def test_bad_shapes_raise_usage_errors():
    with pytest.raises(UsageError, match="2-D"):
        feature_dimensionality(torch.ones(3))
    with pytest.raises(UsageError, match="all zeros"):
        dims_per_feature(torch.zeros(3, 2))

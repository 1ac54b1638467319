"""The synthetic feature generator: frequencies, hierarchy, groups, scales and determinism by construction."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.toy import FeatureConfig, SyntheticFeatures

ROWS = 20_000


def empirical(feats: SyntheticFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    values, on = feats.batch(0, ROWS)
    return values, on


def assert_rates(on: torch.Tensor, probs: torch.Tensor) -> None:
    rate = on.float().mean(0)
    sd = (probs * (1 - probs) / ROWS).sqrt()
    assert ((rate - probs).abs() <= 5 * sd + 1e-4).all(), (rate, probs)


def test_batches_are_deterministic_and_distinct():
    feats = SyntheticFeatures(FeatureConfig(n_features=50, p=0.2, seed=3))
    a, b = feats.batch(4, 64), feats.batch(4, 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], feats.batch(5, 64)[0])
    it = feats.batches(64, start=4)
    assert torch.equal(next(it)[0], a[0])


def test_uniform_and_power_law_frequencies():
    for cfg in (
        FeatureConfig(n_features=20, p=0.1),
        FeatureConfig(n_features=20, p=0.3, frequency="power_law", power_law_exponent=1.0),
    ):
        feats = SyntheticFeatures(cfg)
        if cfg.frequency == "power_law":
            assert torch.allclose(feats.probs, 0.3 / torch.arange(1, 21).float())
        values, on = empirical(feats)
        assert_rates(on, feats.probs)
        assert ((values > 0) == on).all() and values.max() <= 1.0  # U[0, 1] magnitudes, zero when inactive


def test_hierarchy_children_fire_only_with_their_parent():
    cfg = FeatureConfig(n_features=12, p=0.2, parents=2, children_per_parent=3, child_given_parent=0.5)
    feats = SyntheticFeatures(cfg)
    assert feats.parent[:2].tolist() == [-1, -1] and feats.parent[2:8].tolist() == [0, 0, 0, 1, 1, 1]
    _, on = empirical(feats)
    kids = torch.arange(2, 8)
    assert not (on[:, kids] & ~on[:, feats.parent[kids]]).any()
    assert torch.allclose(feats.probs[kids], torch.full((6,), 0.1))
    assert_rates(on, feats.probs)


def test_correlated_and_anticorrelated_groups():
    cfg = FeatureConfig(n_features=10, p=0.2, correlated_groups=1, anticorrelated_groups=1, group_size=3)
    feats = SyntheticFeatures(cfg)
    _, on = empirical(feats)
    assert (on[:, 0] == on[:, 1]).all() and (on[:, 1] == on[:, 2]).all()
    assert on[:, 3:6].sum(1).max() == 1  # at most one member of the anti-correlated group
    assert torch.allclose(feats.probs[3:6], torch.full((3,), 0.2))  # min(1, 3·0.2)/3
    assert_rates(on, feats.probs)


def test_log_normal_scales_and_importance():
    feats = SyntheticFeatures(FeatureConfig(n_features=200, p=0.5, scale_sigma=1.0, importance_decay=0.7))
    assert torch.allclose(feats.importance[:3], torch.tensor([1.0, 0.7, 0.49]))
    logs = feats.scales.log()
    assert abs(float(logs.mean())) < 0.3 and 0.8 < float(logs.std()) < 1.2
    values, _ = feats.batch(0, 4000)
    assert (values.max(0).values <= feats.scales + 1e-6).all()
    assert (values.max(0).values >= 0.95 * feats.scales).all()  # U[0, 1]·s_i reaches close to s_i


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"p": 0.0}, r"p must lie in \(0, 1\]"),
        ({"p": 1.5}, r"p must lie in \(0, 1\]"),
        ({"n_features": 4, "parents": 2, "children_per_parent": 2}, "n_features"),
        ({"group_size": 1}, "group_size"),
    ],
)
def test_bad_configs_name_the_fix(kw, match):
    with pytest.raises(UsageError, match=match):
        FeatureConfig(**kw)

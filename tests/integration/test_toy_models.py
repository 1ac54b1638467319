"""Toy models reproduce their known geometry: the TMS pentagon, the linear autoencoder's top-m
features, and the |x| MLP beating the best constant. Weights cache into a per-test folder."""

from __future__ import annotations

import pytest
import torch

from mechscope.toy import FeatureConfig, ToyModelConfig, dims_per_feature, feature_dimensionality, train_toy
from mechscope.toy.theory import finite_p_optimum


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))


def test_tms_five_features_in_two_dims_form_a_pentagon(tmp_path):
    trained = train_toy(FeatureConfig(n_features=5, p=0.05), ToyModelConfig(dims=2, instances=2, steps=1000))
    W = trained.W()
    D = feature_dimensionality(W)
    print("D_i", D.tolist(), "norms", W.norm(dim=1).tolist(), "dims/feature", dims_per_feature(W))
    assert torch.allclose(D, torch.full((5,), 0.4), atol=0.02)
    angles = torch.atan2(W[:, 1], W[:, 0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * torch.pi]))
    assert torch.allclose(gaps, torch.full((5,), 2 * torch.pi / 5), atol=0.1)  # equal 72° gaps
    # m/‖W‖²_F ≈ 0.31, not 2/5: the rows are longer than 1 and the bias negative, exactly as the
    # optimum of the loss in the symmetric pentagon family predicts (mechscope.toy.theory).
    opt = finite_p_optimum(0.05, samples=5000)
    assert torch.allclose(W.norm(dim=1), torch.full((5,), opt.a), atol=0.01), (W.norm(dim=1), opt)
    assert torch.allclose(trained.model.b[trained.best].detach(), torch.full((5,), opt.bias), atol=0.01), opt
    assert dims_per_feature(W) == pytest.approx(opt.dims_per_feature, abs=0.005) and opt.dims_per_feature < 0.35
    # The cache returns the same weights without training.
    assert any(tmp_path.joinpath("toy").glob("tms-*.safetensors"))
    again = train_toy(FeatureConfig(n_features=5, p=0.05), ToyModelConfig(dims=2, instances=2, steps=1000))
    assert torch.equal(again.W(), W)


def test_dense_tms_keeps_only_as_many_features_as_dims():
    # p = 1: no sparsity, no superposition: two features get a dimension each, the others nothing.
    trained = train_toy(
        FeatureConfig(n_features=5, p=1.0, importance_decay=0.7), ToyModelConfig(dims=2, instances=2, steps=800)
    )
    D = feature_dimensionality(trained.W())
    assert (D[:2] > 0.9).all() and (D[2:] < 0.1).all(), D
    assert dims_per_feature(trained.W()) == pytest.approx(1.0, abs=0.1)


def test_linear_autoencoder_keeps_the_most_important_features():
    trained = train_toy(
        FeatureConfig(n_features=5, p=0.05, importance_decay=0.7),
        ToyModelConfig(kind="linear", dims=2, instances=2, steps=800),
    )
    W = trained.W()
    assert torch.allclose(feature_dimensionality(W)[:2], torch.ones(2), atol=0.02)
    assert (W.norm(dim=1)[2:] < 0.1).all()


def test_abs_mlp_computes_abs_exactly_with_two_neurons_per_feature():
    # |x_i| = ReLU(x_i) + ReLU(−x_i): with 2n neurons the MLP can be exact; with fewer it must superpose and pays for it.
    feats = FeatureConfig(n_features=10, p=0.05, signed=True)
    wide = train_toy(feats, ToyModelConfig(kind="abs", dims=20, instances=2, steps=1000))
    narrow = train_toy(feats, ToyModelConfig(kind="abs", dims=5, instances=2, steps=1000))
    x, _ = wide.features.batch(99, 4096)
    y = x.abs()
    constant = float((y - y.mean(0)).pow(2).sum(1).mean())

    def loss(t):
        with torch.no_grad():
            return float((t.model(x)[t.best] - y).pow(2).sum(1).mean())

    assert loss(wide) < 0.05 * constant, (loss(wide), constant)
    assert loss(wide) < loss(narrow) < constant

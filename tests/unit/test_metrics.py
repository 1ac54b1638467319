"""Known-answer tests of the metric formulas in mechscope.evals.metrics."""

import math

import pytest
import torch

from mechscope.evals import metrics as M


@pytest.fixture
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(200, 16, generator=g) * 3 + 5  # an offset, so centring matters


def test_fvu_perfect_is_zero_and_mean_is_one(x):
    assert M.fvu(x, x) == 0.0
    assert M.fvu(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(1.0, abs=1e-12)
    assert M.explained_variance(x, x) == 1.0


def test_fvu_is_centred():
    # Predicting zero for data far from zero explains nothing of the variance, and much worse than the mean.
    x = torch.randn(100, 4, dtype=torch.float64) + 100
    assert M.fvu(x, torch.zeros_like(x)) > 1000


def test_simple_values():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    xh = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert M.mse(x, xh) == pytest.approx((16 + 1) / 4)
    assert M.cosine(x, xh) == pytest.approx((3 / 5 + 1) / 2)
    assert M.norm_ratio(x, xh) == pytest.approx((3 / 5 + 1 / 2) / 2)
    codes = torch.tensor([[0.0, 2.0, -1.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert M.l0(codes) == 1.5
    assert M.l1(codes) == 3.0
    assert M.firing_fractions(codes).tolist() == [0.0, 0.5, 1.0, 0.0]
    assert M.dead_fraction(codes) == 0.5
    assert M.dense_fraction(codes, threshold=0.6) == 0.25


def test_leading_dims_are_rows(x):
    x3, xh3 = x.reshape(10, 20, 16), (x + 0.3 * torch.randn_like(x)).reshape(10, 20, 16)
    assert M.fvu(x3, xh3) == pytest.approx(M.fvu(x3.reshape(-1, 16), xh3.reshape(-1, 16)), rel=1e-12)


def test_streaming_equals_one_shot(x):
    g = torch.Generator().manual_seed(1)
    xh = x + 0.5 * torch.randn(x.shape, generator=g)
    codes = torch.relu(torch.randn(200, 32, generator=g) - 1.0)
    stats = M.ReconstructionStats()
    for lo in range(0, 200, 37):  # uneven batches on purpose
        stats.update(x[lo : lo + 37], xh[lo : lo + 37], codes[lo : lo + 37])
    r = stats.results()
    assert r["rows"] == 200
    assert r["fvu"] == pytest.approx(M.fvu(x, xh), rel=1e-10)
    assert r["mse"] == pytest.approx(M.mse(x, xh), rel=1e-10)
    assert r["cosine"] == pytest.approx(M.cosine(x, xh), rel=1e-10)
    assert r["norm_ratio"] == pytest.approx(M.norm_ratio(x, xh), rel=1e-10)
    assert r["l0"] == pytest.approx(M.l0(codes))
    assert r["l1"] == pytest.approx(M.l1(codes))
    assert r["dead_fraction"] == M.dead_fraction(codes)
    assert r["dense_fraction"] == M.dense_fraction(codes)


def test_results_before_update_raises():
    with pytest.raises(ValueError):
        M.ReconstructionStats().results()


def test_label_entropy_by_hand():
    t = torch.tensor([0, 0, 1, 2, -100])  # the ignored entry does not count
    q = [0.5, 0.25, 0.25]
    assert M.label_entropy(t) == pytest.approx(-sum(p * math.log(p) for p in q))
    assert M.label_entropy(torch.zeros(7, dtype=torch.long)) == 0.0


def test_cross_entropy_kl_and_loss_recovered():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    t = torch.tensor([0, 1])
    expect = math.log(2) + (math.log(1 + math.exp(2)) - 0.0)
    assert M.cross_entropy_sum(logits, t) == pytest.approx(expect)
    lp = torch.log_softmax(logits, -1)
    assert M.kl_sum(lp, lp) == pytest.approx(0.0, abs=1e-12)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    assert M.kl_sum(p.log()[None], q.log()[None]) == pytest.approx(float((p * (p / q).log()).sum()))
    assert M.loss_recovered(clean=2.0, ablated=5.0, spliced=2.0).value == 1.0
    assert M.loss_recovered(clean=2.0, ablated=5.0, spliced=5.0).value == 0.0
    assert M.loss_recovered(clean=2.0, ablated=5.0, spliced=3.5).value == 0.5
    assert math.isnan(M.loss_recovered(clean=2.0, ablated=2.0, spliced=2.0).value)


def test_clustered_stderr_known_values():
    v = torch.tensor([1.0, 2.0, 4.0, 7.0])
    ones = torch.ones(4)
    # One prediction per cluster: the usual standard error of the mean.
    assert M.clustered_stderr(v, ones) == pytest.approx(float(v.std() / 2.0))
    # Clusters whose per-prediction losses are all equal to the mean have no error.
    assert M.clustered_stderr(torch.tensor([2.0, 6.0]), torch.tensor([1.0, 3.0])) == 0.0
    assert math.isnan(M.clustered_stderr(torch.tensor([1.0]), torch.tensor([1.0])))

"""Known answers for every detector on a tiny fixed model with Gaussian inputs:
AUROC ≈ 0.5 when the "anomalies" are fresh draws from the trusted distribution, ≈ 1 on a trivially
separable shift (6σ along one input direction). Plus the metric against scikit-learn and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mechscope.anomaly import REGISTRY, make_detector
from mechscope.anomaly.metrics import auroc, separation
from mechscope.errors import UsageError

D, N_TRUSTED, N_TEST = 8, 600, 300
# Small training budgets: the known answers do not need converged SAEs or students.
FAST = {"sae": {"steps": 150}, "distill": {"steps": 150}}


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    return model.eval()


def _draw(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    x[:, 0] += shift
    return x


def _auroc_of(name: str, anomalous: torch.Tensor, probe_anomalous: torch.Tensor) -> float:
    det = make_detector(name, **FAST.get(name, {}))
    det.fit(_model(), _draw(N_TRUSTED, 1), ["0", "1"], anomalous=probe_anomalous if det.supervised else None)
    clean = _draw(N_TEST, 2)
    s = det.score(torch.cat([clean, anomalous])).numpy()
    assert s.shape == (2 * N_TEST,) and np.isfinite(s).all()
    return auroc(s[:N_TEST], s[N_TEST:])


@pytest.mark.slow  # fits every detector (the distilled one trains a model)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fresh_draws_are_not_anomalous(name, one_thread):
    # Null: AUROC of two equal distributions has sd ≈ sqrt((n0+n1+1)/(12 n0 n1)) ≈ 0.024; 0.5 ± 0.1 is > 4 sd.
    # The probe is fitted on labelled "anomalies" that are also fresh draws: nothing to learn.
    a = _auroc_of(name, _draw(N_TEST, 3), _draw(200, 4))
    assert 0.4 < a < 0.6, f"{name}: AUROC {a:.3f} on fresh trusted draws"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_separable_shift_is_found(name, one_thread):
    a = _auroc_of(name, _draw(N_TEST, 3, shift=6.0), _draw(200, 4, shift=6.0))
    assert a > 0.95, f"{name}: AUROC {a:.3f} on a 6-sigma shift"


def test_auroc_matches_sklearn_and_ties_count_half():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    c, a = rng.normal(size=50).round(1), rng.normal(0.5, size=40).round(1)
    assert auroc(c, a) == pytest.approx(roc_auc_score(np.r_[np.zeros(50), np.ones(40)], np.r_[c, a]))
    assert auroc(np.zeros(3), np.zeros(4)) == 0.5
    assert auroc(np.zeros(3), np.ones(4)) == 1.0


def test_bootstrap_interval_covers_and_narrows():
    rng = np.random.default_rng(1)
    small = separation(rng.normal(size=50), rng.normal(1, size=50), n_boot=200)
    big = separation(rng.normal(size=1000), rng.normal(1, size=1000), n_boot=200)
    true = 0.7602  # Φ(1/√2), the AUROC of N(1,1) against N(0,1)
    for r in (small, big):
        assert r.auroc_ci[0] <= r.auroc <= r.auroc_ci[1]
    assert big.auroc_ci[0] < true < big.auroc_ci[1]
    assert big.auroc_ci[1] - big.auroc_ci[0] < (small.auroc_ci[1] - small.auroc_ci[0]) / 2.5


def test_mahalanobis_is_the_analytic_distance():
    # Trusted rows with a known covariance: with many rows d² → (x − μ)ᵀ Σ⁻¹ (x − μ).
    cov = torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    x = (
        torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        @ torch.linalg.cholesky(cov).T
    )
    det = make_detector("mahalanobis", shrinkage="none").fit_activations({"s": x})
    q = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    want = (q @ torch.linalg.inv(cov) * q).sum(1)
    got = det.score_activations({"s": q})["s"]
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


def test_too_few_rows_without_shrinkage_names_the_fix():
    x = torch.randn(30, 50, dtype=torch.float64)
    with pytest.raises(UsageError, match="use `shrinkage`='ledoit-wolf' or give more trusted inputs$") as err:
        make_detector("mahalanobis", shrinkage="none").fit_activations({"s": x})
    assert "--" not in str(err.value)
    make_detector("mahalanobis").fit_activations({"s": x})  # Ledoit–Wolf shrinkage copes


def test_empty_trusted_set_is_refused():
    with pytest.raises(UsageError, match="empty"):
        make_detector("knn").fit(_model(), torch.empty(0, D), ["0"])
    with pytest.raises(UsageError, match="empty"):
        make_detector("knn").fit(_model(), [], ["0"])


def test_sites_of_another_model_are_refused():
    model, other = _model(), _model()
    with pytest.raises(UsageError, match="different models"):
        make_detector("mahalanobis").fit(model, _draw(100, 1), [model[0], other[1]])
    det = make_detector("mahalanobis").fit(model, _draw(100, 1), [model[0]])
    with pytest.raises(UsageError, match="different model"):
        det.score_activations({"0": torch.randn(5, D + 1)})


def test_detect_needs_a_task_and_a_detector_or_all():
    from mechscope.cli.detect import DetectConfig

    with pytest.raises(UsageError, match="give --benchmark and --detector"):
        DetectConfig(detector="knn")
    assert DetectConfig(all=True).all


def test_unknown_detector_and_setting():
    with pytest.raises(UsageError, match="choose one of"):
        make_detector("nope")
    with pytest.raises(UsageError, match="no setting"):
        make_detector("knn", shrinkage="none")


def test_aggregation_is_mean_or_max_of_calibrated_z():
    g = torch.Generator().manual_seed(5)
    acts = {
        "a": torch.randn(500, 3, generator=g, dtype=torch.float64),
        "b": 3 * torch.randn(500, 3, generator=g, dtype=torch.float64),
    }
    q = {
        "a": torch.randn(7, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(7, 3, generator=g, dtype=torch.float64),
    }
    for how in ("mean", "max"):
        det = make_detector("mahalanobis", aggregate=how).fit_activations(acts)
        raw = det.score_activations(q)
        # calibration: the last 20% of the trusted rows, scored as new rows
        cal = det.score_activations({s: a[400:] for s, a in acts.items()})
        z = torch.stack([(raw[s] - cal[s].mean()) / cal[s].std() for s in ("a", "b")])
        want = z.mean(0) if how == "mean" else z.max(0).values
        torch.testing.assert_close(det.aggregate(raw), want)


def test_trusted_batches_equal_one_tensor():
    x = _draw(400, 1)
    one = make_detector("mahalanobis").fit(_model(), x, ["0", "1"]).score(_draw(20, 2))
    many = make_detector("mahalanobis").fit(_model(), iter(x.split(64)), ["0", "1"]).score(_draw(20, 2))
    torch.testing.assert_close(one, many)


def test_labels_only_for_the_supervised_probe():
    acts = {"s": torch.randn(100, 3, dtype=torch.float64)}
    with pytest.raises(UsageError, match="unsupervised"):
        make_detector("knn").fit_activations(acts, anomalous=acts)
    with pytest.raises(UsageError, match="supervised"):
        make_detector("probe").fit_activations(acts)

"""Known-answer tests of mechscope.evals.distributions: samples from each family are fit best by
that family, and the moments equal scipy's bias-corrected estimators."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mechscope.evals import distributions as D

SAMPLERS = {
    "gaussian": lambda r, n: r.normal(1.0, 2.0, n),
    "logistic": lambda r, n: r.logistic(0.0, 1.5, n),
    "laplace": lambda r, n: r.laplace(-1.0, 0.7, n),
    "student_t": lambda r, n: 2.0 * r.standard_t(3, n),
}


@pytest.mark.parametrize("family", list(SAMPLERS))
def test_best_fit_picks_the_true_family(family):
    v = SAMPLERS[family](np.random.default_rng(7), 3000)
    s = D.describe(v, "test", 0)
    assert s.best == family, {f.family: round(f.bic, 1) for f in s.fits}
    assert {f.family for f in s.fits} == set(D.FAMILIES)
    # The log-likelihood stored is that of the stored parameters.
    f = s.fit(family)
    assert f.loglik == pytest.approx(float(D.FAMILIES[family].logpdf(v, *f.params).sum()))


def test_moments_match_scipy():
    v = np.random.default_rng(0).gamma(2.0, 1.5, 500)  # skewed and heavy-ish tailed
    m = D.moments(v)
    assert m["mean"] == pytest.approx(np.mean(v))
    assert m["var"] == pytest.approx(np.var(v, ddof=1))
    assert m["skew"] == pytest.approx(stats.skew(v, bias=False))
    assert m["excess_kurtosis"] == pytest.approx(stats.kurtosis(v, fisher=True, bias=False))
    n = v.size
    expect_b = (m["skew"] ** 2 + 1) / (m["excess_kurtosis"] + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    assert m["bimodality"] == pytest.approx(expect_b)


def test_bimodality_separates_one_mode_from_two():
    r = np.random.default_rng(1)
    two = np.concatenate([r.normal(-3, 1, 2000), r.normal(3, 1, 2000)])
    assert D.moments(two)["bimodality"] > 5 / 9 > D.moments(r.normal(0, 1, 4000))["bimodality"]


def test_constant_direction_is_named_not_fit():
    s = D.describe(np.full(100, 2.5), "basis", 3)
    assert s.best == "constant" and s.fits == () and s.var == 0.0


@pytest.mark.slow  # trains an SAE
def test_analyse_directions_kinds_and_latent_choice():
    g = torch.Generator().manual_seed(0)
    d, n = 12, 20
    W_dec = torch.randn(n, d, generator=g)
    # Activations: heavy-tailed sparse codes times the dictionary, plus a dead neuron (column 0 == 0).
    codes = torch.relu(torch.randn(1500, n, generator=g) - 1.5) * 3
    x = codes @ W_dec
    x[:, 0] = 0.0
    cfg = D.DistributionConfig(n_random=3, n_basis=12, n_latents=2, max_samples=1000)
    rep = D.analyse_directions(x, cfg, W_dec=W_dec, latent_ids=[4, 9])
    kinds = [s.kind for s in rep.stats]
    assert kinds.count("random") == 3 and kinds.count("basis") == 12 and kinds.count("latent") == 2
    assert [s.index for s in rep.stats if s.kind == "latent"] == [4, 9]
    assert all(s.n == 1000 for s in rep.stats)
    assert next(s for s in rep.stats if s.kind == "basis" and s.index == 0).best == "constant"
    # The projection onto a decoder row is ⟨x, W_dec[i]/‖W_dec[i]‖⟩.
    u = W_dec[4].double() / W_dec[4].double().norm()
    lat4 = rep.values[kinds.index("latent")]
    assert float(np.mean(lat4)) == pytest.approx(rep.stats[kinds.index("latent")].mean)
    assert np.std(lat4) > 0 and math.isfinite(float((x.double() @ u).mean()))
    assert set(rep.best_counts()) == {"random", "basis", "latent"}
    assert len(rep.summary_lines()) == 3
    assert rep.to_dict()["directions"][0]["fits"]["gaussian"]["params"]


@pytest.mark.slow  # trains an SAE and draws the plot
def test_encoder_directions_and_plot():
    g = torch.Generator().manual_seed(1)
    W_enc = torch.randn(6, 10, generator=g)
    x = torch.randn(400, 6, generator=g)
    cfg = D.DistributionConfig(n_random=2, n_basis=2, n_latents=3, latent_direction="encoder", max_samples=400)
    rep = D.analyse_directions(x, cfg, W_enc=W_enc)
    lat = [(s, v) for s, v in zip(rep.stats, rep.values) if s.kind == "latent"]
    assert len(lat) == 3
    s, v = lat[0]
    u = W_enc[:, s.index].double() / W_enc[:, s.index].double().norm()
    np.testing.assert_allclose(v, (x.double() @ u).numpy(), rtol=1e-10)
    fig = D.plot_fits(rep, per_kind=3)
    assert len(fig.axes) == 9

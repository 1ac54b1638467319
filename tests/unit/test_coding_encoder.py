"""Encoder-based coders, the registry and the support measures, with known answers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
import torch
from scipy.optimize import nnls

from mechscope.coding import (
    CODERS,
    CodingConfig,
    Dictionary,
    SparseCodes,
    encoder_code,
    encoder_nnls,
    fit_posthoc_scale,
    make_coder,
    top_k_code,
)
from mechscope.coding.measures import span_cosines, support_jaccard

N, D_WIDTH = 256, 32


def dictionary(seed: int = 0) -> torch.Tensor:
    W = torch.randn(N, D_WIDTH, generator=torch.Generator().manual_seed(seed))
    return W / W.norm(dim=1, keepdim=True)


def true_codes(B: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(B, N)
    idx = torch.rand(B, N, generator=g).argsort(dim=1)[:, :k]
    return codes.scatter_(1, idx, 0.5 + torch.rand(B, k, generator=g))


def relu_encoder(W: torch.Tensor, b_dec: torch.Tensor, seed: int = 2):
    """A crude SAE-like encoder: ReLU of a perturbed transpose of the decoder, shrunk by a threshold."""
    noise = 0.3 * torch.randn(W.shape, generator=torch.Generator().manual_seed(seed))
    W_enc = (W + noise).T
    return lambda x: torch.relu((x - b_dec) @ W_enc - 0.2)


def test_top_k_code_keeps_the_largest_and_leaves_empty_slots_zero():
    codes = torch.tensor([[0.0, 3.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.5, 0.0, 0.0]])
    code = top_k_code(codes, 3)
    assert code.values.tolist() == [[3.0, 2.0, 1.0], [0.5, 0.0, 0.0]]
    assert code.indices[0].tolist() == [1, 4, 3] and code.indices[1, 0] == 2
    assert torch.equal(code.dense(5)[1], codes[1])


def test_nnls_refit_never_increases_error_and_keeps_the_support():
    W, b = dictionary(), 0.1 * torch.randn(D_WIDTH, generator=torch.Generator().manual_seed(3))
    dic = Dictionary(W, b)
    x = true_codes(300, 6) @ W + b
    encode = relu_encoder(W, b)
    cfg = CodingConfig(k=8)
    before = encoder_code(x, encode, 8)
    after = encoder_nnls(x, dic, encode, cfg)
    err_before = (x - before.decode(dic)).norm(dim=1)
    err_after = (x - after.decode(dic)).norm(dim=1)
    assert (err_after <= err_before + 1e-5).all()
    assert err_after.mean() < 0.7 * err_before.mean()  # the refit undoes real shrinkage here
    assert (after.values >= 0).all()
    assert (after.support(N) <= before.support(N)).all()  # never adds a latent


def test_nnls_refit_reaches_the_exact_nnls_solution():
    W = dictionary(seed=4)
    x = true_codes(20, 5, seed=5) @ W + 0.05 * torch.randn(20, D_WIDTH, generator=torch.Generator().manual_seed(6))
    encode = relu_encoder(W, torch.zeros(D_WIDTH), seed=7)
    code = encoder_nnls(x, W, encode, CodingConfig(k=6, nnls_max_iter=50))
    support = encoder_code(x, encode, 6)
    for row in range(20):
        used = support.values[row] != 0
        atoms = W[support.indices[row][used]].double().numpy()
        exact, _ = nnls(atoms.T, x[row].double().numpy())
        assert torch.allclose(code.values[row][used].double(), torch.from_numpy(exact), atol=1e-4)


def test_posthoc_scale_recovers_a_known_shrinkage():
    W = dictionary(seed=8)
    codes = true_codes(500, 6, seed=9)
    x = codes @ W
    shrunk = lambda rows: 0.7 * codes[: rows.shape[0]]  # noqa: E731  (an oracle encoder that shrinks by 0.7)
    scale = fit_posthoc_scale(x, W, shrunk, CodingConfig(k=6))
    assert scale.ndim == 0 and abs(float(scale) - 1 / 0.7) < 1e-4
    coder = make_coder("encoder_scaled", W, CodingConfig(k=6), encoder=shrunk, fit_rows=x)
    assert torch.allclose(coder(x).decode(W), x, atol=1e-4)


def test_per_latent_posthoc_scale_recovers_per_latent_shrinkage():
    W = dictionary(seed=10)
    codes = true_codes(2000, 6, seed=11)
    x = codes @ W
    shrink = 0.5 + 0.4 * torch.rand(N, generator=torch.Generator().manual_seed(12))
    encode = lambda rows: codes[: rows.shape[0]] * shrink  # noqa: E731
    scales = fit_posthoc_scale(x, W, encode, CodingConfig(k=6, per_latent_scale=True, scale_ridge=1e-9))
    assert scales.shape == (N,)
    assert torch.allclose(scales * shrink, torch.ones(N), atol=1e-3)


def test_registry_builds_every_coder_and_rejects_bad_requests():
    W = dictionary(seed=13)
    x = true_codes(32, 4, seed=14) @ W
    encode = relu_encoder(W, torch.zeros(D_WIDTH))
    for name in CODERS:
        code = make_coder(name, W, CodingConfig(k=5), encoder=encode, fit_rows=x)(x)
        assert isinstance(code, SparseCodes) and code.values.shape == (32, 5), name
    with pytest.raises(KeyError):
        make_coder("lasso", W)
    with pytest.raises(ValueError, match="encoder"):
        make_coder("encoder_nnls", W)
    with pytest.raises(ValueError, match="fit_rows"):
        make_coder("encoder_scaled", W, encoder=encode)


def test_support_jaccard_known_values():
    a = SparseCodes(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([[0, 1, 0], [0, 0, 0]]))
    b = SparseCodes(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.tensor([[1, 2, 3], [0, 0, 0]]))
    assert support_jaccard(a, b, 4).tolist() == [pytest.approx(1 / 4), 1.0]


def test_span_cosine_known_geometry():
    # e0, then (e0+e1)/√2 (cos 1/√2 with span{e0}), then e2 (orthogonal), then e0+e1+e2 (inside the span).
    W = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
    code = SparseCodes(torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]]), torch.tensor([[0, 1, 4, 2, 3]]))
    cos, valid = span_cosines(code, W)
    # The zero slot (latent 4) is skipped: positions are latents 0, 1, 2, 3, then an empty one.
    assert valid.tolist() == [[False, True, True, True, False]]
    assert cos[0, 1:4].tolist() == pytest.approx([2**-0.5, 0.0, 1.0], abs=1e-6)

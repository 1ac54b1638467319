"""Pursuit coders: known answers (orthonormal dictionaries, least-squares optimality, true supports)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
import torch

from mechscope.coding import (
    CodingConfig,
    Dictionary,
    SparseCodes,
    gradient_pursuit,
    make_coder,
    matching_pursuit,
    orthogonal_matching_pursuit,
)
from mechscope.coding.reference import reference_gp, reference_omp

PURSUITS = {"mp": matching_pursuit, "omp": orthogonal_matching_pursuit, "gp": gradient_pursuit}


def unit_dictionary(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n, d, generator=g)
    return D / D.norm(dim=1, keepdim=True)


def orthonormal_dictionary(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g)).Q.T.contiguous()


def sparse_rows(B: int, n: int, k: int, seed: int = 0, signed: bool = False) -> SparseCodes:
    """Exactly k distinct active latents per row, magnitudes in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(B, n, generator=g).argsort(dim=1)[:, :k]
    vals = 0.5 + torch.rand(B, k, generator=g)
    if signed:
        vals = vals * (torch.randint(0, 2, (B, k), generator=g) * 2 - 1)
    return SparseCodes(vals, idx)


def test_sparse_code_dense_and_decode():
    D = torch.arange(12.0).reshape(4, 3)
    b = torch.tensor([1.0, 0.0, -1.0])
    code = SparseCodes(torch.tensor([[2.0, 0.0], [1.0, -1.0]]), torch.tensor([[1, 0], [3, 2]]))
    dense = code.dense(4)
    assert torch.equal(dense, torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.0]]))
    assert torch.allclose(code.decode(Dictionary(D, b)), dense @ D + b)
    assert code.support(4).sum(1).tolist() == [1, 2]


@pytest.mark.parametrize("name", ["mp", "omp", "gp"])
@pytest.mark.parametrize("signed", [False, True])
def test_orthonormal_dictionary_is_recovered_exactly(name, signed):
    # With orthonormal rows every pursuit finds the true code in exactly k steps.
    d, k = 32, 5
    D = orthonormal_dictionary(d)
    truth = sparse_rows(64, d, k, signed=signed)
    x = truth.decode(D)
    code = PURSUITS[name](x, D, CodingConfig(k=k, nonnegative=not signed))
    assert torch.allclose(code.dense(d), truth.dense(d), atol=1e-5)


@pytest.mark.parametrize("name", ["omp", "gp"])
def test_true_supports_recovered_from_overcomplete_dictionary(name):
    # n=512 unit-norm random atoms in d=64, exactly k active with non-negative magnitudes, 1% noise.
    n, d, k, B = 512, 64, 5, 1000
    D = unit_dictionary(n, d)
    truth = sparse_rows(B, n, k, seed=1)
    x = truth.decode(D)
    x = x + 0.01 * x.norm(dim=1, keepdim=True) * torch.randn(B, d, generator=torch.Generator().manual_seed(2)) / d**0.5
    code = PURSUITS[name](x, D, CodingConfig(k=k))
    exact = (code.support(n) == truth.support(n)).all(dim=1).float().mean().item()
    assert exact >= 0.95, f"{name} recovered the true support in only {exact:.1%} of rows"


def test_omp_residual_is_orthogonal_to_chosen_atoms_and_matches_lstsq():
    # Non-unit rows, a decoder bias and dense (not sparse) inputs: OMP must still be least squares on its support.
    g = torch.Generator().manual_seed(3)
    n, d, k, B = 256, 48, 12, 64
    D = torch.randn(n, d, generator=g) * (0.5 + torch.rand(n, 1, generator=g))
    b = torch.randn(d, generator=g)
    x = torch.randn(B, d, generator=g)
    dic = Dictionary(D, b)
    code = orthogonal_matching_pursuit(x, dic, CodingConfig(k=k, nonnegative=False))
    assert (code.values != 0).all()
    r = (x - code.decode(dic)).double()
    atoms = D[code.indices].double()  # [B, k, d]
    inner = torch.einsum("bkd,bd->bk", atoms, r)
    assert inner.abs().max() < 1e-4 * r.norm(dim=1).max() * D.norm(dim=1).max()
    for row in range(4):
        ls = torch.linalg.lstsq(atoms[row].T, (x[row] - b).double()[:, None]).solution.squeeze(1)
        assert torch.allclose(code.values[row].double(), ls, atol=1e-4)


@pytest.mark.parametrize("name", ["omp", "signed-omp", "gp"])
def test_batched_pursuits_match_the_per_row_reference(name):
    # The reference states the update one row at a time, in float64; the batched coder must agree.
    D = unit_dictionary(128, 24, seed=4)
    x = torch.randn(16, 24, generator=torch.Generator().manual_seed(5))
    signed = name == "signed-omp"
    code = PURSUITS[name.removeprefix("signed-")](x, D, CodingConfig(k=8, nonnegative=not signed))
    if name == "gp":
        reference = reference_gp(x.double(), D.double(), 8)
    else:
        reference = reference_omp(x.double(), D.double(), 8, nonnegative=not signed)
    if not signed:
        assert (code.values >= 0).all()
    assert torch.allclose(code.dense(128).double(), reference, atol=1e-4)


def test_nonnegative_omp_codes_are_never_negative_where_signed_omp_goes_negative():
    # Non-negative data on a random overcomplete dictionary: signed least squares goes negative on
    # some slots (the defect of issue 8), the non-negative refit never does and fits no worse than clipping.
    n, d, k, B = 256, 32, 24, 200
    D = unit_dictionary(n, d, seed=21)
    x = torch.rand(B, d, generator=torch.Generator().manual_seed(22))
    nn_code = orthogonal_matching_pursuit(x, D, CodingConfig(k=k))
    assert (nn_code.values >= 0).all()
    signed = orthogonal_matching_pursuit(x, D, CodingConfig(k=k, nonnegative=False))
    assert (signed.values < 0).any()  # the data do exercise the constraint
    clipped = SparseCodes(signed.values.clamp_min(0), signed.indices)
    err_nn = (x - nn_code.decode(D)).norm(dim=1)
    err_clip = (x - clipped.decode(D)).norm(dim=1)
    assert err_nn.mean() < err_clip.mean()


def test_nonnegative_omp_recovers_true_supports_and_values():
    # Known answer: x = Σ a_j D_j with k=4 non-negative a_j on a well-conditioned overcomplete
    # dictionary (n=96 unit rows in d=48, no noise): NN-OMP finds every support and value exactly.
    n, d, k, B = 96, 48, 4, 300
    D = unit_dictionary(n, d, seed=23)
    truth = sparse_rows(B, n, k, seed=24)
    x = truth.decode(D)
    code = orthogonal_matching_pursuit(x, D, CodingConfig(k=k))
    assert (code.values >= 0).all()
    exact = (code.support(n) == truth.support(n)).all(dim=1).float().mean().item()
    assert exact >= 0.99, exact
    ok = (code.support(n) == truth.support(n)).all(dim=1)
    assert torch.allclose(code.dense(n)[ok], truth.dense(n)[ok], atol=1e-4)


@pytest.mark.parametrize("name", ["mp", "omp", "gp"])
def test_tolerance_stops_each_row_at_its_own_sparsity(name):
    # Orthonormal dictionary, row i has 1 + i % 8 latents: with a tolerance each row stops right there.
    d = 32
    D = orthonormal_dictionary(d, seed=6)
    g = torch.Generator().manual_seed(7)
    per_row = 1 + torch.arange(80) % 8
    dense = torch.zeros(80, d)
    for row, s in enumerate(per_row.tolist()):
        dense[row, torch.randperm(d, generator=g)[:s]] = 0.5 + torch.rand(s, generator=g)
    x = dense @ D
    code = PURSUITS[name](x, D, CodingConfig(k=16, tol=1e-3))
    assert torch.equal((code.values != 0).sum(1), per_row)
    assert torch.allclose(code.dense(d), dense, atol=1e-5)


@pytest.mark.parametrize("name", ["mp", "omp", "gp"])
def test_tolerance_bounds_the_relative_residual(name):
    n, d = 256, 32
    D = unit_dictionary(n, d, seed=8)
    x = torch.randn(200, d, generator=torch.Generator().manual_seed(9)).abs() @ D[:d]  # positive mixtures
    tol, k = 0.3, 24
    code = PURSUITS[name](x, D, CodingConfig(k=k, tol=tol))
    used = (code.values != 0).sum(1)
    rel = (x - code.decode(D)).norm(dim=1) / x.norm(dim=1)
    stopped_early = used < k
    assert stopped_early.float().mean() > 0.5  # the tolerance did something
    assert (rel[stopped_early] <= tol + 1e-5).all()
    # Without a tolerance every row takes more latents than with it.
    full = PURSUITS[name](x, D, CodingConfig(k=k))
    assert ((full.values != 0).sum(1) >= used).all()


def test_decoder_bias_is_subtracted_first():
    D = unit_dictionary(64, 16, seed=10)
    b = torch.randn(16, generator=torch.Generator().manual_seed(11))
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(12))
    for name, fn in PURSUITS.items():
        with_bias = fn(x + b, Dictionary(D, b), CodingConfig(k=6, nonnegative=False))
        without = fn(x, D, CodingConfig(k=6, nonnegative=False))
        assert torch.allclose(with_bias.dense(64), without.dense(64), atol=1e-4), name


def test_matching_pursuit_gram_and_matmul_paths_agree():
    D = unit_dictionary(96, 12, seed=13)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(14))
    cfg = CodingConfig(k=10, nonnegative=False)
    with_gram = matching_pursuit(x, D, cfg)
    without = matching_pursuit(x, D, CodingConfig(k=10, nonnegative=False, gram_max_latents=0))
    assert torch.allclose(with_gram.dense(96), without.dense(96), atol=1e-4)
    # Each latent sits in one slot, and a coherent dictionary makes MP re-choose some of them.
    assert ((with_gram.values != 0).sum(1) <= 10).all()
    assert torch.allclose(with_gram.decode(D), without.decode(D), atol=1e-4)


@pytest.mark.parametrize("name", ["mp", "omp", "gp"])
def test_non_negative_codes_and_sae_like_objects(name):
    class TinySAE(torch.nn.Module):  # what mechscope.sae exposes: W_dec [n, d], b_dec [d] parameters
        def __init__(self):
            super().__init__()
            self.W_dec = torch.nn.Parameter(unit_dictionary(128, 16, seed=15))
            self.b_dec = torch.nn.Parameter(torch.zeros(16))

    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(16))
    code = make_coder(name, TinySAE(), CodingConfig(k=8))(x)
    assert code.values.shape == code.indices.shape == (40, 8)
    assert not code.values.requires_grad
    assert (code.values >= 0).all()
    err = (x - code.decode(TinySAE())).norm(dim=1)
    assert (err <= x.norm(dim=1) + 1e-5).all()


@pytest.mark.parametrize("name", ["mp", "omp", "gp"])
def test_a_row_no_latent_correlates_positively_with_gets_an_empty_code(name):
    # Every row of D has a positive first coordinate and x points along −e0 plus a little of e1:
    # every correlation is negative, so a non-negative code has nothing to choose.
    D = unit_dictionary(64, 8, seed=17)
    D[:, 0] = D[:, 0].abs() + 0.5
    x = torch.zeros(3, 8)
    x[:, 0], x[:, 1] = -1.0, torch.tensor([0.0, 0.1, -0.1])
    code = PURSUITS[name](x, D, CodingConfig(k=4))
    assert (code.values == 0).all()
    signed = PURSUITS[name](x, D, CodingConfig(k=4, nonnegative=False))
    assert (signed.values != 0).any(dim=1).all()

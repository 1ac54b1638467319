"""BatchTopK's sparse training path against the dense formula: same codes, loss and every gradient.

The dense reference is written here from the docstring's formulas (z = ReLU((x − b_dec) W_enc + b_enc),
keep the batch's B·k largest, codes = z·keep, x̂ = codes W_dec + b_dec), in float64 so that agreement
is to rounding, on batches whose rows keep different numbers of latents (the padded case).
"""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import BatchTopKConfig, BatchTopKSAE
from mechscope.sae.batchtopk import batch_cut, batch_topk_select, padded_codes

D, N = 10, 48
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _sae(k=3, seed=0, **kw) -> BatchTopKSAE:
    g = torch.Generator().manual_seed(seed)
    sae = BatchTopKSAE(BatchTopKConfig(d_in=D, latents=N, k=k, **kw), generator=g).double()
    with torch.no_grad():  # off the tied, zero-bias init so every term is exercised
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return sae


def dense_codes(sae: BatchTopKSAE, x: torch.Tensor) -> torch.Tensor:
    """codes = z·1[z ≥ c, z > 0] with c the (B·k)-th largest z; differentiable through z (selection fixed)."""
    z = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    cut = z.detach().reshape(-1).topk(sae.cfg.k * x.shape[0]).values.min()
    return z * ((z >= cut) & (z > 0))


def dense_auxk(sae: BatchTopKSAE, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """mean_b ‖e_b − ê_b‖², e = x − x̂ fixed, ê = the k_aux largest dead pre-activations (ReLU'd) decoded, no bias."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    _, i = pre.detach().masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
    e_hat = torch.zeros_like(pre).scatter(1, i, pre.gather(1, i).relu()) @ sae.W_dec
    return (e_hat - (x - x_hat).detach()).pow(2).sum(-1).mean()


def _check(sae: BatchTopKSAE, x: torch.Tensor, dead: torch.Tensor | None = None, k_aux: int = 4) -> torch.Tensor:
    params = [getattr(sae, p) for p in PARAMS]
    out = sae.train()(x, dead_mask=dead)
    codes = dense_codes(sae, x)
    x_hat = codes @ sae.W_dec + sae.b_dec
    loss = (x - x_hat).pow(2).sum(-1).mean()
    if dead is not None:
        loss = loss + sae.cfg.auxk_coef * dense_auxk(sae, x, x_hat, dead, k_aux)
    assert torch.equal(out.codes.dense(N) != 0, codes != 0)
    assert torch.allclose(out.codes.dense(N), codes.detach(), atol=1e-12)
    assert torch.allclose(out.x_hat, x_hat, atol=1e-12)
    assert torch.allclose(out.loss, loss, atol=1e-12)
    for name, a, b in zip(PARAMS, torch.autograd.grad(out.loss, params), torch.autograd.grad(loss, params)):
        assert torch.allclose(a, b, atol=1e-10), name
    return codes


def test_uneven_rows_padded_give_the_dense_loss_and_gradients():
    sae = _sae(k=3)
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    codes = _check(sae, x)
    counts = (codes != 0).sum(1)
    assert int(counts.sum()) == 24 * 3 and int(counts.min()) < int(counts.max())  # uneven rows
    out = sae(x)
    assert out.codes.values.shape[1] == int(counts.max())  # returned codes padded to the largest count …
    assert int((out.codes.values == 0).sum()) == out.codes.values.numel() - 24 * 3  # … with zero acts


def test_a_row_keeping_many_more_than_k_matches_too():
    sae = _sae(k=2)
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[5] *= 40.0  # row 5 holds most of the batch's 32 largest entries
    codes = _check(sae, x)
    assert int((codes[5] != 0).sum()) > 8


def test_fewer_positive_entries_than_b_times_k_keep_every_positive_one():
    sae = _sae(k=4)
    with torch.no_grad():
        sae.b_enc.sub_(1.5)  # most pre-activations negative: the cut falls to 0
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[-1] = sae.b_dec.detach()  # pre = b_enc < 0: the last row keeps nothing (an empty trailing bag)
    codes = _check(sae, x)
    assert not bool(codes[-1].any())
    z = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    assert 0 < int((codes != 0).sum()) == int((z > 0).sum()) < 12 * 4


def test_auxk_on_dead_latents_matches_the_dense_formula():
    sae = _sae(k=3, auxk_coef=0.5, auxk_k=4)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::3] = True
    codes = _check(sae, x, dead, k_aux=4)  # loss (with AuxK) and every gradient equal the dense formula's
    x_hat = codes @ sae.W_dec + sae.b_dec
    aux = dense_auxk(sae, x, x_hat, dead, 4)
    assert float(aux.detach()) > 1e-3  # the AuxK term is really in the compared loss, not a zero added to it
    with_aux = sae.train()(x, dead_mask=dead).loss
    without = sae.train()(x).loss
    assert torch.allclose(with_aux - without, 0.5 * aux, atol=1e-12)


@pytest.mark.parametrize("stride, slack, shift", [(32, 1.25, 0.0), (1, 1.0, 0.0), (4, 0.05, 0.0), (3, 1.25, -2.5)])
def test_batch_topk_select_keeps_exactly_the_batch_top_entries(stride, slack, shift):
    """Whatever the estimate (slack 0.05 starts far too high and must be lowered; shift −2.5 leaves fewer
    positive entries than B·k), the kept set is the dense rule's, and so are the padded codes."""
    g = torch.Generator().manual_seed(5)
    pre = torch.randn(30, 64, generator=g) + shift
    pre[3] += 3.0  # one row with many of the top entries
    pre[7] -= 9.0  # and one that keeps nothing
    rows, idx, acts = batch_topk_select(pre, 90, stride=stride, slack=slack)
    z = pre.relu()
    assert int((z > 0).sum()) < 90 if shift else True  # the case it names: every positive entry is kept
    want = z * ((z >= batch_cut(z, 90, per_row=64)) & (z > 0))
    assert torch.equal(torch.zeros_like(z).index_put_((rows, idx), acts), want)
    key = rows * 64 + idx
    assert bool((key[1:] > key[:-1]).all())  # ordered by row, then latent
    codes = padded_codes(rows, idx, acts, 30)
    assert torch.equal(codes.dense(64), want) and codes.values.shape[1] == int((want != 0).sum(1).max())
    assert torch.equal(codes.fired(64), (want != 0).any(0))  # padding (zero acts at latent 0) fires nothing

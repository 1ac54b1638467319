"""Matryoshka BatchTopK: the nested losses are what the docstring states, checked by construction."""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import MatryoshkaConfig, MatryoshkaSAE
from mechscope.sae.batchtopk import batch_cut


def _sae(d=6, n=16, k=2, **kw) -> MatryoshkaSAE:
    g = torch.Generator().manual_seed(0)
    sae = MatryoshkaSAE(MatryoshkaConfig(d_in=d, latents=n, k=k, **kw), generator=g)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(n, generator=g))
    return sae


def test_default_widths_double_and_never_fall_below_k():
    assert MatryoshkaConfig(d_in=4, latents=8192, k=32).prefix_widths() == (512, 1024, 2048, 4096, 8192)
    assert MatryoshkaConfig(d_in=4, latents=40, k=8, levels=5).prefix_widths() == (8, 10, 20, 40)
    assert MatryoshkaConfig(d_in=4, latents=64, k=4, widths=(4, 16, 64)).prefix_widths() == (4, 16, 64)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"widths": (8, 4, 64)}, "strictly increasing"),
        ({"widths": (8, 32)}, "last width must equal latents=64"),
        ({"widths": (2, 64)}, "at least k=4"),
        ({"levels": 0}, "levels must be"),
    ],
)
def test_bad_widths_are_refused_naming_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        MatryoshkaConfig(d_in=4, latents=64, k=4, **kw)


def test_prefix_losses_equal_reconstructions_from_each_prefix_alone():
    sae = _sae(widths=(4, 8, 16))
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    codes = torch.rand(10, 16, generator=torch.Generator().manual_seed(2))
    got = sae.prefix_losses(x, codes)
    want = [(x - sae.b_dec).pow(2).sum(-1).mean()]
    for w in (4, 8, 16):  # each prefix decoded on its own, not cumulatively
        want.append((x - (codes[:, :w] @ sae.W_dec[:w] + sae.b_dec)).pow(2).sum(-1).mean())
    assert torch.allclose(got, torch.stack(want), atol=1e-5)
    # By construction: codes only in the first prefix make every later prefix reconstruct alike.
    codes[:, 4:] = 0
    same = sae.prefix_losses(x, codes)
    assert torch.allclose(same[1:], same[1].expand(3), atol=1e-6) and not torch.isclose(same[0], same[1])


def test_training_loss_is_the_mean_of_the_nested_losses_and_recon_is_the_full_one():
    sae = _sae(widths=(4, 8, 16)).train()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(3))
    out = sae(x)
    z = sae.pre_acts(x).relu().detach()
    cut = batch_cut(z, 2 * 32, per_row=8)
    codes = z * ((z >= cut) & (z > 0))
    assert int((out.codes.dense(16) != 0).sum()) == 2 * 32  # BatchTopK's selection, once over the whole dictionary
    assert torch.allclose(out.codes.dense(16), codes)
    losses = sae.prefix_losses(x, codes)
    assert torch.allclose(out.loss, losses.mean(), atol=1e-5)
    assert torch.allclose(out.parts["recon"], (out.x_hat - x).pow(2).sum(-1).mean(), atol=1e-5)
    assert torch.allclose(out.parts["recon"], losses[-1], atol=1e-5)
    out.loss.backward()
    # Every prefix's loss reaches the first latents' decoder rows: they get more gradient than with one level.
    flat = _sae(widths=(16,)).train()
    flat.load_state_dict(sae.state_dict(), strict=False)
    flat.zero_grad()
    flat(x).loss.backward()
    assert not torch.allclose(sae.W_dec.grad[:4], flat.W_dec.grad[:4])


def test_one_level_is_batchtopk_with_the_bias_term_averaged_in():
    from mechscope.sae import BatchTopKConfig, BatchTopKSAE

    m = _sae(widths=(16,)).train()
    b = BatchTopKSAE(BatchTopKConfig(d_in=6, latents=16, k=2)).train()
    b.load_state_dict(m.state_dict())
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(4))
    om, ob = m(x), b(x)
    assert torch.allclose(om.codes.dense(16), ob.codes.dense(16)) and torch.allclose(om.x_hat, ob.x_hat, atol=1e-6)
    assert torch.allclose(om.loss, 0.5 * ((x - m.b_dec).pow(2).sum(-1).mean() + ob.parts["recon"]), atol=1e-5)

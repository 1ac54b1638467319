"""Matryoshka's grouped sparse decode against the dense nested losses: same loss, x̂ and every gradient.

The dense reference is :meth:`MatryoshkaSAE.prefix_losses` (one dense decode per prefix) on BatchTopK's
dense codes, in float64; cases: rows with uneven kept counts, a group where no latent fires, one level.
"""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import MatryoshkaConfig, MatryoshkaSAE
from mechscope.sae.sparse_ops import range_bags

D, N = 8, 40
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _sae(widths, k=3, seed=0) -> MatryoshkaSAE:
    g = torch.Generator().manual_seed(seed)
    sae = MatryoshkaSAE(MatryoshkaConfig(d_in=D, latents=N, k=k, widths=widths), generator=g).double()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return sae


def _dense_loss(sae: MatryoshkaSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, x̂_G, mean of the G + 1 nested losses) by the dense formulas, selection held fixed."""
    z = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    cut = z.detach().reshape(-1).topk(sae.cfg.k * x.shape[0]).values.min()
    codes = z * ((z >= cut) & (z > 0))
    return codes, codes @ sae.W_dec + sae.b_dec, sae.prefix_losses(x, codes).mean()


def _check(sae: MatryoshkaSAE, x: torch.Tensor) -> torch.Tensor:
    params = [getattr(sae, p) for p in PARAMS]
    out = sae.train()(x)
    codes, x_hat, loss = _dense_loss(sae, x)
    assert torch.allclose(out.codes.dense(N), codes.detach(), atol=1e-12)
    assert torch.allclose(out.x_hat, x_hat, atol=1e-12)
    assert torch.allclose(out.loss, loss, atol=1e-12)
    losses = sae.prefix_losses(x, codes)
    assert torch.allclose(out.parts["recon"], losses[-1]) and torch.allclose(out.parts["recon_first_prefix"], losses[1])
    for name, a, b in zip(PARAMS, torch.autograd.grad(out.loss, params), torch.autograd.grad(loss, params)):
        assert torch.allclose(a, b, atol=1e-10), name
    return codes


@pytest.mark.parametrize("widths", [(4, 10, 20, 40), (40,), (3, 40)])
def test_grouped_sparse_decode_equals_the_dense_nested_losses(widths):
    sae = _sae(widths)
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counts = (_check(sae, x) != 0).sum(1)
    assert int(counts.min()) < int(counts.max())  # uneven rows, padded


def test_a_group_where_no_latent_fires_contributes_nothing_and_still_matches():
    sae = _sae((5, 12, 25, 40))
    with torch.no_grad():
        sae.b_enc[12:25] = -50.0  # group 3 never fires: its prefix reconstructs as the one before it
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    codes = _check(sae, x)
    assert not bool(codes[:, 12:25].any()) and bool(codes[:, 25:].any())
    losses = sae.prefix_losses(x, codes)
    assert torch.isclose(losses[2], losses[3]) and not torch.isclose(losses[3], losses[4])


def test_range_bags_put_each_entry_in_its_group_and_row():
    # ragged entries by row then latent; groups [0, 4), [4, 6), [6, 10); row 2 empty
    idx, rows = torch.tensor([0, 3, 4, 9, 5, 6, 7, 8]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    bags, perm = range_bags(idx, rows, 3, torch.tensor([4, 6, 10]))
    assert idx[perm].tolist() == [0, 3, 4, 5, 9, 6, 7, 8]  # by group, then row, then latent
    assert bags.of_entry.tolist() == [0, 0, 3, 4, 6, 7, 7, 7]  # bag = group·B + row
    assert bags.offsets.tolist() == [0, 2, 2, 2, 3, 4, 4, 5, 8]  # e.g. (group 0, row 1) and every row-2 bag are empty


def test_nested_losses_backward_equals_autograd_through_the_loop():
    from mechscope.sae.matryoshka import NestedLosses

    g = torch.Generator().manual_seed(3)
    r0 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    parts = torch.randn(3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NestedLosses.apply, (r0, parts))
    losses, r = NestedLosses.apply(r0, parts)
    ref, rr = [r0.pow(2).sum(-1).mean()], r0
    for h in range(3):
        rr = rr - parts[h]
        ref.append(rr.pow(2).sum(-1).mean())
    assert torch.allclose(losses, torch.stack(ref)) and torch.allclose(r, rr)

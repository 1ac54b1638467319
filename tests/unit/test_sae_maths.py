"""Shared SAE maths against known answers: geometric median, decoder-row projection, input-scale folding,
dead-latent window."""

from __future__ import annotations

import math
import threading

import torch

from mechscope.sae.maths import (
    DeadLatentTracker,
    fold_input_scale_,
    geometric_median,
    input_scale,
    normalize_decoder_rows_,
    remove_parallel_grad_,
)


def test_geometric_median_of_collinear_points_is_the_median():
    # On a line the geometric median is the ordinary median, whatever the outliers.
    t = torch.tensor([0.0, 1.0, 2.0, 3.0, 1000.0])
    direction = torch.tensor([0.6, 0.8])
    x = t[:, None] * direction + torch.tensor([5.0, -1.0])
    m = geometric_median(x.double(), tol=1e-12, max_iter=1000)
    assert torch.allclose(m, 2.0 * direction.double() + torch.tensor([5.0, -1.0]).double(), atol=1e-4)
    assert not torch.allclose(m, x.double().mean(0), atol=1.0)  # the mean is dragged by the outlier


def test_geometric_median_minimises_the_sum_of_distances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64) ** 3
    m = geometric_median(x, tol=1e-12, max_iter=2000)
    cost = lambda c: float((x - c).norm(dim=1).sum())  # noqa: E731
    for _ in range(20):
        assert cost(m) <= cost(m + 1e-2 * torch.randn(5, generator=g, dtype=torch.float64)) + 1e-9
    # Stationarity: the unit vectors towards the points sum to about zero.
    u = (x - m) / (x - m).norm(dim=1, keepdim=True)
    assert float(u.sum(0).norm()) < 1e-3 * len(x)


def test_geometric_median_over_two_ranks_equals_the_global_one():
    # Two threads stand in for two data-parallel ranks; all_reduce sums their partial sums.
    x = torch.randn(64, 3, dtype=torch.float64) ** 3
    parts, slots, results = [x[:40], x[40:]], [None, None], [None, None]
    barrier = threading.Barrier(2)

    def reduce_for(rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        return reduce

    def run(rank: int) -> None:
        results[rank] = geometric_median(parts[rank], all_reduce=reduce_for(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    expected = geometric_median(x)
    assert torch.allclose(results[0], expected, atol=1e-9) and torch.allclose(results[1], expected, atol=1e-9)


def test_remove_parallel_grad_leaves_only_the_tangent_part():
    W = torch.nn.Parameter(torch.randn(10, 6))
    normalize_decoder_rows_(W.data)
    assert torch.allclose(W.norm(dim=1), torch.ones(10), atol=1e-6)
    W.grad = torch.randn(10, 6)
    g0 = W.grad.clone()
    remove_parallel_grad_(W)
    assert torch.allclose((W.grad * W).sum(1), torch.zeros(10), atol=1e-6)
    # What was removed is parallel to each row.
    removed = g0 - W.grad
    cos = torch.nn.functional.cosine_similarity(removed, W.detach(), dim=1).abs()
    assert torch.all(cos > 1 - 1e-5)


def test_input_scale_and_folding_give_the_same_codes_and_reconstruction():
    x = 7.0 * torch.randn(100, 16) + 3.0
    s = input_scale(x)
    assert math.isclose(float((s * x).norm(dim=1).mean()), 4.0, rel_tol=1e-5)  # √16
    W_enc, b_enc, W_dec, b_dec = torch.randn(16, 32), torch.randn(32), torch.randn(32, 16), torch.randn(16)
    codes_scaled = torch.relu((s * x - b_dec) @ W_enc + b_enc)
    x_hat_scaled = codes_scaled @ W_dec + b_dec
    fold_input_scale_(W_enc, W_dec, b_dec, s)
    codes_raw = torch.relu((x - b_dec) @ W_enc + b_enc)
    assert torch.allclose(codes_raw, codes_scaled, atol=1e-4)
    assert torch.allclose(codes_raw @ W_dec + b_dec, x_hat_scaled / s, atol=1e-4)


def test_dead_latent_tracker_counts_rows_since_last_fired():
    t = DeadLatentTracker(4, window=100)
    t.update(torch.tensor([True, False, False, False]), 60)
    assert t.dead_fraction() == 0.0
    t.update(torch.tensor([False, True, False, False]), 60)
    assert t.dead_mask().tolist() == [False, False, True, True]  # 60, 0, 120, 120 rows since firing
    t2 = DeadLatentTracker(4, window=100)
    t2.load_state_dict(t.state_dict())
    assert torch.equal(t2.dead_mask(), t.dead_mask())


def test_auxk_normalisations_and_dead_scale_follow_their_formulas():
    """Known answer: ê built densely from the dead latents' top-k_aux pre-activations, then each stated formula."""
    import pytest

    from mechscope.sae import TopKConfig
    from mechscope.sae.maths import auxk_loss
    from mechscope.sae.topk import TopKSAE

    g = torch.Generator().manual_seed(3)
    d, n, B, k_aux = 6, 20, 9, 3
    sae = TopKSAE(TopKConfig(d_in=d, latents=n, k=2), generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(n, generator=g))
        sae.b_dec.copy_(torch.randn(d, generator=g))
    x = torch.randn(B, d, generator=g)
    residual = torch.randn(B, d, generator=g)
    dead = torch.zeros(n, dtype=torch.bool)
    dead[[1, 4, 5, 9, 13]] = True  # 5 dead latents
    x_c = x - sae.b_dec.detach()
    pre = (x_c @ sae.W_enc + sae.b_enc).detach()
    masked = pre.masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(k_aux, dim=1)
    codes = torch.zeros(B, n).scatter(1, idx, vals.relu())
    err = codes @ sae.W_dec.detach() - residual
    plain = err.pow(2).sum(1).mean()
    by_residual = err.pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()

    def loss(**kw):
        return auxk_loss(sae, pre.clone(), x_c, residual, dead, k_aux, **kw).detach()

    assert torch.allclose(loss(), plain, rtol=1e-5)
    assert torch.allclose(loss(normalize="residual"), by_residual, rtol=1e-5)
    assert torch.allclose(loss(dead_scale=True), plain, rtol=1e-5)  # 5 dead ≥ k_aux = 3: scale 1
    wide = auxk_loss(sae, pre.clone(), x_c, residual, dead, 10, dead_scale=True).detach()
    full = auxk_loss(sae, pre.clone(), x_c, residual, dead, 10).detach()
    assert torch.allclose(wide, full * 0.5, rtol=1e-5)  # 5 dead of k_aux = 10: scale 1/2
    with pytest.raises(ValueError, match="auxk_normalize"):
        TopKConfig(d_in=d, latents=n, k=2, auxk_normalize="input")

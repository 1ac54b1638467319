"""The one-pass latent scan behind the report's dashboards: streamed results equal one-shot ones."""

import math

import pytest
import torch

from mechscope.evals import metrics as M
from mechscope.report.latents import N_BINS, bin_edges, build_dashboards, choose_latents, logit_effects, scan_latents


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 5, generator=g)
    x = torch.randn(301, 5, generator=g)

    def encode(v):
        pre = v @ W.T
        return torch.relu(pre - 1.0)  # [B, 12]

    def decode(c):
        return c @ W

    return x, W, encode, decode


def test_scan_streamed_equals_one_shot(data):
    x, W, encode, decode = data
    scan = scan_latents(encode, decode, (x[i : i + 64] for i in range(0, 301, 64)), top_k=4)
    codes = encode(x)
    assert scan.rows == 301
    assert torch.equal(scan.fire_counts, (codes != 0).sum(0))
    assert scan.reconstruction["fvu"] == pytest.approx(M.fvu(x, decode(codes)), rel=1e-10)
    assert scan.reconstruction["l0"] == pytest.approx(M.l0(codes))
    for i in range(12):
        col = codes[:, i]
        want_v, want_r = col.topk(4)
        fired = int((col != 0).sum())
        got_v, got_r = scan.top_values[:, i], scan.top_rows[:, i]
        m = min(4, fired)
        assert torch.allclose(got_v[:m], want_v[:m])
        assert torch.equal(got_r[:m], want_r[:m])
        assert (got_r[m:] == -1).all() and torch.isinf(got_v[m:]).all()  # never a row that did not fire
        assert int(scan.hist[i].sum()) == fired
        assert scan.act_sums[i] == pytest.approx(float(col.double().sum()))


def test_histogram_bins_are_log_spaced_and_right():
    codes = torch.zeros(4, 2)
    codes[0, 0], codes[1, 0], codes[2, 1] = 1.5, 150.0, 0.02
    scan = scan_latents(lambda v: v, None, [codes], top_k=2)
    edges = bin_edges()
    assert edges.numel() == N_BINS + 1 and edges[0] == pytest.approx(1e-6) and edges[-1] == pytest.approx(1e6)
    for lat, val in ((0, 1.5), (0, 150.0), (1, 0.02)):
        b = int(torch.searchsorted(edges, torch.tensor(val, dtype=torch.float64), right=True)) - 1
        assert scan.hist[lat, b] == 1
    assert "fvu" not in scan.reconstruction and scan.reconstruction["l0"] == 0.75


def test_choose_latents_orders_and_skips_dead():
    counts = torch.tensor([5, 0, 9, 1, 7, 0, 2])
    scan = scan_latents(lambda v: v, None, [torch.zeros(1, 7)])
    scan = type(scan)(10, counts, scan.top_values, scan.top_rows, scan.hist, scan.act_sums, scan.reconstruction)
    chosen = choose_latents(scan, n_top=2, n_random=10, seed=0, extra=[5])
    assert chosen[:2] == [2, 4]
    assert sorted(chosen[2:-1]) == [0, 3, 6] and chosen[-1] == 5  # random picks are alive; extras come last
    assert len(set(chosen)) == len(chosen)


def test_dashboards_contexts_and_logit_effects():
    tokens = torch.arange(20).reshape(2, 10)  # token id = 10·context + position
    codes = torch.zeros(18, 3)
    codes[4, 0], codes[13, 0] = 2.0, 3.0  # rows: 9 per context, positions 1..9
    codes[0, 2] = 0.5
    scan = scan_latents(lambda v: v, None, [codes[:7], codes[7:]], top_k=3)
    W_dec = torch.eye(3)
    W_U = torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # V = 4, d = 3
    ds = build_dashboards(
        scan,
        [0, 1],
        tokens,
        lambda r: (r // 9, 1 + r % 9),
        lambda t: f"<{t}>",
        W_dec,
        W_U,
        before=2,
        after=1,
        n_logit_tokens=1,
    )
    d0, d1 = ds
    assert [c.value for c in d0.contexts] == [3.0, 2.0]
    c = d0.contexts[0]
    assert (c.context, c.position, c.token, c.before, c.after) == (1, 5, "<15>", ("<13>", "<14>"), ("<16>",))
    assert d0.density == pytest.approx(2 / 18) and d0.mean_when_fired == pytest.approx(2.5) and d0.max_value == 3.0
    assert d0.logits_up == (("<0>", 1.0),) and d0.logits_down == (("<2>", -1.0),)
    assert d1.contexts == () and d1.hist_counts == () and d1.density == 0.0
    assert sum(d0.hist_counts) == 2 and len(d0.hist_edges) == len(d0.hist_counts) + 1
    uv, ui, dv, di = logit_effects(W_dec, W_U, 2)
    assert int(ui[0, 0]) == 0 and float(uv[0, 0]) == 1.0  # e0 raises token 0 most
    assert math.isclose(float(dv[0, 0]), -1.0)

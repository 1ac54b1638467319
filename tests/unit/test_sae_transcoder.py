"""Transcoders and skip-transcoders against known answers: a sparse map from input to output features
is recovered; a purely linear map is reproduced exactly by the skip-transcoder and not by the plain
one; paired rows, the input-scale fold and the files keep the map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.sae import (
    JumpReLUSkipTranscoderConfig,
    JumpReLUSkipTranscoderSAE,
    JumpReLUTranscoderConfig,
    Member,
    OptimConfig,
    SkipTranscoderConfig,
    SkipTranscoderSAE,
    TrainConfig,
    Trainer,
    TranscoderConfig,
    TranscoderSAE,
    load_sae,
    save_sae,
)
from mechscope.toy.recovery import mmcs

D_IN, D_OUT = 24, 20


def _unit_rows(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    W = torch.randn(n, d, generator=g)
    return W / W.norm(dim=1, keepdim=True)


class SparseMap:
    """F features: on a row, feature i is on with probability p at magnitude U[0.5, 1.5]; the input is
    s D_in (F unit directions in d_in, in superposition) and the target is s G (other directions in d_out)."""

    def __init__(self, F: int = 40, p: float = 0.04, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.F, self.p = F, p
        self.D_in, self.G = _unit_rows(F, D_IN, g), _unit_rows(F, D_OUT, g)

    def rows(self, B: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = (torch.rand(B, self.F, generator=g) < self.p) * (0.5 + torch.rand(B, self.F, generator=g))
        return 3.0 * s @ self.D_in, 30.0 * s @ self.G  # halves 10x apart in norm: both scales must fold out

    def batches(self, B: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        while True:
            yield torch.cat(self.rows(B, g), 1)


def _fvu(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _fit_on_map(cfg, steps: int) -> tuple[float, float, float]:
    """Train ``cfg`` on :class:`SparseMap`; (held-out FVU, mean L0, MMCS of the true output directions to the
    decoder rows) on 4,000 fresh rows."""
    data = SparseMap()
    trainer = Trainer(
        [Member(cfg, OptimConfig(lr=3e-3, warmup_steps=20))],
        TrainConfig(steps=steps, batch_size=256, progress=False, log_every=steps // 5),
    )
    trainer.fit(data.batches(256))
    tc = trainer.export(0)
    x, y = data.rows(4000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        codes, pred = tc.encode(x), tc.predict(x)
    return _fvu(pred, y), float((codes != 0).float().sum(1).mean()), mmcs(data.G, tc.W_dec.detach())


@pytest.mark.slow  # trains a transcoder to recovery
def test_transcoder_recovers_a_known_sparse_map():
    fvu, _, score = _fit_on_map(TranscoderConfig(d_in=D_IN, d_out=D_OUT, latents=64, k=4), steps=1200)
    print(f"sparse map: FVU {fvu:.4f}, output directions' mean max cosine {score:.3f}")
    assert fvu < 0.1
    assert score > 0.9


@pytest.mark.slow  # trains a transcoder to recovery
def test_jumprelu_transcoder_recovers_a_known_sparse_map():
    # the same known map, learnt with a threshold instead of a fixed k: sparse codes (L0 near the 1.6 features a
    # row holds) and the true output directions among the decoder rows; the paired scales (3 and 30) fold out
    fvu, l0, score = _fit_on_map(
        JumpReLUTranscoderConfig(d_in=D_IN, d_out=D_OUT, latents=64, sparsity_coef=0.3), steps=1500
    )
    print(
        f"JumpReLU transcoder, sparse map: FVU {fvu:.4f}, L0 {l0:.2f} (true 1.6), output directions' MMCS {score:.3f}"
    )
    assert fvu < 0.1 and score > 0.9
    assert l0 < 4.0


def test_jumprelu_skip_transcoder_forward_matches_the_formula():
    torch.manual_seed(0)
    tc = JumpReLUSkipTranscoderSAE(
        JumpReLUSkipTranscoderConfig(d_in=6, d_out=5, latents=16, auxk_coef=0, sparsity_coef=0.5)
    )
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.3 * torch.randn(p.shape))
        tc.threshold.copy_(0.2 * torch.rand(16))
    x, y = torch.randn(12, 6), torch.randn(12, 5)
    out = tc(torch.cat([x, y], 1))
    z = x @ tc.W_enc + tc.b_enc  # no input centring
    codes = z * (z > tc.threshold)
    ref = codes @ tc.W_dec + tc.b_dec + x @ tc.W_skip
    assert float((codes != 0).float().mean()) > 0.2
    assert torch.allclose(out.x_hat, ref, atol=1e-5) and torch.allclose(tc.predict(x), ref, atol=1e-5)
    l0 = float((z > tc.threshold).float().sum(1).mean())
    assert float(out.parts["l0"]) == pytest.approx(l0)
    assert float(out.loss.detach()) == pytest.approx(
        float((ref - y).pow(2).sum(-1).mean().detach()) + 0.5 * l0, rel=1e-5
    )
    # the reconstruction's gradients are autograd's through the active set (θ's comes from the estimator)
    names = ["W_enc", "b_enc", "W_dec", "b_dec", "W_skip"]
    params = [getattr(tc, n) for n in names]
    grads = torch.autograd.grad(out.parts["recon"].new_zeros(()) + (out.x_hat - y).pow(2).sum(-1).mean(), params)
    grads_ref = torch.autograd.grad((ref - y).pow(2).sum(-1).mean(), params)
    for name, a, b in zip(names, grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4), name


def _linear_rows(B: int, g: torch.Generator, A: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = 2 * torch.randn(B, D_IN, generator=g) + 0.5
    return x, x @ A + c


@pytest.mark.slow  # trains two transcoders
def test_skip_term_reproduces_a_purely_linear_map_exactly_and_the_plain_transcoder_cannot():
    g = torch.Generator().manual_seed(0)
    A, c = torch.randn(D_IN, D_OUT, generator=g) / D_IN**0.5, torch.randn(D_OUT, generator=g)

    def batches():
        gb = torch.Generator().manual_seed(1)
        while True:
            yield torch.cat(_linear_rows(256, gb, A, c), 1)

    members = [
        Member(SkipTranscoderConfig(d_in=D_IN, d_out=D_OUT, latents=32, k=1), OptimConfig(lr=1e-2, warmup_steps=20)),
        Member(TranscoderConfig(d_in=D_IN, d_out=D_OUT, latents=32, k=1), OptimConfig(lr=1e-2, warmup_steps=20)),
    ]
    trainer = Trainer(members, TrainConfig(steps=1500, batch_size=256, progress=False, log_every=500))
    trainer.fit(batches())
    skip, plain = trainer.export(0), trainer.export(1)
    x, y = _linear_rows(4000, torch.Generator().manual_seed(7), A, c)
    with torch.no_grad():
        p_skip, p_plain = skip.predict(x), plain.predict(x)
    # The skip-transcoder's whole map is the linear map: its least-squares slope on [x, 1] is A and its
    # intercept is c. (W_skip alone need not be A: a latent that fires on every row is linear too,
    # ReLU(x w + b) = x w + b, so TopK's always-on latents may carry part of A.)
    X1 = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    coef = torch.linalg.lstsq(X1, p_skip.double()).solution
    print(
        f"linear map: FVU skip {_fvu(p_skip, y):.2e}, plain {_fvu(p_plain, y):.3f}; "
        f"|W_skip − A|/|A| {float((skip.W_skip.detach() - A).norm() / A.norm()):.3f}"
    )
    assert _fvu(p_skip, y) < 1e-4
    assert torch.allclose(coef[:D_IN].float(), A, atol=1e-2) and torch.allclose(coef[D_IN].float(), c, atol=1e-2)
    assert _fvu(p_plain, y) > 0.2  # one latent per row cannot carry a dense 24 → 20 linear map


def test_paired_rows_split_and_a_wrong_width_is_refused():
    tc = TranscoderSAE(TranscoderConfig(d_in=3, d_out=2, latents=8, k=2))
    rows = torch.arange(10.0).reshape(2, 5)
    x, y = tc.split_rows(rows)
    assert torch.equal(x, rows[:, :3]) and torch.equal(y, rows[:, 3:])
    with pytest.raises(ValueError, match="width 5"):
        tc.split_rows(torch.zeros(2, 3))
    assert tc.W_enc.shape == (3, 8) and tc.W_dec.shape == (8, 2) and tc.b_dec.shape == (2,)
    same = TranscoderSAE(TranscoderConfig(d_in=4, latents=8, k=2))  # d_out 0 = d_in: a site to itself
    r = torch.randn(5, 4)
    assert all(torch.equal(t, r) for t in same.split_rows(r))


def test_training_forward_matches_the_dense_formula_and_its_gradients():
    torch.manual_seed(0)
    tc = SkipTranscoderSAE(SkipTranscoderConfig(d_in=6, d_out=5, latents=16, k=3, auxk_coef=0))
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    x, y = torch.randn(12, 6), torch.randn(12, 5)
    out = tc(torch.cat([x, y], 1))
    pre = x @ tc.W_enc + tc.b_enc
    top = pre.topk(3, dim=1)
    codes = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    ref = codes @ tc.W_dec + tc.b_dec + x @ tc.W_skip
    assert torch.allclose(out.x_hat, ref, atol=1e-5)
    assert torch.allclose(tc.predict(x), ref, atol=1e-5)
    loss_ref = (ref - y).pow(2).sum(-1).mean()
    grads = torch.autograd.grad(out.loss, list(tc.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(tc.parameters()))
    for (name, _), a, b in zip(tc.named_parameters(), grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4), name


@pytest.mark.parametrize("cls,cfg_cls", [(TranscoderSAE, TranscoderConfig), (SkipTranscoderSAE, SkipTranscoderConfig)])
def test_file_round_trip_keeps_the_map(cls, cfg_cls, tmp_path):
    tc = cls(cfg_cls(d_in=7, d_out=5, latents=12, k=3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    save_sae(tc, tmp_path / "tc", metadata={"site": "mlp_in.1", "target_site": "mlp_out.1"})
    back = load_sae(tmp_path / "tc")
    x = torch.randn(9, 7)
    assert type(back) is cls and back.cfg == tc.cfg
    assert torch.allclose(back.predict(x), tc.predict(x), atol=1e-6)


def test_store_serves_paired_rows_at_the_same_tokens(tmp_path):
    from mechscope.atomic import save_safetensors
    from mechscope.store import FORMAT, ActivationStore, sha256_file, write_manifest

    a, b = torch.randn(40, 3), torch.randn(40, 2)
    path = tmp_path / "train-00000.safetensors"
    save_safetensors(path, {"acts/a": a, "acts/b": b, "tokens": torch.zeros(4, 11, dtype=torch.int32)})
    write_manifest(
        tmp_path,
        {
            "format": FORMAT,
            "version": 1,
            "complete": True,
            "sites": [{"name": "a", "d": 3}, {"name": "b", "d": 2}],
            "shards": [
                {
                    "file": path.name,
                    "split": "train",
                    "contexts": 4,
                    "rows": 40,
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            ],
            "aliases": {},
            "context_length": 11,
            "first_position": 1,
            "rows_per_context": 10,
        },
    )
    store = ActivationStore(tmp_path)
    idx = np.array([5, 0, 39, 17])
    assert torch.equal(store.gather(("a", "b"), idx), torch.cat([a[idx], b[idx]], 1))
    for pair in store.batches(("a", "b"), 8, seed=3):
        rows_a = pair[:, :3]
        where = [int((a == r).all(1).nonzero()) for r in rows_a]
        assert torch.equal(pair[:, 3:], b[where])

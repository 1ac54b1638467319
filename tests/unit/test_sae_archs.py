"""Each architecture against its stated formulas: codes, sparse paths, gradients, thresholds."""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import (
    REGISTRY,
    BatchTopKConfig,
    BatchTopKSAE,
    GatedConfig,
    GatedSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    SparseCodes,
    TopKConfig,
    TopKSAE,
)

D, N = 12, 40


def make(arch: str, seed: int = 0, **kw):
    cls = REGISTRY[arch]
    sae = cls(cls.config_cls(d_in=D, latents=N, **kw), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # move off the symmetric init so every term is exercised
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return sae


def test_registry_has_the_five_architectures():
    assert set(REGISTRY) == {
        "relu",
        "topk",
        "batchtopk",
        "matryoshka",
        "jumprelu",
        "gated",
        "transcoder",
        "skip_transcoder",
        "jumprelu_transcoder",
        "jumprelu_skip_transcoder",
        "crosscoder",
        "clt",
        "jumprelu_clt",
    }
    for name, cls in REGISTRY.items():
        assert cls.arch == name and cls.config_cls.__name__.endswith("Config")


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_shapes_and_parts(arch):
    sae = make(arch, **({"k": 5} if arch in ("topk", "batchtopk", "matryoshka") else {}))
    x = torch.randn(16, D)
    codes = sae.eval().encode(x)
    assert codes.shape == (16, N) and bool((codes >= 0).all())
    assert sae.decode(codes).shape == (16, D)
    assert (sae.W_enc.shape, sae.b_enc.shape, sae.W_dec.shape, sae.b_dec.shape) == ((D, N), (N,), (N, D), (D,))
    out = sae.train()(x, dead_mask=torch.zeros(N, dtype=torch.bool))
    assert out.x_hat.shape == (16, D) and out.loss.ndim == 0 and "recon" in out.parts
    recon = (out.x_hat - x).pow(2).sum(-1).mean()
    assert torch.allclose(out.parts["recon"], recon)
    out.loss.backward()
    assert all(p.grad is not None for p in (sae.W_enc, sae.W_dec, sae.b_dec))
    # The sparse path agrees with the dense codes.
    sparse = sae.eval().encode_sparse(x)
    assert torch.allclose(sparse.dense(N), sae.encode(x), atol=1e-6)
    assert torch.allclose(sae.decode_sparse(sparse), sae.decode(sae.encode(x)), atol=1e-5)


def _dense_topk_reference(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    v, i = pre.topk(sae.cfg.k, dim=1)
    codes = torch.zeros_like(pre).scatter(1, i, v.relu())
    return codes @ sae.W_dec + sae.b_dec


def test_topk_sparse_gradients_equal_dense_autograd():
    sae = make("topk", k=4).double()
    x = torch.randn(9, D, dtype=torch.float64)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    fast = torch.autograd.grad(sae(x).loss, params)
    ref = torch.autograd.grad((_dense_topk_reference(sae, x) - x).pow(2).sum(-1).mean(), params)
    for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), fast, ref):
        assert torch.allclose(a, b, atol=1e-10), name


def test_topk_auxk_sends_gradient_only_to_dead_latents():
    sae = make("topk", k=3, auxk_coef=1.0, auxk_k=4)
    x = torch.randn(20, D)
    plain = sae(x)
    dead = ~plain.codes.fired(N)  # every latent that did not fire on this batch counts as dead
    g_without = torch.autograd.grad(plain.loss, sae.b_enc)[0]
    out = sae(x, dead_mask=dead)
    assert "auxk" in out.parts and float(out.parts["auxk"]) > 0
    g_with = torch.autograd.grad(out.loss, sae.b_enc)[0]
    assert float(g_without[dead].abs().sum()) == 0.0
    assert float(g_with[dead].abs().sum()) > 0.0
    assert torch.allclose(g_with[~dead], g_without[~dead])


def test_batchtopk_keeps_batch_times_k_and_learns_a_threshold_used_at_inference():
    sae = make("batchtopk", k=3, threshold_lr=0.5)
    x = torch.randn(32, D)
    out = sae.train()(x)
    codes = out.codes.dense(N)  # sparse training codes, rows padded with zeros to the largest count
    nz = (codes != 0).sum(1)
    assert int(nz.sum()) == 32 * 3 and int(nz.max()) > int(nz.min())  # rows differ, the batch total is B·k
    kept_min = float(codes.detach()[codes != 0].min())
    assert torch.isclose(sae.threshold, torch.tensor(kept_min))  # first batch sets θ directly
    sae(x)  # second batch: θ ← (1 − β)θ + β·min
    assert torch.isclose(sae.threshold, torch.tensor(kept_min))  # same batch, same minimum
    sae.eval()
    one = sae.encode(x[:1])
    assert torch.allclose(one, sae.encode(x)[:1], atol=1e-6)  # inference does not depend on the batch
    z = ((x[:1] - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    assert torch.allclose(one, z * (z > sae.threshold), atol=1e-6)
    assert "threshold" in sae.state_dict()


def test_jumprelu_straight_through_gradients_follow_the_stated_formulas():
    eps = 0.5
    sae = make("jumprelu", bandwidth=eps, sparsity_coef=0.7, threshold_init=0.1).double()
    x = torch.randn(30, D, dtype=torch.float64)
    z = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    theta = sae.threshold.detach()
    out = sae(x)
    g_theta = torch.autograd.grad(out.loss, sae.threshold)[0]
    # d recon / d f, then the two pseudo-derivatives of the docstring.
    f = z * (z > theta)
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    d_f = 2 * (x_hat - x) @ sae.W_dec.detach().T / x.shape[0]
    K = ((z - theta).abs() < eps / 2).double()
    expected = (d_f * (-(theta / eps) * K)).sum(0) + 0.7 * (-(1 / eps) * K).sum(0) / x.shape[0]
    assert torch.allclose(g_theta, expected, atol=1e-10)
    assert float(K.sum()) > 0  # the test exercised the kernel


def test_jumprelu_tanh_penalty_and_inference_codes():
    sae = make("jumprelu", penalty="tanh", tanh_scale=2.0, sparsity_coef=1.0)
    x = torch.randn(10, D)
    out = sae(x)
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = z * (z > sae.threshold)
    want = torch.tanh(2.0 * f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    assert torch.allclose(out.parts["tanh"], want, atol=1e-6)
    assert torch.allclose(sae.encode(x), f.relu(), atol=1e-6)


def test_gated_auxiliary_loss_does_not_train_the_decoder():
    sae = make("gated", l1_coef=0.0)
    x = torch.randn(10, D)
    out = sae(x)
    g_total = torch.autograd.grad(out.loss, sae.W_dec, retain_graph=True)[0]
    g_recon = torch.autograd.grad(out.parts["recon"].new_tensor(0) + (out.x_hat - x).pow(2).sum(-1).mean(), sae.W_dec)[
        0
    ]
    assert torch.allclose(g_total, g_recon, atol=1e-6)  # aux_gate and L1 (coef 0) add nothing to W_dec
    gate = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    mag = ((x - sae.b_dec) @ (sae.W_enc * sae.r_mag.exp())) + sae.b_mag
    assert torch.allclose(sae.encode(x), (gate > 0) * mag.relu(), atol=1e-6)


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_unit_norm_architectures_keep_unit_decoder_rows(arch):
    sae = make(arch)
    x = torch.randn(8, D)
    sae(x).loss.backward()
    sae.before_step()
    with torch.no_grad():
        for p in sae.parameters():
            p -= 0.1 * p.grad
    sae.after_step()
    norms = sae.W_dec.norm(dim=1)
    if type(sae).unit_norm_decoder:
        assert torch.allclose(norms, torch.ones(N), atol=1e-5)
    else:
        assert not torch.allclose(norms, torch.ones(N), atol=1e-3)


def test_configs_refuse_bad_values():
    with pytest.raises(ValueError):
        TopKConfig(d_in=4, latents=8, k=9)
    with pytest.raises(ValueError):
        BatchTopKConfig(d_in=4, latents=8, threshold_lr=0.0)
    with pytest.raises(ValueError):
        JumpReLUConfig(d_in=4, latents=8, bandwidth=0.0)
    with pytest.raises(ValueError):
        GatedConfig(d_in=0, latents=8)
    with pytest.raises(TypeError):
        TopKSAE(GatedConfig(d_in=4, latents=8))
    assert isinstance(
        BatchTopKSAE(BatchTopKConfig(d_in=4, latents=8, k=2)).eval().encode_sparse(torch.randn(2, 4)), SparseCodes
    )
    assert isinstance(GatedSAE(GatedConfig(d_in=4, latents=8)), GatedSAE) and isinstance(
        JumpReLUSAE(JumpReLUConfig(d_in=4, latents=8)), JumpReLUSAE
    )


def test_batch_cut_equals_the_global_kth_largest_even_when_a_row_overflows():
    from mechscope.sae.batchtopk import batch_cut

    z = torch.rand(50, 200, generator=torch.Generator().manual_seed(0))
    for skew in (False, True):
        if skew:
            z[7] += 10.0  # row 7 alone holds more than per_row of the top entries: the exact fallback runs
        want = z.reshape(-1).topk(150).values.min()
        assert torch.equal(batch_cut(z, 150, per_row=12), want)


def test_batchtopk_gathers_tensors_on_the_activations_device(monkeypatch):
    """NCCL takes only CUDA tensors: every tensor gathered across ranks must follow z's device.

    No GPU here, so z lives on the 'meta' device and a fake two-rank all_gather records devices."""
    import torch.distributed as dist

    from mechscope.sae import batchtopk

    seen: list[torch.device] = []

    def all_gather(outputs, tensor):
        seen.extend([t.device for t in outputs] + [tensor.device])

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    item = torch.Tensor.item
    monkeypatch.setattr(
        torch.Tensor, "item", lambda self: 6 if self.is_meta else item(self)
    )  # a meta size has no value
    cut = batchtopk.global_kth_largest(torch.empty(4, 3, device="meta"), 6)
    assert cut.device.type == "meta"
    assert len(seen) == 6 and all(dev.type == "meta" for dev in seen), seen

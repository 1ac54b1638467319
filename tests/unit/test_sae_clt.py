"""Known answer for the cross-layer transcoder (mechscope.sae.clt).

Two layers. Sparse features s_0 live in layer 0's MLP input (x_0 = s_0 D_0) and s_1 in layer 1's
(x_1 = s_1 D_1); the outputs are y_0 = s_0 E_00 and y_1 = s_0 E_01 + s_1 E_11: layer 1's output carries
a term computed from layer 0's features, which layer 1's input does not hold. A cross-layer transcoder
can write it from layer 0's latents; a per-layer transcoder reading x_1 cannot (x_1 is independent of s_0),
and must leave the share of y_1's variance that s_0 E_01 carries unexplained. The layer-0 latents' decoder slices to y_1
must find the rows of E_01, and the masked blocks must stay exactly zero.
"""

from __future__ import annotations

import pytest
import torch

from mechscope.sae import REGISTRY
from mechscope.sae.clt import CLTConfig, CrossLayerTranscoderSAE
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE

F, D = 8, 12


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    W = torch.randn(n, d, generator=g)
    return W / W.norm(dim=1, keepdim=True)


def _data(rows: int, g: torch.Generator, mats):
    D0, D1, E00, E01, E11 = mats
    s0 = (torch.rand(rows, F, generator=g) < 0.15) * (0.5 + torch.rand(rows, F, generator=g))
    s1 = (torch.rand(rows, F, generator=g) < 0.15) * (0.5 + torch.rand(rows, F, generator=g))
    return torch.cat([s0 @ D0, s1 @ D1, s0 @ E00, s0 @ E01 + s1 @ E11], 1), s0, s1


def _train(sae, rows: torch.Tensor, steps: int, pick=lambda r: r) -> None:
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = pick(rows[torch.randint(0, rows.shape[0], (512,), generator=g)])
        loss = sae(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


def _fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


@pytest.mark.slow  # trains a CLT and transcoders
def test_clt_writes_later_layers_and_beats_a_per_layer_transcoder():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mats = [_unit(F, D, g) for _ in range(5)]
    train, _, _ = _data(20_000, g, mats)
    test, s0, _ = _data(4_000, g, mats)
    assert "clt" in REGISTRY
    clt = CrossLayerTranscoderSAE(CLTConfig(d_in=2 * D, latents=2 * 16, k=3, layers=2, d_out=2 * D))
    _train(clt, train, 400)
    with torch.no_grad():
        x, y = clt.split_rows(test)
        y_hat = clt.predict(x)
    fvu_clt_1 = _fvu(y[:, D:], y_hat[:, D:])
    # the per-layer transcoder of layer 1 reads x_1 only (columns D:2D) and predicts y_1 (columns 3D:4D)
    plt = TranscoderSAE(TranscoderConfig(d_in=D, latents=16, k=3, d_out=D))
    _train(plt, train, 400, pick=lambda r: torch.cat([r[:, D : 2 * D], r[:, 3 * D :]], 1))
    with torch.no_grad():
        fvu_plt_1 = _fvu(test[:, 3 * D :], plt.predict(test[:, D : 2 * D]))
    z, y1 = s0 @ mats[3], test[:, 3 * D :]
    share = float(((z - z.mean(0)) ** 2).sum() / ((y1 - y1.mean(0)) ** 2).sum())  # variance share of s_0 E_01 in y_1
    assert fvu_clt_1 < 0.15, fvu_clt_1
    assert fvu_plt_1 > 0.9 * share > 0.3, (fvu_plt_1, share)
    # layer-0 latents' slices into y_1 find E_01's rows
    W01 = clt.W_dec.detach()[:16, D:]
    W01 = W01 / W01.norm(dim=1, keepdim=True).clamp_min(1e-8)
    best = (mats[3] @ W01.t()).max(1).values
    assert float(best.min()) > 0.9, best
    # masks: layer-1 latents never write y_0, encoders never read the other layer
    assert float(clt.W_dec.detach()[16:, :D].abs().max()) == 0.0
    assert (
        float(clt.W_enc.detach()[:D, 16:].abs().max()) == 0.0 and float(clt.W_enc.detach()[D:, :16].abs().max()) == 0.0
    )


def test_jumprelu_clt_codes_and_threshold_gradient_follow_the_stated_formulas():
    from mechscope.sae.clt_jumprelu import JumpReLUCLTConfig, JumpReLUCLTSAE

    eps, L, m, d = 0.5, 2, 6, 4
    sae = JumpReLUCLTSAE(
        JumpReLUCLTConfig(d_in=L * d, latents=L * m, layers=L, bandwidth=eps, sparsity_coef=0.7),
        generator=torch.Generator().manual_seed(0),
    ).double()
    with torch.no_grad():
        sae.threshold.copy_(0.3 * torch.rand(L * m, generator=torch.Generator().manual_seed(1)))
        sae.b_enc.add_(0.2)
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.randn(40, L * d, generator=g, dtype=torch.float64),
        torch.randn(40, L * d, generator=g, dtype=torch.float64),
    )
    # layer l's latents read only x_l: z_l = x_l W_enc^l + b_enc^l, off-block weights play no part
    z = torch.cat(
        [
            x[:, l * d : (l + 1) * d] @ sae.W_enc[l * d : (l + 1) * d, l * m : (l + 1) * m]
            + sae.b_enc[l * m : (l + 1) * m]
            for l in range(L)
        ],
        1,
    ).detach()
    theta = sae.threshold.detach()
    f = z * (z > theta)
    assert 0.1 < float((f != 0).double().mean()) < 0.9
    torch.testing.assert_close(sae.encode(x), f)
    W = (sae.W_dec * sae.dec_mask).detach()  # layer 1's latents write nothing to layer 0's output
    assert float(W[m:, :d].abs().sum()) == 0.0 and float(W[:m, d:].abs().sum()) > 0
    out = sae(torch.cat([x, y], 1))
    torch.testing.assert_close(out.x_hat, f @ W + sae.b_dec.detach())
    g_theta = torch.autograd.grad(out.loss, sae.threshold)[0]
    d_f = 2 * (out.x_hat.detach() - y) @ W.T / x.shape[0]
    K = ((z - theta).abs() < eps / 2).double()
    expected = (d_f * (-(theta / eps) * K)).sum(0) + 0.7 * (-(1 / eps) * K).sum(0) / x.shape[0]
    assert float(K.sum()) > 0
    torch.testing.assert_close(g_theta, expected, atol=1e-10, rtol=1e-8)
    with pytest.raises(ValueError, match=r"auxk_coef=0.1: a cross-layer transcoder has no AuxK loss"):
        JumpReLUCLTConfig(d_in=8, latents=12, layers=2, auxk_coef=0.1)


@pytest.mark.parametrize("arch", ["clt", "jumprelu_clt"])
def test_layer_codes_are_each_layers_block_of_the_full_codes(arch):
    """What a consumer that reads one layer at a time (an attribution graph) gets is the full encode's block."""
    L, m, d = 3, 8, 5
    cls = REGISTRY[arch]
    sae = cls(
        cls.config_cls(d_in=L * d, latents=L * m, layers=L, **({"k": 3} if arch == "clt" else {})),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        sae.b_enc.add_(0.3)
        if arch == "jumprelu_clt":
            sae.threshold.copy_(0.4 * torch.rand(L * m, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(30, L * d, generator=torch.Generator().manual_seed(2))
    full = sae.encode(x)
    assert 0.05 < float((full != 0).float().mean()) < 0.9
    for l in range(L):
        got = sae.layer_codes(x[:, l * d : (l + 1) * d], l).dense(m)
        torch.testing.assert_close(got, full[:, l * m : (l + 1) * m])

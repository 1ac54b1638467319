"""The crosscoder against a known answer: features that live in layer 1 only, in layer 2 only, or in
both, are each recovered by one latent whose per-site decoder norms say which layers it writes."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.sae import CrosscoderConfig, CrosscoderSAE, Member, OptimConfig, TopKConfig, TrainConfig, Trainer
from mechscope.sae.from_store import train_from_store

D, PER_GROUP = 16, 8  # site width; features per group (site 0 only, site 1 only, both)


def _truth(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """([3·PER_GROUP, 2·D] each feature's direction over both sites, [3·PER_GROUP, 2] its presence per site)."""
    g = torch.Generator().manual_seed(seed)
    F = 3 * PER_GROUP
    present = torch.zeros(F, 2)
    present[:PER_GROUP, 0] = 1
    present[PER_GROUP : 2 * PER_GROUP, 1] = 1
    present[2 * PER_GROUP :] = 1
    dirs = torch.nn.functional.normalize(torch.randn(F, 2, D, generator=g), dim=-1) * present[:, :, None]
    return dirs.reshape(F, 2 * D), present


def _batches(dirs: torch.Tensor, B: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    while True:
        s = (torch.rand(B, dirs.shape[0], generator=g) < 0.06) * (0.5 + torch.rand(B, dirs.shape[0], generator=g))
        yield 4.0 * s @ dirs


@pytest.mark.slow  # trains a crosscoder to recovery
def test_crosscoder_recovers_single_and_cross_layer_features():
    torch.set_num_threads(1)
    dirs, present = _truth()
    trainer = Trainer(
        [Member(CrosscoderConfig(d_in=2 * D, latents=48, k=4, sites=2), OptimConfig(lr=3e-3, warmup_steps=20))],
        TrainConfig(steps=1000, batch_size=256, progress=False, log_every=250),
    )
    trainer.fit(_batches(dirs, 256))
    cc = trainer.export(0)
    x = next(_batches(dirs, 4000, seed=9))
    with torch.no_grad():
        x_hat = cc.predict(x)
    fvu = float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    unit = torch.nn.functional.normalize(dirs, dim=1)
    cos = unit @ torch.nn.functional.normalize(cc.W_dec.detach(), dim=1).t()  # [F, n]
    best_cos, best = cos.max(1)
    norms = cc.site_decoder_norms()[best]  # [F, 2] per-site decoder norms of each feature's latent
    share = norms[:, 0] / norms.sum(1)  # fraction written to site 0
    print(
        f"crosscoder: FVU {fvu:.4f}, mean best cosine {float(best_cos.mean()):.3f}, site-0 share by group "
        f"{[round(float(share[i * PER_GROUP : (i + 1) * PER_GROUP].mean()), 3) for i in range(3)]}"
    )
    assert fvu < 0.1
    assert float(best_cos.mean()) > 0.9
    assert bool((share[:PER_GROUP] > 0.9).all())  # site-0 features write to site 0
    assert bool((share[PER_GROUP : 2 * PER_GROUP] < 0.1).all())  # site-1 features to site 1
    both = share[2 * PER_GROUP :]
    assert bool(((both > 0.3) & (both < 0.7)).all())  # cross-layer features to both, about equally
    # The per-site losses add up to the reconstruction loss the trainer minimises.
    out = cc.train()(x[:64])
    assert torch.allclose(out.parts["recon_site0"] + out.parts["recon_site1"], out.parts["recon"], rtol=1e-5)


def test_config_and_sites_are_checked():
    with pytest.raises(ValueError, match="blocks of equal width"):
        CrosscoderConfig(d_in=15, latents=8, k=2, sites=2)
    cc = CrosscoderSAE(CrosscoderConfig(d_in=12, latents=8, k=2, sites=3))
    assert cc.site_width == 4 and cc.site_decoder_norms().shape == (8, 3)

    class Store:  # a crosscoder needs as many sites as it reads; an SAE one site
        def d(self, site):
            return 4

    with pytest.raises(UsageError, match="crosscoder"):
        train_from_store(
            Store(), ("a", "b"), [Member(TopKConfig(d_in=4, latents=8, k=2))], TrainConfig(steps=1), "/nonexistent"
        )
    with pytest.raises(UsageError, match="reads several sites: give `site` several"):
        train_from_store(
            Store(), "a", [Member(CrosscoderConfig(d_in=8, latents=8, k=2))], TrainConfig(steps=1), "/nonexistent"
        )

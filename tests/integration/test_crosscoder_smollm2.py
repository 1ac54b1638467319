"""A small crosscoder trained on SmolLM2's residual stream at layers 4 and 6 reconstructs both, and its
latents include single-layer and cross-layer ones (read from the per-site decoder norms)."""

from __future__ import annotations

import pytest
import torch

from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import CrosscoderConfig, Member, OptimConfig, TrainConfig, train_from_store
from mechscope.sae.io import load_sae
from tests.harness import SMALL_TEXT


@pytest.mark.slow
def test_a_small_crosscoder_on_two_smollm2_layers(smollm2, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = harvest(
            HarvestConfig(
                sites=("resid_post.4", "resid_post.6"),
                tokens=6000,
                val_tokens=1000,
                batch_contexts=8,
                shard_contexts=16,
            ),
            TextCorpusConfig(source=SMALL_TEXT, context_length=64, val_fraction=0.1),
            tmp_path / "store",
            loaded=smollm2,
            progress=False,
        )
        member = Member(CrosscoderConfig(d_in=2, latents=1024, k=32, sites=2), OptimConfig(lr=1e-3, warmup_steps=20))
        metrics = train_from_store(
            store,
            ("resid_post.4", "resid_post.6"),
            [member],
            TrainConfig(steps=200, batch_size=256, progress=False, device="cpu"),
            tmp_path / "out",
        )
    finally:
        torch.set_num_threads(threads)
    cc = load_sae(tmp_path / "out" / "crosscoder")
    x = store.gather(("resid_post.4", "resid_post.6"), torch.arange(0, store.n_rows("val")).numpy(), "val")
    with torch.no_grad():
        x_hat = cc.predict(x)
    d = cc.site_width
    fvu = [
        float((x_hat[:, s] - x[:, s]).pow(2).sum() / (x[:, s] - x[:, s].mean(0)).pow(2).sum())
        for s in (slice(0, d), slice(d, 2 * d))
    ]
    share = cc.site_decoder_norms()
    share = share[:, 0] / share.sum(1)
    print(
        f"crosscoder on SmolLM2: FVU {metrics['crosscoder']['fvu']:.3f}, per site {fvu}; "
        f"latents mostly layer 4 {float((share > 0.9).float().mean()):.2f}, mostly layer 6 {float((share < 0.1).float().mean()):.2f}"
    )
    assert metrics["crosscoder"]["fvu"] < 0.5 and max(fvu) < 0.6
    assert float(((share > 0.2) & (share < 0.8)).float().mean()) > 0.1  # cross-layer latents exist

"""A small cross-layer transcoder trained on SmolLM2's first two MLPs replaces both at once far better than
deleting them: with MLPs 0 and 1 both predicted by the CLT from their live inputs, the next-token loss is well
below the loss with both zero-ablated (and below mean-ablation), on held-out contexts."""

from __future__ import annotations

import pytest
import torch

from mechscope.data.text import TextCorpusConfig
from mechscope.evals.metrics import clustered_stderr, loss_recovered
from mechscope.graph.replacement import CLTLayer
from mechscope.graph.splice import clean_losses, fixed_losses, replaced_losses
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import Member, OptimConfig, TrainConfig, train_from_store
from mechscope.sae.clt import CLTConfig
from mechscope.sae.io import load_sae
from tests.harness import SMALL_TEXT


@pytest.mark.slow
def test_a_small_clt_replaces_two_smollm2_mlps(smollm2, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ins, outs = ["mlp_in.0", "mlp_in.1"], ["mlp_out.0", "mlp_out.1"]
        store = harvest(
            HarvestConfig(sites=(*ins, *outs), tokens=6000, val_tokens=1000, batch_contexts=8, shard_contexts=16),
            TextCorpusConfig(source=SMALL_TEXT, context_length=64, val_fraction=0.1),
            tmp_path / "store",
            loaded=smollm2,
            progress=False,
        )
        member = Member(CLTConfig(d_in=2, latents=2 * 512, k=16, layers=2), OptimConfig(lr=1e-3, warmup_steps=20))
        metrics = train_from_store(
            store,
            tuple(ins),
            [member],
            TrainConfig(steps=200, batch_size=256, progress=False, device="cpu"),
            tmp_path / "out",
            target_site=tuple(outs),
        )
        clt = load_sae(tmp_path / "out" / "clt").eval().requires_grad_(False)
        model = smollm2.model
        paths = [f"model.layers.{l}.mlp" for l in range(2)]
        ids = store.tokens("val")[:8]
        clean = clean_losses(model, ids)
        zero = fixed_losses(model, ids, {p: torch.zeros(576) for p in paths})
        mean = fixed_losses(model, ids, {p: store.mean(s) for p, s in zip(paths, outs)})
        spliced = replaced_losses(model, ids, [CLTLayer(l, paths[l], clt) for l in range(2)])
    finally:
        torch.set_num_threads(threads)
    gap = spliced - zero  # paired over contexts
    se = float(gap.std() / len(gap) ** 0.5)
    rec = loss_recovered(
        clean=float(clean.mean()),
        ablated=float(zero.mean()),
        spliced=float(spliced.mean()),
        gap_se=clustered_stderr(zero - clean, torch.ones(len(clean))),
    ).value
    print(
        f"CLT on SmolLM2 MLPs 0-1: held-out FVU {metrics['clt']['fvu']:.3f}, L0 {metrics['clt']['l0']:.1f}; loss clean "
        f"{float(clean.mean()):.3f}, CLT {float(spliced.mean()):.3f}, mean-ablated {float(mean.mean()):.3f}, "
        f"zero-ablated {float(zero.mean()):.3f}; recovered {rec:.3f}"
    )
    assert metrics["clt"]["fvu"] < 0.9 and metrics["clt"]["l0"] <= 2 * 16 + 1e-6
    assert float(gap.mean()) + 2 * se < 0  # better than deleting both MLPs, beyond the noise
    assert float(spliced.mean()) < float(mean.mean())
    assert rec > 0.5

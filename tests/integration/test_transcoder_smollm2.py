"""A small transcoder of each kind (TopK and JumpReLU, with and without a skip term) trained on SmolLM2's layer-6 MLP (input → output) replaces that
MLP better than zero-ablating it: the spliced model's next-token loss is below the zero-ablated model's.
Measured (200 steps, 6,000 tokens; held-out FVU, L0, loss recovered vs zero-ablation): transcoder 0.769, 32,
61.7%; skip-transcoder 0.691, 32, 68.5%; JumpReLU transcoder 0.835, 21.6, 70.9%; JumpReLU skip-transcoder
0.722, 9.1, 77.7%."""

from __future__ import annotations

import pytest
import torch

from mechscope.data.text import TextCorpusConfig
from mechscope.evals.evaluate import store_task
from mechscope.evals.splice import SpliceConfig, evaluate_splice
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import REGISTRY, Member, OptimConfig, TrainConfig, train_from_store
from mechscope.sae.io import load_sae
from tests.harness import SMALL_TEXT

SPARSITY = 1.0
"""λ of the JumpReLU transcoder's L0 penalty (the default)."""
THRESHOLD = 1.0
"""Its initial θ, in the trainer's scaled units (E‖x‖² = d_in, so a pre-activation is O(1)). Not the default
0.01: Adam moves θ by at most ~lr per step, so in 200 steps θ cannot climb from 0.01 and L0 stays ~200
(measured: λ = 1, 5 and 20 all gave L0 196). θ₀ = 1.0 gives L0 ≈ 22 (1.5: 11; 2.5: 4)."""


@pytest.fixture(scope="module")
def store(smollm2, tmp_path_factory):
    """SmolLM2's layer-6 MLP input and output on 6,000 tokens (1,000 held out), harvested once for the four kinds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return harvest(
            HarvestConfig(
                sites=("mlp_in.6", "mlp_out.6"), tokens=6000, val_tokens=1000, batch_contexts=8, shard_contexts=16
            ),
            TextCorpusConfig(source=SMALL_TEXT, context_length=64, val_fraction=0.1),
            tmp_path_factory.mktemp("transcoder-store") / "store",
            loaded=smollm2,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_a_small_transcoder_beats_zero_ablating_the_mlp(arch, smollm2, store, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cls = REGISTRY[arch].config_cls
        cfg = (
            cls(d_in=1, latents=1024, k=32)
            if "k" in cls.__dataclass_fields__
            else cls(d_in=1, latents=1024, sparsity_coef=SPARSITY, threshold_init=THRESHOLD)
        )
        member = Member(cfg, OptimConfig(lr=1e-3, warmup_steps=20))
        metrics = train_from_store(
            store,
            "mlp_in.6",
            [member],
            TrainConfig(steps=200, batch_size=256, progress=False, device="cpu"),
            tmp_path / "out",
            target_site="mlp_out.6",
        )
        tc = load_sae(tmp_path / "out" / arch)
        res = evaluate_splice(
            smollm2.model,
            "mlp_out.6",
            lambda x: tc.predict(x),
            store_task(store, smollm2.model, 8),
            mean_act=store.mean("mlp_out.6"),
            cfg=SpliceConfig(batch_size=4, skip_first_positions=store.first_position, progress=False),
            source_site="mlp_in.6",
        )
    finally:
        torch.set_num_threads(threads)
    print(f"{arch}: held-out FVU {metrics[arch]['fvu']:.3f}, L0 {metrics[arch]['l0']:.1f}; {res.headline()}")
    assert metrics[arch]["fvu"] < 0.9 and metrics[arch]["l0"] < 100
    # Clearly better than no MLP at all: the spliced model's excess loss over the clean one, plus two paired
    # standard errors, stays below the zero-ablated model's excess (measured 0.069 ± 0.027 vs 0.18 nats).
    assert res.spliced_loss - res.clean_loss + 2 * res.stderr["spliced_minus_clean"] < res.zero_loss - res.clean_loss
    assert res.recovered_vs_zero > 0.3

"""The newer dictionary architectures trained on real SmolLM2 activations (issue 14's must-show, in small).

Each trains briefly on a small layer-6 store and is spliced into the model: its held-out FVU must be
well below 1 and its spliced loss must beat mean-ablating the site by a wide margin (loss recovered vs
mean ablation ≥ 80%). The full-size numbers are in docs/dictionaries.md.
"""

from __future__ import annotations

import pytest

from mechscope.cli.evaluate import EvaluateConfig, evaluate_sae
from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import REGISTRY, Member, OptimConfig, TrainConfig, load_sae, train_from_store

pytestmark = pytest.mark.slow

SITE = "resid_post.6"


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2):
    out = tmp_path_factory.mktemp("smollm2-store")
    return harvest(
        HarvestConfig(sites=(SITE,), tokens=12_000, val_tokens=2_048), TextCorpusConfig(), out / "store", loaded=smollm2
    )


@pytest.mark.parametrize("arch", ["matryoshka"])
def test_architecture_reconstructs_smollm2_and_beats_mean_ablation(arch, store, smollm2, tmp_path):
    site = store.site_name(SITE)
    cls = REGISTRY[arch]
    cfg = cls.config_cls(d_in=store.d(site), latents=1024, k=16)
    train_from_store(
        store,
        site,
        [Member(cfg, OptimConfig(lr=1e-3, warmup_steps=10))],
        TrainConfig(steps=120, batch_size=1024, checkpoint_every=1000),
        tmp_path,
        metadata={"site": site, "model": store.manifest.get("model_id")},
    )
    sae = load_sae(tmp_path / arch).eval()
    rec, splice = evaluate_sae(sae, store, site, smollm2, EvaluateConfig(rows=2048, contexts=4, mean_rows=4096))
    assert rec["fvu"] < 0.5, rec
    assert rec["l0"] == pytest.approx(16, rel=0.25), rec
    assert splice.recovered_vs_mean >= 0.8, splice
    assert splice.spliced_loss < splice.rock_loss, splice

"""Harvest from a model spread over devices by accelerate (``device_map``): layers on different devices, some
offloaded to disk (their weights on the meta device until accelerate's hook loads them), still give the store of a
model on one device, byte for byte. No GPU here: the map puts modules on the cpu and on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from mechscope.data.text import TextCorpusConfig
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.harvest import HarvestConfig, harvest
from mechscope.models.loading import LoadedModel, device_of, dispatched
from tests.harness import SMALL_TEXT

CORPUS = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
CFG = HarvestConfig(
    sites=("resid_post.0", "mlp_out.1", "resid_post.2"), tokens=600, val_tokens=100, batch_contexts=4, shard_contexts=8
)
OFFLOADED = {
    "model.embed_tokens": "disk",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_model_offloaded_layer_by_layer_harvests_the_store_of_one_device(tiny_lm, tiny_lm_dir, tmp_path):
    ref = digests(harvest(CFG, CORPUS, tmp_path / "ref", loaded=tiny_lm, progress=False).path)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, device_map=OFFLOADED, offload_folder=tmp_path / "offload")
    assert dispatched(model) and next(model.parameters()).device.type == "meta"  # the embedding waits on disk
    assert device_of(model).type == "cpu"  # inputs go where its first module runs, not to the meta device
    loaded = LoadedModel(model.eval().requires_grad_(False), tiny_lm.tokenizer, tiny_lm.model_id)
    got = digests(harvest(CFG, CORPUS, tmp_path / "offloaded", loaded=loaded, progress=False, device="cpu").path)
    assert got == ref and len(ref) == 5  # manifest + 3 training shards + 1 held-out shard


def test_a_spec_loads_through_device_map(tiny_lm_dir, tmp_path):
    cfg = HarvestConfig(**{**CFG.__dict__, "model": str(tiny_lm_dir)})
    ref = digests(harvest(cfg, CORPUS, tmp_path / "ref", progress=False).path)
    placed = {k: "cpu" for k in OFFLOADED}
    assert digests(harvest(cfg, CORPUS, tmp_path / "mapped", progress=False, device_map=placed).path) == ref


def test_device_map_under_several_ranks_is_refused(tmp_path):
    with pytest.raises(
        UsageError, match=r"`device_map` spreads one model over this machine's devices, but 2 ranks run"
    ):
        harvest(CFG, CORPUS, tmp_path / "s", progress=False, device_map="auto", world=World(rank=0, size=2))

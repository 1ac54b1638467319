"""A transcoder per layer, the layers dealt out over two CPU processes under torchrun (gloo): each rank trains its
sites alone, the saved transcoders equal, tensor for tensor, those one process trains, and every rank gets every
site's held-out metrics."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from mechscope.data.text import TextCorpusConfig
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import Member, TrainConfig, TranscoderConfig, train_per_site
from tests.harness import SMALL_TEXT, torchrun_script

SITES, TARGETS = ["mlp_in.0", "mlp_in.1", "mlp_in.2"], ["mlp_out.0", "mlp_out.1", "mlp_out.2"]

WORKER = (
    textwrap.dedent(
        """
    import json, sys, torch
    torch.set_num_threads(1)
    from mechscope.distributed import World
    from mechscope.sae import BatchTopKConfig, Member, TrainConfig, TranscoderConfig, train_per_site
    world = World.from_env("cpu", timeout_s=60)
    cfg = TrainConfig(steps=6, batch_size=32, checkpoint_every=3, log_every=3, progress=False, device="cpu")
    if sys.argv[3] == "transcoder":
        members = [Member(TranscoderConfig(d_in=1, d_out=1, latents=32, k=4))]
        out = train_per_site(sys.argv[1], SITES, members, cfg, sys.argv[2], target_sites=TARGETS, world=world)
    else:  # BatchTopK's cut gathers over the process group unless the trainer keeps it to the rank's own site
        members = [Member(BatchTopKConfig(d_in=1, latents=32, k=4, threshold_lr=0.2))]
        out = train_per_site(sys.argv[1], TARGETS, members, cfg, sys.argv[2], world=world)
    # one file per rank: two ranks printing to one pipe can interleave their lines
    open(f"{sys.argv[4]}/rank{world.rank}.json", "w").write(json.dumps({"rank": world.rank, "results": out}))
    world.close()
    """
    )
    .replace("SITES", repr(SITES))
    .replace("TARGETS", repr(TARGETS))
)


@pytest.fixture(scope="module")
def store(tiny_lm, tmp_path_factory):
    corpus = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
    cfg = HarvestConfig(sites=tuple(SITES + TARGETS), tokens=600, val_tokens=100, batch_contexts=4, shard_contexts=8)
    return harvest(cfg, corpus, tmp_path_factory.mktemp("store") / "s", loaded=tiny_lm, progress=False).path


def launch(tmp_path, store, out, ranks: int, kind: str = "transcoder") -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    results = tmp_path / f"results-{out.name}"
    results.mkdir()
    proc = torchrun_script(script, [str(store), str(out), kind, str(results)], ranks, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [json.loads((results / f"rank{r}.json").read_text()) for r in range(max(ranks, 1))]


def test_a_transcoder_per_layer_over_two_ranks_equals_one_process(tmp_path, store):
    (one,) = launch(tmp_path, store, tmp_path / "one", ranks=0)
    two = launch(tmp_path, store, tmp_path / "two", ranks=2)
    assert [r["results"] for r in two] == [one["results"]] * 2 and list(one["results"]) == SITES
    for site in SITES:
        want = load_file(str(tmp_path / "one" / site / "transcoder" / "sae.safetensors"))
        got = load_file(str(tmp_path / "two" / site / "transcoder" / "sae.safetensors"))
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), (site, key)
    # rank 0 trained sites 0 and 2, rank 1 site 1: each site has one checkpoint, written by one process
    assert sorted(p.parent.name for p in (tmp_path / "two").glob("*/checkpoint.safetensors")) == sorted(SITES)


def test_batchtopk_per_site_over_two_ranks_equals_one_process(tmp_path, store):
    # rank 0 trains 2 sites and rank 1 one: a cut gathered over the group would pair different sites, or hang
    (one,) = launch(tmp_path, store, tmp_path / "one", ranks=0, kind="batchtopk")
    two = launch(tmp_path, store, tmp_path / "two", ranks=2, kind="batchtopk")
    assert [r["results"] for r in two] == [one["results"]] * 2
    for site in TARGETS:
        want = load_file(str(tmp_path / "one" / site / "batchtopk" / "sae.safetensors"))
        got = load_file(str(tmp_path / "two" / site / "batchtopk" / "sae.safetensors"))
        for key in want:
            assert torch.equal(want[key], got[key]), (site, key)
        assert float(want["threshold"]) > 0


def test_bad_site_lists_are_refused_by_name(store, tmp_path):
    members = [Member(TranscoderConfig(d_in=1, d_out=1, latents=8, k=2))]
    cfg = TrainConfig(steps=1, batch_size=8, progress=False, device="cpu")
    with pytest.raises(UsageError, match=r"3 `sites` but 2 `target_sites`"):
        train_per_site(store, SITES, members, cfg, tmp_path, target_sites=TARGETS[:2])
    with pytest.raises(UsageError, match=r"1 site\(s\) dealt out over 2 ranks"):
        train_per_site(store, SITES[:1], members, cfg, tmp_path, target_sites=TARGETS[:1], world=World(rank=0, size=2))

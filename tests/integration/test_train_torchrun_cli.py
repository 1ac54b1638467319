"""``mechscope train`` under torchrun (two CPU processes, gloo) with the dictionaries dealt out: ``--distribute-members``
(one SAE of the sweep per rank) and ``--per-site`` (a transcoder per layer, one layer per rank) print once, rank 0,
the held-out metrics one process prints, and leave each rank's own files; ``--shard-layers`` (a CLT's layers split
over the ranks) prints the metrics of one process to float rounding and saves one ordinary CLT."""

from __future__ import annotations

import json

import pytest

from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest
from tests.harness import SMALL_TEXT, torchrun_cli


@pytest.fixture(scope="module")
def store(tiny_lm, tmp_path_factory):
    corpus = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
    cfg = HarvestConfig(
        sites=("mlp_in.0", "mlp_out.0", "mlp_in.1", "mlp_out.1"),
        tokens=600,
        val_tokens=100,
        batch_contexts=4,
        shard_contexts=8,
    )
    return harvest(cfg, corpus, tmp_path_factory.mktemp("store") / "s", loaded=tiny_lm, progress=False).path


def one_and_two(argv: list[str], tmp_path) -> tuple[list[dict], list[dict]]:
    """The JSON ``saes`` of one process and of 2 ranks under torchrun (outputs in tmp_path/one and tmp_path/two)."""
    out = []
    for name, ranks in (("one", 0), ("two", 2)):
        run = torchrun_cli([*argv, "--out", str(tmp_path / name), "--json"], ranks, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        lines = run.stdout.strip().splitlines()
        assert len(lines) == 1, lines  # one JSON object: rank 1 prints nothing
        out.append([{k: v for k, v in row.items() if k != "folder"} for row in json.loads(lines[0])["saes"]])
    return out[0], out[1]


def test_distribute_members_from_the_command_line(store, tmp_path):
    argv = [
        "train",
        "--store",
        str(store),
        "--site",
        "mlp_out.0",
        "--arch",
        "topk",
        "--latents",
        "32",
        "--sweep",
        "k=2,4,8",
        "--steps",
        "6",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        "--distribute-members",
    ]
    one, two = one_and_two(argv, tmp_path)
    assert two == one and [r["sae"] for r in one] == ["topk-k2", "topk-k4", "topk-k8"]
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint*")) == [
        "checkpoint.rank0-of-2.safetensors",
        "checkpoint.rank1-of-2.safetensors",
    ]


def test_a_transcoder_per_layer_from_the_command_line(store, tmp_path):
    argv = [
        "train",
        "--store",
        str(store),
        "--arch",
        "transcoder",
        "--per-site",
        "--site",
        "mlp_in.0,mlp_in.1",
        "--target-site",
        "mlp_out.0,mlp_out.1",
        "--latents",
        "32",
        "--k",
        "4",
        "--steps",
        "6",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--no-progress",
    ]
    one, two = one_and_two(argv, tmp_path)
    assert two == one and [r["sae"] for r in one] == ["mlp_in.0/transcoder", "mlp_in.1/transcoder"]
    assert (tmp_path / "two" / "mlp_in.1" / "transcoder" / "sae.safetensors").is_file()


def test_a_clt_split_by_layers_from_the_command_line(store, tmp_path):
    argv = [
        "train",
        "--store",
        str(store),
        "--arch",
        "clt",
        "--site",
        "mlp_in.0,mlp_in.1",
        "--target-site",
        "mlp_out.0,mlp_out.1",
        "--latents",
        "64",
        "--k",
        "4",
        "--steps",
        "6",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        "--shard-layers",
    ]
    one, two = one_and_two(argv, tmp_path)
    assert [r["sae"] for r in two] == [r["sae"] for r in one] == ["clt"]
    assert two[0].keys() == one[0].keys()
    for key, value in one[0].items():  # the sums over latents are cut in two: numbers equal to float rounding
        want = pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value
        assert two[0][key] == want, (key, one[0], two[0])
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint*")) == [
        "checkpoint.rank0-of-2.safetensors",
        "checkpoint.rank1-of-2.safetensors",
    ]
    assert sorted(p.name for p in (tmp_path / "two" / "clt").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "clt").iterdir()
    )

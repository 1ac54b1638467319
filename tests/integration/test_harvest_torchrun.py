"""Harvest under torchrun (two CPU processes, gloo): the store is the one a single process makes, file for file;
a rank killed with SIGKILL and the job run again ends in that same store; a rank that never reaches the final
barrier ends the job in a named error within the timeout, not a hang (docs/scaling.md). The same documents as a
parquet file, in another order, give the same shards, in one process and under torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness import SMALL_TEXT, file_digests, torchrun_cli

pytestmark = pytest.mark.slow  # each test starts torchrun and two interpreters

TIMEOUT = 240


def harvest_argv(model: Path, out: Path, source: str = SMALL_TEXT) -> list[str]:
    # 1,200 tokens: 40 training contexts in 5 shards of 8, then 1 held-out shard.
    return [
        "harvest",
        "--model",
        str(model),
        "--site",
        "resid_post.1",
        "--tokens",
        "1200",
        "--val-tokens",
        "100",
        "--batch-contexts",
        "4",
        "--shard-contexts",
        "8",
        "--source",
        source,
        "--context-length",
        "32",
        "--val-fraction",
        "0.1",
        "--out",
        str(out),
    ]


def shard_files(folder: Path, record: str) -> list[str]:
    return [s["file"] for s in json.loads((folder / record).read_text())["shards"]]


@pytest.fixture(scope="module")
def one_process(tiny_lm_dir, tmp_path_factory) -> dict[str, str]:
    """sha256 of every file of the store one process harvests."""
    out = tmp_path_factory.mktemp("one") / "store"
    run = torchrun_cli(harvest_argv(tiny_lm_dir, out), 0)
    assert run.returncode == 0, run.stderr[-3000:]
    return file_digests(out)


def test_two_ranks_make_the_store_of_one_process(tiny_lm_dir, tmp_path, one_process):
    run = torchrun_cli(harvest_argv(tiny_lm_dir, tmp_path / "two"), 2, timeout=TIMEOUT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert file_digests(tmp_path / "two") == one_process  # manifest and every shard, byte for byte; no record left
    assert len(one_process) == 7 and run.stdout.count("store:") == 1  # 6 shards + manifest; only rank 0 printed


def test_a_killed_rank_resumes_to_the_same_store(tiny_lm_dir, tmp_path, one_process):
    out = tmp_path / "killed"
    killed = torchrun_cli(
        harvest_argv(tiny_lm_dir, out), 2, timeout=TIMEOUT, MECHSCOPE_FAULT="harvest.manifest_written@2 rank=1"
    )
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    # Rank 1's share is every other shard of the plan; it recorded its first two before it died.
    assert shard_files(out, "progress-rank1.json") == ["train-00001.safetensors", "train-00003.safetensors"]
    if (out / "manifest.json").is_file():  # rank 0 may have been stopped before its first shard
        assert set(shard_files(out, "manifest.json")) <= {
            "train-00000.safetensors",
            "train-00002.safetensors",
            "train-00004.safetensors",
        }
    again = torchrun_cli(harvest_argv(tiny_lm_dir, out), 2, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert file_digests(out) == one_process


def test_a_stuck_rank_ends_in_a_named_error_not_a_hang(tiny_lm_dir, tmp_path):
    # Rank 1 sleeps forever after its first shard; rank 0 waits at the final barrier for 5 s, then fails.
    run = torchrun_cli(
        harvest_argv(tiny_lm_dir, tmp_path / "stuck") + ["--collective-timeout-s", "5"],
        2,
        timeout=TIMEOUT,
        MECHSCOPE_FAULT="harvest.manifest_written@1 rank=1 hang",
    )
    assert run.returncode != 0
    assert (
        "mechscope: error: rank 0 of 2: the end of harvest (every rank has written its shards) failed or did not "
        "complete within 5 s"
    ) in run.stderr, run.stderr[-3000:]
    assert "--collective-timeout-s" in run.stderr  # the error names the flag, not the parameter
    assert not json.loads((tmp_path / "stuck" / "manifest.json").read_text())["complete"]


def test_a_parquet_corpus_gives_the_same_shards_in_one_process_and_under_torchrun(tiny_lm_dir, tmp_path, one_process):
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mechscope.data.text import read_documents

    docs = list(read_documents(SMALL_TEXT))
    random.Random(0).shuffle(docs)
    pq.write_table(pa.table({"content": docs}), tmp_path / "docs.parquet", row_group_size=50)
    source = f"parquet:{tmp_path / 'docs.parquet'}"
    shards = {name: digest for name, digest in one_process.items() if name != "manifest.json"}

    wrong = torchrun_cli(harvest_argv(tiny_lm_dir, tmp_path / "wrong", source), 0)
    assert wrong.returncode != 0 and "no column --text-column='text'" in wrong.stderr, wrong.stderr[-2000:]
    single = torchrun_cli(harvest_argv(tiny_lm_dir, tmp_path / "one", source) + ["--text-column", "content"], 0)
    assert single.returncode == 0, single.stderr[-3000:]
    two = torchrun_cli(
        harvest_argv(tiny_lm_dir, tmp_path / "two", source) + ["--text-column", "content"], 2, timeout=TIMEOUT
    )
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    for out in (tmp_path / "one", tmp_path / "two"):
        got = file_digests(out)
        assert json.loads((out / "manifest.json").read_text())["settings"]["corpus"]["source"] == source
        assert {name: digest for name, digest in got.items() if name != "manifest.json"} == shards

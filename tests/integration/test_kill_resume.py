"""Keeps docs/kill-resume.md true: real `mechscope harvest` and `mechscope train` processes are killed with
SIGKILL at three moments each (fault points, mechscope.faults), re-run, and must end byte-identical to an
uninterrupted run. scripts/kill_table.py runs the full table (8 + 1 moments per stage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import SMALL_TEXT, describe_output, file_digests, kill_and_resume, train_result_digests

pytestmark = pytest.mark.slow


def harvest_argv(model, out: Path) -> list[str]:
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
        SMALL_TEXT,
        "--context-length",
        "32",
        "--val-fraction",
        "0.1",
        "--out",
        str(out),
    ]


def train_argv(store, out: Path) -> list[str]:
    return [
        "train",
        "--store",
        str(store),
        "--site",
        "resid_post.1",
        "--out",
        str(out),
        "--arch",
        "topk",
        "--latents",
        "64",
        "--k",
        "4",
        "--steps",
        "40",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "10",
        "--log-every",
        "20",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
        "--no-progress",
        "--device",
        "cpu",
    ]


train_result = train_result_digests


def _check(rows: list[dict]) -> None:
    for r in rows:
        assert r["killed"], f"{r['fault']}: the run was not killed there"
        assert r["resumed_rc"] == 0, f"{r['fault']}: the re-run failed\n{r['stderr']}"
        assert r["identical"], (
            f"{r['fault']}: resumed to a different result (left on disk: {r['on_disk']}); {r.get('diff')}"
        )


def test_harvest_and_train_resume_identically_after_kill9_at_fault_points(tiny_lm_dir, tmp_path):
    (tmp_path / "h").mkdir()
    # 1,200 tokens: 40 training contexts in 5 shards, then 1 held-out shard.
    rows = kill_and_resume(
        lambda o: harvest_argv(tiny_lm_dir, o),
        tmp_path / "h",
        ["atomic:train-00001.safetensors@1", "harvest.shard_saved@3", "harvest.before_final_manifest@1"],
        file_digests,
        describe_output,
    )
    _check(rows)
    assert "1 *.tmp" in rows[0]["on_disk"] and "manifest lists 1 shard(s)" in rows[0]["on_disk"]
    assert (
        "3 shard file(s)" in rows[1]["on_disk"] and "manifest lists 2 shard(s)" in rows[1]["on_disk"]
    )  # the 3rd is unlisted

    store = tmp_path / "h" / "whole"
    (tmp_path / "t").mkdir()
    rows = kill_and_resume(
        lambda o: train_argv(store, o),
        tmp_path / "t",
        ["train.step@17", "atomic:checkpoint.safetensors@3", "atomic:sae.safetensors@1"],
        train_result,
        describe_output,
    )
    _check(rows)
    assert "checkpoint at step 10" in rows[0]["on_disk"] and "checkpoint at step 20" in rows[1]["on_disk"]
    assert "checkpoint at step 40" in rows[2]["on_disk"]

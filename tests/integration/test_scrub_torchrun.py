"""Causal scrubbing's seeds dealt out over two CPU processes under torchrun (gloo): seed s on rank s mod 2, the
per-seed losses gathered; the command prints once, and every number (losses, intervals, recovered, per-seed
losses, forward passes) is that of one process running every seed."""

from __future__ import annotations

from pathlib import Path

from tests.harness import one_and_two_ranks

HYPOTHESIS = Path(__file__).resolve().parents[2] / "examples" / "scrub" / "parens-correct.yaml"


def test_scrub_seeds_over_two_ranks_give_the_result_of_one_process():
    argv = ["scrub", str(HYPOTHESIS), "--examples", "120", "--seeds", "3", "--json"]
    one, two = one_and_two_ranks(argv)
    assert two == one
    assert len(one["per_seed"]) == 3 and len(set(one["per_seed"])) == 3  # three seeds, each its own draws

"""A circuit's exact patches dealt out over two CPU processes under torchrun (gloo): ``--method exact``'s one forward
per node, and the budget of exact edge patches an edge method is checked against, patch i on rank i mod 2 and
gathered. The command prints once, and every number (scores, circuit, faithfulness, agreement with exact patching,
forward passes) is that of one process; only the wall-clock times differ."""

from __future__ import annotations

import pytest

from tests.harness import one_and_two_ranks


def _without_times(out: dict) -> dict:
    out = {k: v for k, v in out.items() if k != "total_wall_s"}
    out["cost"] = {k: v for k, v in out["cost"].items() if k != "wall_s"}
    return out


@pytest.mark.parametrize(
    "method", [["--method", "exact", "--top", "6"], ["--method", "eap", "--top", "10", "--budget", "9"]]
)
def test_exact_patches_over_two_ranks_give_the_result_of_one_process(method, zoo_induction):
    argv = ["circuit", "--model", "zoo:induction", *method, "--examples", "40", "--json"]
    one, two = one_and_two_ranks(argv)
    assert _without_times(two) == _without_times(one)
    if method[1] == "exact":
        assert one["cost"]["scored"] > 10 and len({s["effect"] for s in one["scores"]}) > 5  # many distinct patches
    else:
        assert one["agreement_with_exact"]["budget"] == 9

"""mechscope.distributed under torchrun (two CPU processes, gloo): rank 0's objects reach every rank, every rank's
objects reach every rank in rank order, and a
collective whose partner rank has gone ends in CollectiveError within the timeout, never a hang."""

from __future__ import annotations

import textwrap

import pytest

from tests.harness import torchrun_script

pytestmark = pytest.mark.slow  # each test starts torchrun and two interpreters

WORKER = textwrap.dedent(
    """
    import os, sys
    from mechscope.distributed import CollectiveError, World

    def say(line):  # one write per line: the ranks share the pipe, and a short write is not interleaved
        os.write(1, (line + "\\n").encode())

    world = World.from_env("cpu", timeout_s=3)
    say(f"got {world.rank} {world.broadcast({'shards': [1, 3]} if world.is_main else None, 'the test broadcast')}")
    say(f"gathered {world.rank} {world.gather(f'from {world.rank}', 'the test gather of names')}")
    if world.rank == 1:
        os._exit(0)  # leaves without reaching the collective below (and without the group's teardown)
    try:
        import torch
        if sys.argv[1] == "barrier":
            world.barrier("the test barrier")
        elif sys.argv[1] == "all_reduce":
            world.all_reduce(torch.ones(3))
        elif sys.argv[1] == "gather":
            world.gather({"chain": 0}, "the test gather")
        elif sys.argv[1] == "collect":
            world.collect({"shard": 0}, "the test collect")
        elif sys.argv[1] == "sum_partials":  # a CLT split by layers: the partial outputs' sum
            world.sum_partials(torch.ones(3, requires_grad=True))
        else:  # an SAE's own collective, outside World (under the process group's timeout)
            from mechscope.sae.batchtopk import global_kth_largest
            global_kth_largest(torch.ones(4, 3), 2)
    except CollectiveError as err:
        say(f"named: {err}")
        sys.exit(3)
    """
)


WHAT = {
    "barrier": "the test barrier failed or did not complete within 3 s",
    "all_reduce": "all-reduce (sum) failed or did not complete within 3 s",
    "gather": "the test gather failed or did not complete within 3 s",
    "collect": "the test collect failed or did not complete within 3 s",
    "sum_partials": "the all-reduce of the ranks' partial outputs failed or did not complete within 3 s",
    "batchtopk": "BatchTopK's all-gather of the top activations failed or did not complete within the process group's timeout",
}


@pytest.mark.parametrize("collective", sorted(WHAT))
def test_a_collective_without_its_partner_ends_in_a_named_error(tmp_path, collective):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = torchrun_script(script, [collective], 2, timeout=120)
    assert "got 0 {'shards': [1, 3]}" in run.stdout and "got 1 {'shards': [1, 3]}" in run.stdout, run.stderr[-3000:]
    assert "gathered 0 ['from 0', 'from 1']" in run.stdout and "gathered 1 ['from 0', 'from 1']" in run.stdout
    assert f"named: rank 0 of 2: {WHAT[collective]}" in run.stdout, run.stdout + run.stderr[-3000:]
    assert run.returncode != 0

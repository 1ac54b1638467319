"""mechscope.distributed without a process group: what World.from_env refuses before it joins one."""

from __future__ import annotations

import pytest

from mechscope.distributed import World
from mechscope.errors import UsageError


def test_alone_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = World.from_env("cpu", timeout_s=7)
    assert (world.rank, world.size, world.device, world.timeout_s, world.is_main) == (0, 1, "cpu", 7, True)


def test_under_torchrun_a_rank_runs_on_its_own_gpu_only(monkeypatch):
    # Two ranks on one GPU cannot share NCCL: cuda:1 on local rank 0 is refused before any group is joined.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(
        UsageError, match=r"`device` cuda:1: under torchrun each rank runs on cuda:LOCAL_RANK \(this one on cuda:0\)"
    ):
        World.from_env("cuda:1")


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_a_timeout_must_be_positive(timeout):
    with pytest.raises(UsageError, match="`collective_timeout_s`"):
        World.from_env("cpu", timeout_s=timeout)


def test_shares_are_disjoint_round_robin_and_cover_every_piece():
    shares = [World(rank=r, size=3).share(7) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().share(2) == [0, 1] and World(rank=2, size=3).share(2) == []


def test_alone_keeps_the_device_and_timeout_and_gathers_itself():
    one = World(rank=1, size=2, device="cpu", timeout_s=9).alone()
    assert (one.rank, one.size, one.device, one.timeout_s) == (0, 1, "cpu", 9)
    assert one.gather({"x": 1}) == [{"x": 1}]


def test_map_computes_this_ranks_share_and_returns_every_result_in_order(monkeypatch):
    """Rank r of 3 calls fn only on its share; the gathered parts (stubbed: what the other ranks would send) come
    back in index order; alone, map is the plain list."""
    calls = {r: [] for r in range(3)}

    def fn_of(r):
        return lambda i: calls[r].append(i) or i * i

    parts = [{i: i * i for i in World(rank=r, size=3).share(7)} for r in range(3)]
    for r in range(3):
        world = World(rank=r, size=3)
        monkeypatch.setattr(World, "gather", lambda self, obj, what="gather", r=r: [*parts[:r], obj, *parts[r + 1 :]])
        assert world.map(fn_of(r), 7) == [i * i for i in range(7)]
    assert calls == {0: [0, 3, 6], 1: [1, 4], 2: [2, 5]}
    assert World().map(lambda i: -i, 3) == [0, -1, -2]

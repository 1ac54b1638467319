"""LLC chains dealt out over two CPU processes under torchrun (gloo): rank r runs chains r, r+2, …, every rank's
draws are gathered, and λ̂, its chains and diagnostics equal those of one process running all the chains."""

from __future__ import annotations

import json
import textwrap

import numpy as np

from tests.harness import one_and_two_ranks, torchrun_script

WORKER = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from mechscope.distributed import World
    from mechscope.slt.estimator import LLCConfig, estimate_llc
    from mechscope.slt.known import known_model
    world = World.from_env("cpu", timeout_s=60)
    km = known_model("rrr:4,3,4,1", n=2000, seed=0)
    cfg = LLCConfig(chains=5, draws=30, burn_in=10, epsilon=1e-3, gamma=100.0, batch_size=200, mala_every=4, seed=3)
    res = estimate_llc(km.model, km.loss_fn, (km.inputs, km.targets), cfg, progress=False, world=world)
    # one file per rank: two ranks printing to one pipe can interleave their lines
    open(f"{sys.argv[1]}/rank{world.rank}.json", "w").write(json.dumps({
        "rank": world.rank, "size": world.size, **{k: v for k, v in res.summary().items() if k != "config"},
        "traces": res.loss_traces.tolist(), "dist": res.distances.tolist()}))
    world.close()
    """
)


def launch(tmp_path, ranks: int) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    results = tmp_path / f"results-{ranks}"
    results.mkdir()
    proc = torchrun_script(script, [str(results)], ranks, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [json.loads((results / f"rank{r}.json").read_text()) for r in range(max(ranks, 1))]


def test_chains_over_two_ranks_give_the_estimate_of_one_process(tmp_path):
    (one,) = launch(tmp_path, ranks=0)
    two = launch(tmp_path, ranks=2)
    assert [r["rank"] for r in two] == [0, 1] and one["size"] == 1
    for got in two:  # every rank returns the estimate over all 5 chains (rank 0 ran 0, 2, 4; rank 1 ran 1, 3)
        assert len(got["llc_chains"]) == 5
        np.testing.assert_allclose(got["llc_chains"], one["llc_chains"], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got["traces"], one["traces"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got["dist"], one["dist"], rtol=1e-9, atol=1e-12)
        for key in ("llc_hat", "llc_se", "init_loss", "nbeta"):
            assert abs(got[key] - one[key]) <= 1e-9 * max(1.0, abs(one[key])), key
    assert len(set(np.round(one["llc_chains"], 6))) == 5  # the chains differ: each has its own seed


def test_the_llc_command_under_torchrun_prints_once_the_estimate_of_one_process(tmp_path):
    argv = [
        "llc",
        "--known",
        "rrr:4,3,4,1",
        "--no-calibrate",
        "--chains",
        "3",
        "--draws",
        "40",
        "--burn-in",
        "10",
        "--epsilon",
        "1e-5",
        "--no-progress",
        "--json",
    ]
    one, two = one_and_two_ranks(argv, timeout=180)
    assert two["llc_chains"] == one["llc_chains"] and two["llc_hat"] == one["llc_hat"] and one["llc_hat"] > 0
    assert two["config"]["ranks"] == 2

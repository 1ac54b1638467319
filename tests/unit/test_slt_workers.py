"""Chains side by side (``LLCConfig.workers``): the schedule must not change λ̂, a failing chain must stop
the run with its own error, and the model and torch's thread count must come back as they were."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

from mechscope.errors import UsageError
from mechscope.slt import LLCConfig, default_nbeta, estimate_llc, known_model
from mechscope.slt.estimator import PARALLEL_MIN_PARAMS, chain_workers


def _mlp_problem(n: int = 1024) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 4))
    X = torch.randn(n, 32)
    with torch.no_grad():
        y = model(X).argmax(-1)
    return model, (X, y)


def _ce(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def test_automatic_workers_follow_size_chains_and_threads():
    big = [torch.zeros(PARALLEL_MIN_PARAMS)]
    small = [torch.zeros(PARALLEL_MIN_PARAMS - 1)]
    threads = torch.get_num_threads()
    assert chain_workers(LLCConfig(chains=4), small) == 1
    assert chain_workers(LLCConfig(chains=4), big) == min(4, threads)
    assert chain_workers(LLCConfig(chains=1), big) == 1
    assert chain_workers(LLCConfig(chains=4, workers=3), small) == 3  # explicit wins, whatever the size
    assert chain_workers(LLCConfig(chains=2, workers=8), small) == 2  # never more than the chains
    with pytest.raises(UsageError):
        LLCConfig(workers=-1)


def test_side_by_side_chains_give_the_same_estimate_as_one_after_another():
    model, data = _mlp_problem()
    assert sum(p.numel() for p in model.parameters()) >= PARALLEL_MIN_PARAMS
    w0 = copy.deepcopy(model.state_dict())
    threads = torch.get_num_threads()
    base = dict(epsilon=1e-4, gamma=100.0, chains=3, draws=60, burn_in=10, batch_size=128, mala_every=10)
    one = estimate_llc(model, _ce, data, LLCConfig(**base, workers=1), progress=False)
    side = estimate_llc(model, _ce, data, LLCConfig(**base, workers=2), progress=False)
    assert one.config["workers_used"] == 1 and side.config["workers_used"] == 2
    # each chain has its own batch and noise generators: only float rounding (1 vs 2 threads per matmul) differs
    torch.testing.assert_close(torch.tensor(side.loss_traces), torch.tensor(one.loss_traces), rtol=1e-3, atol=1e-4)
    assert side.llc_hat == pytest.approx(one.llc_hat, rel=1e-3)
    assert len(side.distances[0]) == len(one.distances[0]) > 0 and side.mala_accept == pytest.approx(
        one.mala_accept, rel=1e-2
    )
    assert torch.get_num_threads() == threads
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k]), k


@pytest.mark.slow  # chains in worker processes
def test_side_by_side_matches_a_known_answer():
    # regular:4 (λ = 2) run with workers=2 explicitly (the automatic choice would run this tiny model serially)
    km = known_model("regular:4", n=4000)
    nb = default_nbeta(4000)
    cfg = LLCConfig(epsilon=0.1 / nb, gamma=1.0, chains=4, draws=800, burn_in=200, batch_size=500, workers=2)
    res = estimate_llc(km.model, km.loss_fn, (km.inputs, km.targets), cfg, progress=False)
    assert res.config["workers_used"] == 2
    assert res.llc_hat == pytest.approx(2.0, rel=0.1)


def test_a_failing_chain_stops_the_others_and_raises_its_error():
    model, data = _mlp_problem()
    w0 = copy.deepcopy(model.state_dict())
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky(m: nn.Module, batch) -> torch.Tensor:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 31:  # call 1 is L(w*) on the full data (one 4096-row batch); then one call per SGLD step
            raise RuntimeError("chain blew up on purpose")
        return _ce(m, batch)

    cfg = LLCConfig(epsilon=1e-4, gamma=100.0, chains=2, draws=400, burn_in=0, batch_size=128, mala_every=0, workers=2)
    with pytest.raises(RuntimeError, match="on purpose"):
        estimate_llc(model, flaky, data, cfg, progress=False)
    assert calls["n"] < 200  # the other chain stopped early instead of running its 400 steps
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k]), k


class _Uncopyable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.lock = threading.Lock()  # deepcopy cannot copy a lock

    def forward(self, x):
        return self.lin(x)


def test_a_model_that_cannot_be_copied():
    torch.manual_seed(0)
    model = _Uncopyable()
    X = torch.randn(512, 4)
    y = torch.randint(0, 2, (512,))
    base = dict(epsilon=1e-4, gamma=100.0, chains=2, draws=20, burn_in=0, batch_size=64, mala_every=0)
    with pytest.raises(UsageError, match="pass `workers`=1$"):
        estimate_llc(model, _ce, (X, y), LLCConfig(**base, workers=2), progress=False)
    # the automatic choice falls back to one chain at a time, and says so
    from mechscope.slt import estimator

    old, threads = estimator.PARALLEL_MIN_PARAMS, torch.get_num_threads()
    estimator.PARALLEL_MIN_PARAMS = 1
    torch.set_num_threads(2)  # so that the automatic choice asks for two chains at once on any machine
    try:
        with pytest.warns(UserWarning, match="one at a time"):
            res = estimate_llc(model, _ce, (X, y), LLCConfig(**base), progress=False)
    finally:
        estimator.PARALLEL_MIN_PARAMS = old
        torch.set_num_threads(threads)
    assert res.config["workers_used"] == 1 and res.loss_traces.shape == (2, 20)


def test_estimates_run_from_two_threads_at_once_restore_the_thread_count():
    model, data = _mlp_problem()
    other = copy.deepcopy(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = LLCConfig(
            epsilon=1e-4, gamma=100.0, chains=2, draws=30, burn_in=0, batch_size=128, mala_every=0, workers=2
        )
        out: list = [None, None]

        def run(i: int, m: nn.Module) -> None:
            out[i] = estimate_llc(m, _ce, data, cfg, progress=False)

        ts = [threading.Thread(target=run, args=(i, m)) for i, m in enumerate((model, other))]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert torch.get_num_threads() == 2  # not left at 1 by whichever run ended second
        assert out[0].llc_hat == pytest.approx(out[1].llc_hat, rel=1e-3)  # same model, same seeds
    finally:
        torch.set_num_threads(threads)

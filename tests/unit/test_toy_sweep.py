"""The sparsity sweep's options and its plateau count, on a tiny setting (n = 5, m = 2, a few steps)."""

from __future__ import annotations

import pytest

from mechscope.errors import UsageError
from mechscope.toy.sweep import SweepConfig, plateau_hits, sparsity_sweep


def tiny(**kw) -> SweepConfig:
    return SweepConfig(
        **{"n_features": 5, "dims": 2, "p_min": 0.1, "points": 2, "instances": 1, "steps": 5, "batch_size": 16, **kw}
    )


def test_lr_reaches_the_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    slow, fast = (sparsity_sweep(tiny(lr=lr), progress=False) for lr in (1e-4, 1e-1))
    # Five steps at lr 1e-4 barely move W from its initialisation; at 1e-1 the norms change by far more.
    start = sparsity_sweep(tiny(lr=1e-12), progress=False)
    moved = [sum(abs(a - b) for a, b in zip(run[0]["norms"], start[0]["norms"])) for run in (slow, fast)]
    assert moved[0] < 0.01 < moved[1]


def test_lr_must_be_positive():
    with pytest.raises(UsageError, match=r"`lr` must be positive and finite, got 0"):
        tiny(lr=0.0)


def test_plateau_hits_count_values_near_each_fraction():
    hits = plateau_hits([0.5, 0.51, 0.405, 0.335, 0.7, 1.0], plateaus=(1.0, 0.5, 0.4, 1 / 3), tol=0.02)
    assert hits == {1.0: 1, 0.5: 2, 0.4: 1, 1 / 3: 1}
    with pytest.raises(UsageError, match="`tol`"):
        plateau_hits([0.5], tol=0)

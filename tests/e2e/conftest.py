"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def tiny_detect_task(monkeypatch):
    """Every ``mechscope detect`` task name loads a stand-in task instead (no model to train, no data set): a small
    random MLP with sites "0" and "2", 200 Gaussian trusted inputs, 200 clean ones and 200 shifted anomalies."""
    from mechscope.anomaly import benchmarks

    def load(name: str):
        g = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        x = torch.randn(400, 4, generator=g)
        return benchmarks.Benchmark(
            name,
            model,
            ["0", "2"],
            trusted=x[:200],
            clean=x[200:],
            anomalous=torch.randn(200, 4, generator=g) + 3,
            probe_anomalous=torch.randn(50, 4, generator=g) + 3,
        )

    monkeypatch.setattr(benchmarks, "load_benchmark", load)

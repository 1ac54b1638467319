"""AtP against exact patching on SmolLM2's IOI task (two layers of nodes, so it stays under a minute)."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits import agreement, atp_effects, exact_effects
from mechscope.circuits.discover import hf_nodes
from mechscope.circuits.faithfulness import node_faithfulness
from mechscope.circuits.tasks import ioi_task

pytestmark = pytest.mark.slow


def test_ioi_pairs_align_and_atp_agrees_with_exact_on_the_last_layers(one_thread):
    model, task = ioi_task(6)
    assert task.clean.shape == task.corrupt.shape and (task.clean != task.corrupt).any()
    with torch.no_grad():
        assert (
            float(task.metric(model(task.clean))) > float(task.metric(model(task.corrupt))) + 0.5
        )  # the model does IOI
    nodes = list(hf_nodes(model, layers=[28, 29]).values())
    exact = exact_effects(model, nodes, task.clean, task.corrupt, task.metric)
    atp = atp_effects(model, nodes, task.clean, task.corrupt, task.metric)
    ag = agreement(atp, exact)
    assert ag["spearman"] > 0.5, ag
    assert exact.forwards == len(nodes) + 2 and atp.forwards == 2
    f = node_faithfulness(model, nodes, nodes, task, "mean", n_boot=100)
    assert f["recovered"] == pytest.approx(1.0, abs=1e-4)  # keeping every node is the full model

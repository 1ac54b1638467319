"""Faithfulness and the hypothesis export on the model with dead heads, where the true circuit is known:
the true edge set recovers exactly 100% (every edge outside it has effect 0 under any ablation), and as a
causal-scrubbing hypothesis it scrubs to the clean loss."""

from __future__ import annotations

import pytest
import torch
from test_circuits_edges import data, metric, model_with_dead_heads, true_edges

from mechscope.circuits.discover import DiscoverConfig, discover, node_circuit_edges
from mechscope.circuits.export import circuit_hypothesis, hypothesis_dict, load_circuit, save_circuit
from mechscope.circuits.faithfulness import edge_faithfulness
from mechscope.circuits.residual import zoo_graph
from mechscope.circuits.tasks import CircuitTask
from mechscope.errors import UsageError
from mechscope.scrub import run_hypothesis
from mechscope.scrub.tasks import Target
from mechscope.task import Task


def task_for(model, clean, corrupt):
    """The answers are the model's own predictions at the last position, so ablating its edges costs a loss that
    can be recovered (with random answers the empty circuit can even *lower* the loss, and loss recovered is n/a)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        answers = model(clean)[:, -1].argmax(-1)
    train = torch.randint(0, 12, (500, clean.shape[1]), generator=g)
    scoring = Task("toy", train, train[:, -1], clean, answers, positions=(-1,), n_classes=12)
    kl = torch.zeros_like(clean, dtype=torch.bool)
    kl[:, -1] = True
    return CircuitTask("toy", clean, corrupt, metric, "logit 3 at the last position", scoring, answers, kl)


@pytest.mark.parametrize("ablation", ["mean", "resample", "corrupt"])
def test_the_true_circuit_recovers_everything_and_a_part_of_it_does_not(ablation):
    model, (clean, corrupt) = model_with_dead_heads(), data()
    graph, task = zoo_graph(model), task_for(model, clean, corrupt)
    truth = [e for e in graph.edges if e.name in true_edges(graph)]
    f = edge_faithfulness(model, graph, truth, task, ablation, n_boot=200)
    assert f["loss_circuit"] == pytest.approx(f["loss_full"], abs=1e-5)
    assert f["recovered"] == pytest.approx(1.0, abs=1e-4)
    assert f["recovered_ci"][0] <= 1.0 + 1e-4 and f["recovered_ci"][1] >= 1.0 - 1e-4
    assert f["loss_empty"] != pytest.approx(f["loss_full"], abs=1e-3)
    part = edge_faithfulness(model, graph, [e for e in truth if e.writer != "L1H0"], task, ablation, n_boot=200)
    assert f["recovered_note"] is None and f["loss_empty"] > f["loss_full"]
    assert abs(part["recovered"] - 1) > 1e-3  # dropping a head that matters is seen
    assert f["loss_rock"] == pytest.approx(float(task.rock().mean()))


def test_discover_reports_every_field_and_the_true_heads():
    model, (clean, corrupt) = model_with_dead_heads(), data()
    task = task_for(model, clean, corrupt)
    r = discover(model, task, DiscoverConfig(method="acdc", threshold=1e-7, budget=10))
    assert {e["writer"] + "->" + e["reader"] for e in r["edges"]} == true_edges(zoo_graph(model))
    assert r["agreement_with_exact"]["budget"] == 10 and r["faithfulness"]["recovered"] == pytest.approx(1.0, abs=1e-4)
    node = discover(model, task, DiscoverConfig(method="atp", top=4, budget=0))
    assert {n["name"] for n in node["nodes"]} <= {
        "L0H1",
        "L0H1.q",
        "L0H1.k",
        "L0H1.v",
        "L1H0",
        "L1H0.q",
        "L1H0.k",
        "L1H0.v",
    }
    assert node["agreement_with_exact"] is None  # budget 0: no exact check asked for
    kept = node_circuit_edges(zoo_graph(model), {"L1H0"})
    assert {e.name for e in kept} == {"L1H0->logits", "embed->logits"}


def test_a_saved_circuit_loads_and_scrubs_to_the_clean_loss(tmp_path):
    model, (clean, corrupt) = model_with_dead_heads(), data()
    task = task_for(model, clean, corrupt)
    r = discover(model, task, DiscoverConfig(method="exact", top=8, budget=0))
    r = {
        **r,
        "edges": [
            {"writer": e.split("->")[0], "reader": e.split("->")[1], "effect": None}
            for e in sorted(true_edges(zoo_graph(model)))
        ],
    }
    files = save_circuit(tmp_path / "c.json", r, "toy")
    assert [p.name for p in files] == ["c.json", "c.hypothesis.yaml"]
    assert load_circuit(files[0])["edges"] == r["edges"]
    hyp = circuit_hypothesis(load_circuit(files[0]))
    assert set(hypothesis_dict(r)["nodes"]["output"]["children"]) == {"embed", "L0H1", "L1H0"}
    from mechscope.scrub import load_hypothesis

    assert load_hypothesis(files[1]).root.children  # the YAML mechscope scrub reads
    import dataclasses

    hyp = dataclasses.replace(hyp, seeds=2, examples=32)
    res = run_hypothesis(hyp, Target(model, task.scoring, clean, task.targets, "toy"))
    assert res.loss_scrubbed == pytest.approx(res.loss_clean, abs=1e-4)
    with pytest.raises(UsageError, match="not a mechscope circuit"):
        (tmp_path / "bad.json").write_text("{}")
        load_circuit(tmp_path / "bad.json")

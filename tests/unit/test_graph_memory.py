"""Issue 25: attribution graphs with bounded memory (``max_latents``, ``max_memory_gb``, :mod:`mechscope.graph.memory`).

Known answers:

- the replay batch (targets per backward pass), which the memory cap lowers, does not change the graph: the rows are
  equal to 1e-6 with 1, 3 and 8 copies, with and without a latent cap;
- a capped graph keeps exactly ``max_latents`` latents, stays exact (edges + constant = value), its rows are the full
  graph's on the kept latents' columns, and each error node's column is the full graph's plus the columns of the
  dropped latents at its (layer, position); the target rows and the dense matrix hold the same edges, and pruning and
  scoring the rows gives what the dense matrix gives;
- the memory estimate bounds the measured peak resident set (VmHWM) of the attribution, pruning and scoring, and is
  within a small factor of it; under a cap between the peak at batch 1 and the peak at the full batch the plan lowers
  the batch and the measured peak stays under the cap; a cap below the need is refused naming the parameter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.graph.attribute import attribute, check_exact, select_nodes
from mechscope.graph.memory import GIB, estimate, kept_bytes, peak_rss_bytes, plan_memory, reset_peak_rss, rss_bytes
from mechscope.graph.prune import prune, scores
from mechscope.graph.replacement import ReplacementModel
from tests.helpers_families import build
from tests.unit.test_graph_families import IDS, _transcoders


def _llama(**overrides):
    return build("llama", **overrides).requires_grad_(False)


def _setup(ids=IDS, **overrides):
    model = _llama(**overrides)
    rm = ReplacementModel(model, _transcoders(model))
    rec = rm.record(ids)
    return rm, rec, select_nodes(rec, max_logits=4, logit_probability=0.9, const_pos0=True)


@pytest.mark.parametrize("max_latents", [0, 11])
def test_the_replay_batch_does_not_change_the_graph(max_latents):
    rm, rec, nodes = _setup()
    assert nodes.n_lat > 20
    graphs = [attribute(rm, rec, nodes, batch_size=8, max_latents=max_latents, replay_batch=b) for b in (8, 3, 1)]
    ref = graphs[0].rows
    assert int((ref != 0).sum()) > 100
    for g in graphs[1:]:
        assert torch.equal(g.nodes.latent, graphs[0].nodes.latent) and torch.equal(g.nodes.pos, graphs[0].nodes.pos)
        assert float((g.rows - ref).abs().max()) <= 1e-6 * float(ref.abs().max())


def test_a_capped_graph_folds_the_dropped_latents_into_the_error_nodes_and_stays_exact():
    rm, rec, full = _setup()
    whole = attribute(rm, rec, full, batch_size=4)
    capped = attribute(rm, rec, full, batch_size=4, max_latents=9)
    n = capped.nodes
    assert n.n_lat == 9 and full.n_lat > 20 and n.size == full.size - full.n_lat + 9
    c = check_exact(capped, rec, rm)
    assert c["max_relative_residual"] < 1e-5 and c["max_latent_gap"] < 1e-4, c
    # the kept latents in the full graph's numbering
    key = {(int(l), int(p), int(i)): j for j, (l, p, i) in enumerate(zip(full.layer, full.pos, full.latent))}
    kept = torch.tensor([key[(int(l), int(p), int(i))] for l, p, i in zip(n.layer, n.pos, n.latent)])
    rows_full = whole.rows[torch.cat([kept, torch.arange(full.n_lat, full.n_lat + full.n_logit)])]
    assert torch.allclose(capped.rows[:, :9], rows_full[:, kept], atol=1e-6)  # kept latents: the same edges
    dropped = torch.ones(full.n_lat, dtype=torch.bool)
    dropped[kept] = False
    for l in range(full.n_layers):
        for p in range(full.T):
            into = dropped & (full.layer == l) & (full.pos == p)
            want = rows_full[:, full.error_index(l, p)] + rows_full[:, : full.n_lat][:, into].sum(1)
            assert torch.allclose(capped.rows[:, n.error_index(l, p)], want, atol=1e-6)
    assert bool(dropped.any())
    # the rows and the dense matrix are the same graph to prune and score
    dense = capped.adjacency
    assert torch.equal(dense[capped.targets], capped.rows) and int((dense != 0).sum()) == int((capped.rows != 0).sum())
    a, b = prune(dense, n, 0.8, 0.98), prune(capped.rows, n, 0.8, 0.98, targets=capped.targets)
    assert torch.equal(a.node_mask, b.node_mask) and torch.equal(a.edge_mask, b.edge_mask)
    assert torch.allclose(a.influence, b.influence, atol=1e-12)
    assert scores(dense, n) == pytest.approx(scores(capped.rows, n, targets=capped.targets))


def test_a_cap_below_the_need_is_refused_naming_the_parameter():
    rm, rec, nodes = _setup()
    with pytest.raises(UsageError, match="`max_memory_gb` 0.001.*`max_latents`"):
        plan_memory(rm, rec, nodes, batch_size=8, max_latents=0, max_memory_gb=0.001)


def _measured_peak(rm, rec, nodes, batch_size, replay_batch):
    """Peak resident bytes while attributing, pruning and scoring (VmHWM reset first)."""
    assert reset_peak_rss()
    att = attribute(rm, rec, nodes, batch_size=batch_size, replay_batch=replay_batch)
    pr = prune(att.rows, att.nodes, 0.8, 0.98, targets=att.targets)
    scores(att.rows, att.nodes, targets=att.targets)
    del att, pr
    return peak_rss_bytes()


def measure_in_this_process() -> dict:
    """The estimate, the measured peak, and the plan under a cap between batch 1's need and batch 32's (run in a fresh
    process: memory other tests freed would be reused here and hide the growth)."""
    # a vocabulary and a prompt large enough that the graph's own memory (logits of B copies, kept replay) dwarfs
    # the allocator's noise: ~100 MB at batch 32
    torch.manual_seed(0)
    ids = torch.randint(0, 4000, (96,))
    rm, rec, nodes = _setup(ids, vocab_size=4000, max_position_embeddings=128)
    est = estimate(rm, rec, nodes, 32)
    before = rss_bytes()
    measured = _measured_peak(rm, rec, nodes, 32, 32)
    # the resident set now (the heap keeps some of what the first graph freed) is part of every estimate from here on
    one, full = estimate(rm, rec, nodes, 1), estimate(rm, rec, nodes, 32)
    cap = (one["peak"] + 0.7 * (full["peak"] - one["peak"])) / GIB
    B, got = plan_memory(rm, rec, nodes, batch_size=32, max_latents=0, max_memory_gb=cap)
    return {
        "estimate": est,
        "before": before,
        "measured": measured,
        "cap": cap,
        "batch": B,
        "planned": got["peak"],
        "measured_capped": _measured_peak(rm, rec, nodes, 32, B),
    }


@pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux's /proc/self/clear_refs to measure a peak")
def test_the_estimate_bounds_the_measured_peak_and_the_cap_holds():
    root = Path(__file__).resolve().parents[2]
    code = "import json; from tests.unit.test_graph_memory import measure_in_this_process as m; print(json.dumps(m()))"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    est, measured = r["estimate"], r["measured"]
    grown, need = measured - r["before"], est["peak"] - est["resident"]
    assert grown > 40e6, r  # the test measures something
    assert est["peak"] >= measured and need <= 4 * grown, r
    # under the cap the plan lowers the batch, and the measured peak stays under the cap
    assert 1 <= r["batch"] < 32 and r["planned"] <= r["cap"] * GIB, r
    assert r["measured_capped"] <= r["cap"] * GIB, r


def test_the_kept_replay_grows_linearly_with_the_prompt_per_copy():
    # known answer: what one more copy of the prompt adds to the kept replay doubles when T doubles. Broadcasting the
    # frozen pattern [1, H, T, T] over the batch copied it per copy (B·H·T² floats per layer kept for v's gradient),
    # which made the ratio ~3 on this model
    model = _llama(max_position_embeddings=256)
    rm = ReplacementModel(model, _transcoders(model))
    per_copy = []
    for T in (64, 128):
        rec = rm.record(torch.arange(T) % 90 + 5)
        per_copy.append(kept_bytes(rm, rec, 2) - kept_bytes(rm, rec, 1))
    assert per_copy[0] > 0 and 1.8 < per_copy[1] / per_copy[0] < 2.3, per_copy

"""A found circuit saved as JSON, and the same circuit as a causal-scrubbing hypothesis.

The hypothesis (:mod:`mechscope.scrub.hypothesis`) has the model's output as its root; its children are the
writers with an edge into the logits; each writer's children are the writers with an edge into any of its
inputs (q, k, v, or the MLP's input); the embedding is a leaf. Every feature is ``identity``.

What differs from the edge circuit: scrubbing patches a child's *site*, which every reader downstream of it
sees in that forward pass, while the edge circuit patches one edge at a time; and scrubbing resamples what is
outside the hypothesis from other inputs rather than mean-ablating it. The two measure the same claim at
different grain, so their numbers are close but not equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechscope.atomic import atomic_write_bytes, atomic_write_json
from mechscope.errors import UsageError
from mechscope.scrub.hypothesis import Hypothesis, hypothesis_from_dict


def hypothesis_dict(result: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """The circuit in ``result`` (from :func:`~mechscope.circuits.discover.discover`) as a hypothesis mapping."""
    graph = result.get("graph")
    if not graph or _sliced(graph):
        raise UsageError(
            "only zoo circuits export as hypotheses: this circuit has no residual graph, or its heads are slices "
            "of one site (a Hugging Face model), which a hypothesis's sites cannot name"
        )
    site = {w["name"]: w["site"] for w in graph["writers"]}
    node_of = {r["name"]: r["node"] for r in graph["readers"]}
    children: dict[str, set[str]] = {}
    for e in result["edges"]:
        children.setdefault(node_of[e["reader"]], set()).add(e["writer"])
    if not children.get("logits"):
        raise UsageError(
            "the circuit has no edge into the logits, so as a hypothesis it claims the output reads nothing; keep more edges"
        )
    nodes: dict[str, Any] = {"output": {"feature": "identity", "children": sorted(children["logits"])}}
    stack = list(children["logits"])
    while stack:
        n = stack.pop()
        if n in nodes:
            continue
        kids = sorted(children.get(n, ()))
        nodes[n] = {"sites": [site[n]], "feature": "identity", **({"children": kids} if kids else {})}
        stack += kids
    out: dict[str, Any] = {
        "root": "output",
        "nodes": nodes,
        "description": f"{result['method']} circuit for {result['task']} ({len(result['edges'])} edges)",
    }
    if model:
        out["model"] = model
    return out


def _sliced(graph: dict[str, Any]) -> bool:
    """Whether some writer is a slice of its site (a Hugging Face head)."""
    return any(w.get("span") for w in graph["writers"])


def circuit_hypothesis(result: dict[str, Any], model: str | None = None) -> Hypothesis:
    """The circuit as a :class:`~mechscope.scrub.hypothesis.Hypothesis` the scrub engine runs."""
    return hypothesis_from_dict(hypothesis_dict(result, model))


def save_circuit(path: str | Path, result: dict[str, Any], model: str | None = None) -> list[Path]:
    """Write the result as JSON at ``path`` and, for zoo circuits (whose heads are sites), the hypothesis beside it as
    ``<stem>.hypothesis.yaml`` (for ``mechscope scrub``). Returns the files written."""
    import yaml

    from mechscope.jsonout import plain

    path = Path(path)
    atomic_write_json(path, plain({**result, "model": model}))
    written = [path]
    if result.get("graph") and not _sliced(result["graph"]):
        hyp = path.with_name(path.stem + ".hypothesis.yaml")
        text = f"# {result['method']} circuit for {result['task']}\n" + yaml.safe_dump(
            hypothesis_dict(result, model), sort_keys=False
        )
        atomic_write_bytes(hyp, text.encode())
        written.append(hyp)
    return written


def load_circuit(path: str | Path) -> dict[str, Any]:
    """A circuit JSON written by :func:`save_circuit` (strict: it must hold ``edges`` and ``graph``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(
            f"cannot read circuit {path}: {e}; write one with `mechscope circuit … --save {path.name}`"
        ) from e
    missing = [k for k in ("method", "task", "nodes", "edges") if k not in data]
    if missing:
        raise UsageError(f"{path} is not a mechscope circuit (missing {', '.join(missing)})")
    return data

"""How much memory one prompt's attribution graph needs, and the replay batch that keeps it under a cap.

Shapes and sizes (bytes): T tokens, L layers, V outputs, B copies of the prompt in the replay batch (targets per
backward pass), n_t targets (latents kept + logit nodes), N nodes of the graph, N_a the nodes while attributing (every
active latent when ``max_latents`` drops some). The peak is the larger of two phases, on top of what the process
already holds (the model, the transcoders, the recorded forward and its frozen attention patterns, [H, T, T] per
layer: the one term quadratic in T, fixed by the model):

    attribution   MARGIN · (kept(B) + B·T·V·4 + 2·leaves(B) + seeds(B) + c·8·n_t·N_a)
                  kept(B) = k_0 + B·k_1, the tensors the replay's autograd graph keeps and the MLP inputs [B, T, d]
                  the backward passes are seeded at, counted by probing the replay
                  at B = 1 and B = 2 (saved-tensor hooks, each storage once, the resident ones left out); B·T·V·4 the
                  [B, T, V] logits (dropped after the forward but for the logit position); the leaves (the B copies of
                  the embeddings, codes and error nodes) and their gradients; the seeds, [B, T, d] per layer a
                  chunk's targets read; the target rows, the chunk being read and (c = 4 with ``max_latents``, else 2)
                  the copies the choice of latents makes; MARGIN (1.4) covers the backward's transient gradients
    graph         5·8·n_t·N + 8·T·V·6   the rows and the copies pruning and scoring make (normalised, masked,
                  scored), the losses' logits

With ``max_latents`` = m fixed, n_t ≤ m + 10 and N_a, N, kept(B) and the leaves grow linearly in T, so the peak is
linear in T but for the attention patterns. No dense [N, N] matrix (8·N² bytes, quadratic) is built: attribution,
pruning and scoring read the target rows, ``mechscope graph``'s report draws from the rows and the kept edges' list,
and ``adjacency.safetensors`` stores the rows (:mod:`mechscope.graph.saved`). Saving and the report come after
pruning's copies are freed and hold at most the rows, one serialised copy of them and 16·E bytes of kept edges
(E ≤ n_t·N), inside the graph phase's five copies.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.graph.attribute import Nodes
from mechscope.graph.replacement import Leaves, Recording, ReplacementModel

GIB = 2**30
MARGIN = 1.4
"""Factor on the attribution's parts for what they leave out: the backward passes' transient gradients and the
allocator's fragmentation. On SmolLM2 (bench/graph_memory.py) the measured growth was 5–9% over the parts' sum at
16–256 tokens, and 1.25 left the estimate 1.2% under the measured peak at 1,024 tokens (3 copies)."""


def rss_bytes() -> int:
    """The resident set of this process now (Linux /proc/self/statm; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """The high-water resident set of this process (VmHWM; 0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _storages(ts: Any) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in ts if isinstance(t, Tensor)}


def kept_bytes(rm: ReplacementModel, rec: Recording, batch: int) -> int:
    """Bytes of the tensors the replay's autograd graph keeps at ``batch`` copies and of the MLP inputs it returns
    (each storage once), not counting the ones already resident (parameters, the recording, the frozen patterns and
    norm scales) nor the leaves."""
    resident = _storages(p for m in [rm.model, *(tc.sae for tc in rm.tcs)] for p in m.parameters())
    resident |= _storages([rec.emb, rec.logits, *rec.mlp_in, *rec.acts, *rec.err, *rec.mlp_out])
    resident |= _storages(v for v in rm.freezer.store.values())
    leaves = Leaves.of(rec, batch, grad=True)
    resident |= _storages([leaves.emb, *leaves.acts, *leaves.err])
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in resident:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        xs, logits = rm.replay(rec, leaves)
    for x in xs:  # the MLP inputs are kept to seed the backward passes, saved by an op or not
        st = x.untyped_storage()
        if st.data_ptr() not in resident:
            seen[st.data_ptr()] = st.nbytes()
    del xs, logits
    return sum(seen.values())


def estimate(
    rm: ReplacementModel,
    rec: Recording,
    nodes: Nodes,
    batch: int,
    max_latents: int = 0,
    batch_size: int | None = None,
    kept: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Estimated peak resident bytes of :func:`mechscope.graph.attribute.attribute` with replay batch ``batch``
    and then pruning and scoring (formulas in the module docstring), by part; ``peak`` is the total. ``kept``:
    :func:`kept_bytes` at B = 1 and 2, when already probed."""
    k1, k2 = kept or (kept_bytes(rm, rec, 1), kept_bytes(rm, rec, 2))
    slope, const = max(k2 - k1, 0), max(2 * k1 - k2, 0)
    T, V = nodes.T, int(rec.logits.shape[-1])
    m = nodes.n_lat if not max_latents else min(max_latents, nodes.n_lat)
    n_t = m + nodes.n_logit
    N = nodes.size - nodes.n_lat + m
    el = rec.logits.element_size()
    leaf = sum(t.numel() * t.element_size() for t in [rec.emb, *rec.acts, *rec.err])
    chunk = batch_size or batch
    # distinct layers among one chunk's targets (each gets a [B, T, d_in] seed): at most a chunk's worth, at most L
    layers = (
        nodes.n_layers
        if max_latents
        else max(
            len(set(nodes.layer[c[c < nodes.n_lat]].tolist()))
            for c in torch.arange(nodes.size)[nodes.targets].split(chunk)
        )
    )
    d_in = max(int(x.shape[-1]) for x in rec.mlp_in)
    parts = {
        "resident": float(rss_bytes()),
        "kept_graph": float(const + batch * slope),
        "logits": float(batch * T * V * el),
        "leaves_and_grads": float(2 * batch * leaf),
        "seeds": float(min(layers, batch) * batch * T * d_in * el + batch * V * el),
        "rows": float((4 if max_latents else 2) * 8 * n_t * nodes.size),
    }
    attribution = parts["resident"] + MARGIN * sum(v for k, v in parts.items() if k != "resident")
    graph = parts["resident"] + 5 * 8 * n_t * N + 8 * T * V * 6
    parts["after_attribution"] = float(graph)
    parts["peak"] = float(max(attribution, graph))
    return parts


def plan_memory(
    rm: ReplacementModel,
    rec: Recording,
    nodes: Nodes,
    batch_size: int,
    max_latents: int,
    max_memory_gb: float,
) -> tuple[int, dict[str, float]]:
    """(replay batch B ≤ ``batch_size``, the estimate at B): the largest B whose estimated peak is at most
    ``max_memory_gb`` GiB. Refuses, naming the parameter, when even B = 1 exceeds the cap. (Three replay forwards:
    the probes at B = 1 and 2.)"""
    n_t = nodes.n_logit + (nodes.n_lat if not max_latents else min(max_latents, nodes.n_lat))
    top = max(1, min(batch_size, n_t))
    kept = kept_bytes(rm, rec, 1), kept_bytes(rm, rec, 2)
    at_top = estimate(rm, rec, nodes, top, max_latents, batch_size, kept)
    cap = max_memory_gb * GIB
    if at_top["peak"] <= cap:
        return top, at_top
    at_one = estimate(rm, rec, nodes, 1, max_latents, batch_size, kept)
    if at_one["peak"] > cap:
        raise UsageError(
            f"`max_memory_gb` {max_memory_gb:g}: this graph needs about {at_one['peak'] / GIB:.1f} GiB even with one "
            f"target per backward pass ({nodes.T} tokens, {n_t:,} targets, of which {nodes.n_lat:,} active latents"
            f"{f' capped at {max_latents:,}' if max_latents else ''}); raise `max_memory_gb`, set `max_latents` "
            "lower, or shorten the prompt"
        )
    per_b = (at_top["peak"] - at_one["peak"]) / max(top - 1, 1)
    B = max(1, min(top, int(1 + (cap - at_one["peak"]) // max(per_b, 1.0))))
    got = estimate(rm, rec, nodes, B, max_latents, batch_size, kept)
    while B > 1 and got["peak"] > cap:
        B -= 1
        got = estimate(rm, rec, nodes, B, max_latents, batch_size, kept)
    return B, got

"""Direct effects between the nodes of a replacement model: one backward pass per target node, batched.

Nodes, in this order (the adjacency matrix's row and column order):

    latents   every active transcoder latent (layer l, position p, latent i), a > 0,     n_lat
              in (l, p, i) order (circuit-tracer's)
    errors    one per (layer, position): the error node e_{l,p}                          L·T
    tokens    one per position: the residual stream entering block 0 (embeddings)         T
    logits    the top output tokens at the last position (cumulative probability ≥ p_target, at most max_logits)

A target's value is a latent's pre-activation t = x'_l[p] · W_enc[:, i] + b_enc[i] (= its activation when it
is active), or a logit node's value, logit_v − mean_u logit_u at the logit position (demeaned: a node that
raises every logit alike moves no probability, so it does not count; our reading of Ameisen et al.'s logit
target). In the frozen replay t is affine in the leaves (:mod:`mechscope.graph.replacement`), so with
∂t/∂(leaf) read by one backward:

    A[t, s] = a_s · ∂t/∂a_s              for a latent source s   (its decoder row W_dec[i] is inside the Jacobian)
    A[t, s] = e_{l,p} · ∂t/∂e_{l,p}      for an error node
    A[t, s] = h_0[p] · ∂t/∂h_0[p]        for a token (embedding) node
    t = Σ_s A[t, s] + c_t,               c_t = t at all leaves zero (biases b_dec, b_enc, norm and attention biases)

With ``const_pos0`` (BOS at position 0, the default for text models) the leaves at position 0 are kept at their
clean values when c_t is computed, and get no edges and no latent nodes: BOS's state is the same for every
prompt, so it is part of the model's constant like a bias. With ``bos_token_node`` as well (circuit-tracer
0.5.0's convention) only BOS's MLP leaves (latents, error nodes) are constant: its token node h_0[0] keeps its
edges and is zero when c_t is computed.

The last line is exact for an affine function and is checked for every target (:func:`check_exact`): it
fails if anything non-linear is left live in the replay (e.g. attention not frozen) or if an edge is
misread. A latent in layer l only receives edges from layers < l (an MLP reads its input before it writes).
The frozen replay runs forward once per prompt on B copies of the prompt and its autograd graph is kept; targets
are read in chunks of B, one backward each, row b reading target b. A latent of layer l only reads leaves of
layers < l, so a chunk's backward stops there (latents are chunked from the last layer down).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from mechscope.graph import dense
from mechscope.graph.replacement import Leaves, Recording, ReplacementModel


@dataclass(frozen=True, eq=False)
class Nodes:
    """The node set of one prompt's graph (see the module docstring for the order)."""

    layer: Tensor
    """[n_lat] layer of each latent node."""
    pos: Tensor
    """[n_lat] position of each latent node."""
    slot: Tensor
    """[n_lat] its slot among the k codes of that (layer, position)."""
    latent: Tensor
    """[n_lat] its latent index in the transcoder's dictionary."""
    act: Tensor
    """[n_lat] its activation a."""
    n_layers: int
    T: int
    logit_tokens: Tensor
    """[n_logit] token ids of the logit nodes."""
    logit_probs: Tensor
    """[n_logit] their probabilities under the model (the weights of the influence computation)."""
    logit_pos: int = -1
    """The position whose logits are the logit nodes (the last, for next-token prediction)."""
    const_pos0: bool = False
    """Position 0 (BOS) is part of the constant: no latent nodes there, and its error and token nodes get no edges
    (their contributions are inside each target's c_t)."""
    bos_token_node: bool = False
    """With ``const_pos0``: BOS's token node is a node all the same, with its edges (circuit-tracer's convention);
    only its latents and error nodes are constant."""

    @property
    def n_lat(self) -> int:
        return int(self.layer.numel())

    @property
    def n_err(self) -> int:
        return self.n_layers * self.T

    @property
    def n_logit(self) -> int:
        return int(self.logit_tokens.numel())

    @property
    def size(self) -> int:
        return self.n_lat + self.n_err + self.T + self.n_logit

    @property
    def targets(self) -> Tensor:
        """[n_t] the nodes with inputs, in the order of :attr:`Attribution.rows`: the latents, then the logits."""
        return torch.cat([torch.arange(self.n_lat), torch.arange(self.n_logit) + self.size - self.n_logit])

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_lat + layer * self.T + pos

    def token_index(self, pos: int) -> int:
        return self.n_lat + self.n_err + pos

    def logit_index(self, j: int) -> int:
        return self.n_lat + self.n_err + self.T + j

    def kind(self, node: int) -> str:
        """ "latent", "error", "token" or "logit"."""
        for name, end in (
            ("latent", self.n_lat),
            ("error", self.n_lat + self.n_err),
            ("token", self.n_lat + self.n_err + self.T),
        ):
            if node < end:
                return name
        return "logit"


def select_nodes(
    rec: Recording,
    max_logits: int,
    logit_probability: float,
    logit_pos: int = -1,
    const_pos0: bool = False,
    bos_token_node: bool = False,
) -> Nodes:
    """Active latents (a > 0) of every layer and position (from position 1 when ``const_pos0``), and the logit
    nodes at ``logit_pos``. ``bos_token_node``: see :class:`Nodes`."""
    layer, pos, slot, latent, act = [], [], [], [], []
    for l, (a, i) in enumerate(zip(rec.acts, rec.idx)):
        live = a > 0
        if const_pos0:
            live[0] = False
        p, s = live.nonzero(as_tuple=True)
        if p.numel():  # (position, latent) order within a layer, as circuit-tracer's
            o = (p * (int(i.max()) + 1) + i[p, s]).argsort()
            p, s = p[o], s[o]
        layer.append(torch.full_like(p, l))
        pos.append(p)
        slot.append(s)
        latent.append(i[p, s])
        act.append(a[p, s])
    probs = rec.logits[logit_pos].double().softmax(-1)
    top_p, top_i = probs.sort(descending=True)
    n = int((top_p.cumsum(0) < logit_probability).sum()) + 1
    n = max(1, min(n, max_logits))
    cat = torch.cat
    return Nodes(
        cat(layer),
        cat(pos),
        cat(slot),
        cat(latent),
        cat(act),
        len(rec.acts),
        int(rec.ids.numel()),
        top_i[:n],
        top_p[:n].float(),
        logit_pos,
        const_pos0,
        const_pos0 and bos_token_node,
    )


@dataclass(frozen=True, eq=False)
class Attribution:
    """Direct effects (rows: targets, columns: sources) and the constant term of each target."""

    nodes: Nodes
    rows: Tensor
    """[n_t, N] float64 A[t, s] for the targets t = ``nodes.targets`` (the latents, then the logits); the rows of
    error and token nodes, which have no inputs, are not stored (they are zero)."""
    bias: Tensor
    """[N] float64 c_t (NaN for nodes that are not targets)."""
    value: Tensor
    """[N] float64 the value of each target in the frozen replay at the clean leaves (NaN for non-targets)."""

    @property
    def targets(self) -> Tensor:
        return self.nodes.targets

    @cached_property
    def where(self) -> Tensor:
        """[N] the row of each node in :attr:`rows` (−1: not a target, no inputs)."""
        return dense.row_index(self.targets, self.nodes.size)

    def row(self, node: int) -> Tensor:
        """[N] A[node, :], its direct effects from every source (zeros for a node without inputs)."""
        r = int(self.where[node])
        return self.rows[r] if r >= 0 else torch.zeros(self.nodes.size, dtype=self.rows.dtype)

    def at(self, edges: Tensor) -> Tensor:
        """[E] A[t, s] for each pair (target, source) of ``edges`` [E, 2]."""
        return dense.entries(self.rows, self.targets, self.nodes.size, edges)

    @cached_property
    def adjacency(self) -> Tensor:
        """[N, N] float64, the dense matrix (zero rows for errors and tokens), built once on first use under the cap
        of :func:`mechscope.graph.dense.build`: 8·N² bytes, quadratic in the prompt length. Nothing in mechscope
        needs it (the graph is built, pruned, drawn and saved from :attr:`rows`); it is there to compare graphs."""
        return dense.build(self.rows, self.targets, self.nodes.size)


def _target_values(
    rm: ReplacementModel,
    nodes: Nodes,
    targets: Tensor,
    xs: Sequence[Tensor | None],
    logits: Tensor | None,
    rows: Tensor | None = None,
) -> Tensor:
    """Value of target node ``targets[b]`` in replay row ``rows[b]`` (default b). → [len(targets)]."""
    rows = torch.arange(targets.numel()) if rows is None else rows
    out = []
    for b, t in zip(rows.tolist(), targets.tolist()):
        if t < nodes.n_lat:
            l, p, i = int(nodes.layer[t]), int(nodes.pos[t]), int(nodes.latent[t])
            tc = rm.tcs[l]
            x = xs[l][b, p]  # type: ignore[index]
            out.append(x @ tc.W_enc[:, i] + tc.b_enc[i])
        else:
            v = int(nodes.logit_tokens[t - nodes.n_lat - nodes.n_err - nodes.T])
            row = logits[b, nodes.logit_pos]  # type: ignore[index]
            out.append(row[v] - row.mean())
    return torch.stack(out)


def _seeds(
    rm: ReplacementModel, nodes: Nodes, targets: Tensor, xs: list[Tensor], logits: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """The replay outputs a chunk's targets read and the gradient injected at each, so that one backward gives row b
    the gradient of target b's value: at MLP l's input [B, T, d_in], W_enc[:, i] at (b, p) for a latent (l, p, i); at
    the logits of the logit position [B, V], e_v − 1/V at b for logit node v (its value is logit_v − mean_u logit_u)."""
    seeds: dict[int, Tensor] = {}
    for b, t in enumerate(targets.tolist()):
        if t < nodes.n_lat:
            l = int(nodes.layer[t])
            if l not in seeds:
                seeds[l] = torch.zeros_like(xs[l])
            seeds[l][b, int(nodes.pos[t])] = rm.tcs[l].W_enc[:, int(nodes.latent[t])]
        else:
            if -1 not in seeds:
                seeds[-1] = torch.zeros_like(logits)
            row = seeds[-1][b]
            row.fill_(-1.0 / row.numel())
            row[int(nodes.logit_tokens[t - nodes.n_lat - nodes.n_err - nodes.T])] += 1.0
    return [logits if l == -1 else xs[l] for l in seeds], list(seeds.values())


def _chunks(nodes: Nodes, batch_size: int) -> list[tuple[int, Tensor]]:
    """(depth, target node indices) in chunks of at most ``batch_size``: the logit nodes first, then the latents
    from the last layer down, so that each chunk's backward reaches no deeper than it needs. depth: the number of
    layers whose leaves can reach the chunk's targets (L for logits, l for a latent of layer l, the chunk's max)."""
    logit_nodes = torch.arange(nodes.n_logit) + nodes.n_lat + nodes.n_err + nodes.T
    order = torch.cat([logit_nodes, torch.sort(nodes.layer, descending=True, stable=True).indices])
    return [(_depth(nodes, c), c) for c in order.split(batch_size)]


def _depth(nodes: Nodes, targets: Tensor) -> int:
    """The number of layers whose leaves can reach ``targets``: L for a logit, l for a latent of layer l (the max)."""
    lat = targets[targets < nodes.n_lat]
    return nodes.n_layers if lat.numel() < targets.numel() else int(nodes.layer[lat].max())


class _Replay:
    """The frozen replay of one prompt on B copies, run forward once with its autograd graph kept; :meth:`rows`
    reads the direct effects on up to B targets with one backward through it."""

    def __init__(self, rm: ReplacementModel, rec: Recording, nodes: Nodes, batch: int) -> None:
        self.rm, self.rec, self.nodes, self.batch = rm, rec, nodes, batch
        self.leaves = Leaves.of(rec, batch, grad=True)
        self.xs, logits = rm.replay(rec, self.leaves)
        # only the logit position is read: keep its [B, V] row, not the [B, T, V] logits (B·T·V floats)
        self.logits = logits[:, nodes.logit_pos].clone()
        del logits
        self.per_layer = [(nodes.layer == l).nonzero(as_tuple=True)[0] for l in range(nodes.n_layers)]

    def rows(self, targets: Tensor) -> Tensor:
        """[len(targets), N] float64: A[t, s] for each target t (node numbers of ``nodes``) and every source s;
        one backward per B targets."""
        if targets.numel() > self.batch:
            return torch.cat([self.rows(c) for c in targets.split(self.batch)])
        n, rec, B = self.nodes, self.rec, targets.numel()
        upto = _depth(n, targets)
        outs, seeds = _seeds(self.rm, n, targets, self.xs, self.logits)
        lv = self.leaves
        grads = torch.autograd.grad(
            outs, [lv.emb, *lv.acts[:upto], *lv.err[:upto]], seeds, allow_unused=True, retain_graph=True
        )
        g_emb, g_acts, g_err = grads[0], grads[1 : 1 + upto], grads[1 + upto :]
        R = torch.zeros(B, n.size, dtype=torch.float64)
        if g_emb is not None:
            R[:, n.n_lat + n.n_err : n.n_lat + n.n_err + n.T] = (g_emb[:B] * rec.emb).sum(-1).double()
        for l in range(upto):
            src = self.per_layer[l]
            if g_acts[l] is not None and src.numel():
                R[:, src] = (g_acts[l][:B] * rec.acts[l])[:, n.pos[src], n.slot[src]].double()  # [B, T, k] → picked
            if g_err[l] is not None:
                R[:, n.n_lat + l * n.T : n.n_lat + (l + 1) * n.T] = (g_err[l][:B] * rec.err[l]).sum(-1).double()
        if n.const_pos0:  # BOS's leaves are constants: their share is in c_t (computed with them kept)
            keep_token = [] if n.bos_token_node else [n.token_index(0)]  # circuit-tracer's: BOS's token node has edges
            R[:, keep_token + [n.error_index(l, 0) for l in range(n.n_layers)]] = 0
        return R


def attribute(
    rm: ReplacementModel,
    rec: Recording,
    nodes: Nodes,
    batch_size: int = 32,
    progress: bool = False,
    max_latents: int = 0,
    replay_batch: int | None = None,
) -> Attribution:
    """The direct effects on every target, the constant terms and the replay values of every target.

    The frozen replay runs once, forward to the logits, on B = min(``batch_size``, targets) copies of the prompt;
    its autograd graph is kept (``retain_graph``) and every chunk of B targets is one backward through it, row b
    reading target b (rows do not mix: attention patterns and norm scales are constants of the replay).
    ``replay_batch`` (default ``batch_size``) sets B alone, to bound memory (:func:`plan_memory`), and leaves the
    chunks of ``batch_size`` targets (the latent choice below) as they are: the graph does not depend on it.

    ``max_latents`` (0: no cap) keeps at most that many latent nodes, chosen as circuit-tracer chooses its
    ``max_feature_nodes``: the logit rows first, then, chunk by chunk, the not yet attributed latents of most
    influence on the logits through the rows read so far (:func:`mechscope.graph.prune.influence`). A latent left
    out is not a target, and its edges join the error node of its (layer, position): e' = e + a·W_dec[i] is the
    part of the MLP output the graph does not explain, so every target stays exact. (A cross-layer transcoder's
    latent writes to later layers too; its edges join the error node of the layer it reads.)"""
    n_targets = nodes.n_logit + (nodes.n_lat if not max_latents else min(max_latents, nodes.n_lat))
    replay = _Replay(rm, rec, nodes, max(1, min(replay_batch or batch_size, batch_size, n_targets)))
    if max_latents and max_latents < nodes.n_lat:
        nodes, rows = _capped_rows(replay, batch_size, max_latents, progress)
    else:
        rows = torch.zeros(n_targets, nodes.size, dtype=torch.float64)
        where = torch.full((nodes.size,), -1, dtype=torch.long)
        where[nodes.targets] = torch.arange(n_targets)
        for _, targets in _bar(_chunks(nodes, batch_size), progress):
            rows[where[targets]] = replay.rows(targets)
    del replay  # the kept autograd graph goes with it
    targets = nodes.targets
    N = nodes.size
    bias = torch.full((N,), float("nan"), dtype=torch.float64)
    value = torch.full((N,), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        for zl, into in (
            (Leaves.of(rec, 1, zero=True, keep_pos0=nodes.const_pos0, keep_emb0=not nodes.bos_token_node), bias),
            (Leaves.of(rec, 1), value),
        ):
            zxs, zlogits = rm.replay(rec, zl)
            into[targets] = _target_values(rm, nodes, targets, zxs, zlogits, rows=torch.zeros_like(targets)).double()
    return Attribution(nodes, rows, bias, value)


def _bar(chunks: Iterable[Any], progress: bool) -> Any:
    if not progress:
        return chunks
    from tqdm import tqdm

    return tqdm(chunks, desc="attribution", unit="batch")


def _capped_rows(replay: _Replay, batch_size: int, max_latents: int, progress: bool) -> tuple[Nodes, Tensor]:
    """(the nodes with at most ``max_latents`` latents, their target rows): see :func:`attribute`."""
    from mechscope.graph.prune import influence, logit_weights, normalise_rows

    full = replay.nodes
    logit_nodes = torch.arange(full.n_logit) + full.size - full.n_logit
    done, blocks = [logit_nodes], [torch.cat([replay.rows(c) for c in logit_nodes.split(batch_size)])]
    w = logit_weights(full)
    chosen = torch.zeros(full.n_lat, dtype=torch.bool)
    for _ in _bar(range(-(-max_latents // batch_size)), progress):
        t = torch.cat(done)
        infl = influence(normalise_rows(torch.cat(blocks)), w, targets=t)[: full.n_lat]
        infl[chosen] = -1.0
        pick = infl.topk(min(batch_size, max_latents - int(chosen.sum()))).indices
        chosen[pick] = True
        done.append(pick)
        blocks.append(replay.rows(pick))
    # the targets' rows in the capped graph's order (its latents ascending, then its logits)
    kept = chosen.nonzero(as_tuple=True)[0]
    at = torch.full((full.size,), -1, dtype=torch.long)
    at[torch.cat(done)] = torch.arange(sum(len(d) for d in done))
    R = torch.cat(blocks)[at[torch.cat([kept, logit_nodes])]]
    nodes = Nodes(
        full.layer[kept],
        full.pos[kept],
        full.slot[kept],
        full.latent[kept],
        full.act[kept],
        full.n_layers,
        full.T,
        full.logit_tokens,
        full.logit_probs,
        full.logit_pos,
        full.const_pos0,
        full.bos_token_node,
    )
    # column of each full node in the capped graph: a dropped latent's column is its (layer, position)'s error node
    col = torch.empty(full.size, dtype=torch.long)
    col[kept] = torch.arange(kept.numel())
    dropped = (~chosen).nonzero(as_tuple=True)[0]
    col[dropped] = nodes.n_lat + full.layer[dropped] * full.T + full.pos[dropped]
    col[full.n_lat :] = torch.arange(full.size - full.n_lat) + nodes.n_lat
    return nodes, torch.zeros(R.shape[0], nodes.size, dtype=torch.float64).index_add_(1, col, R)


def check_exact(att: Attribution, rec: Recording, rm: ReplacementModel) -> dict[str, float]:
    """The known answers a graph must meet (each can fail):

    - ``max_residual``: max over targets of |t − (Σ_s A[t, s] + c_t)| (edges + constant = the frozen
      replay's value), and ``max_relative_residual``, the same divided by Σ_s |A[t, s]| + |c_t|;
    - ``max_logit_gap``: max |replay logits − clean logits| at the last position (the replacement model
      with its error nodes is the model);
    - ``max_latent_gap``: max |replay pre-activation − clean activation| over latent nodes.
    """
    n = att.nodes
    A, c, v = att.rows, att.bias[att.targets], att.value[att.targets]
    resid = (v - (A.sum(1) + c)).abs()
    scale = A.abs().sum(1) + c.abs()
    logit_vals = v[-n.n_logit :]
    clean = rec.logits[n.logit_pos].double()
    clean_vals = clean[n.logit_tokens] - clean.mean()
    with torch.no_grad():
        _, logits = rm.replay(rec, Leaves.of(rec, 1))
    return {
        "targets": int(att.targets.numel()),
        "max_residual": float(resid.max()),
        "max_relative_residual": float((resid / scale.clamp_min(1e-12)).max()),
        "max_logit_gap": float((logits[0, n.logit_pos].double() - clean).abs().max()),
        "max_logit_node_gap": float((logit_vals - clean_vals).abs().max()),
        "max_latent_gap": float((v[: n.n_lat] - n.act.double()).abs().max()) if n.n_lat else 0.0,
    }

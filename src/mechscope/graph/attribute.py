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

from dataclasses import dataclass

import torch
from torch import Tensor

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

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_lat + layer * self.T + pos

    def token_index(self, pos: int) -> int:
        return self.n_lat + self.n_err + pos

    def logit_index(self, j: int) -> int:
        return self.n_lat + self.n_err + self.T + j

    def kind(self, node: int) -> str:
        """"latent", "error", "token" or "logit"."""
        for name, end in (("latent", self.n_lat), ("error", self.n_lat + self.n_err),
                          ("token", self.n_lat + self.n_err + self.T)):
            if node < end:
                return name
        return "logit"


def select_nodes(rec: Recording, max_logits: int, logit_probability: float, logit_pos: int = -1,
                 const_pos0: bool = False, bos_token_node: bool = False) -> Nodes:
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
        layer.append(torch.full_like(p, l)), pos.append(p), slot.append(s), latent.append(i[p, s]), act.append(a[p, s])
    probs = rec.logits[logit_pos].double().softmax(-1)
    top_p, top_i = probs.sort(descending=True)
    n = int((top_p.cumsum(0) < logit_probability).sum()) + 1
    n = max(1, min(n, max_logits))
    cat = torch.cat
    return Nodes(cat(layer), cat(pos), cat(slot), cat(latent), cat(act), len(rec.acts), int(rec.ids.numel()),
                 top_i[:n], top_p[:n].float(), logit_pos, const_pos0, const_pos0 and bos_token_node)


@dataclass(frozen=True, eq=False)
class Attribution:
    """Direct effects (rows: targets, columns: sources) and the constant term of each target."""

    nodes: Nodes
    adjacency: Tensor
    """[N, N] float64 A[t, s]; rows of error and token nodes are zero (they have no inputs)."""
    bias: Tensor
    """[N] float64 c_t (NaN for nodes that are not targets)."""
    value: Tensor
    """[N] float64 the value of each target in the frozen replay at the clean leaves (NaN for non-targets)."""


def _target_values(rm: ReplacementModel, nodes: Nodes, targets: Tensor, xs: list[Tensor | None],
                   logits: Tensor | None, rows: Tensor | None = None) -> Tensor:
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


def _seeds(rm: ReplacementModel, nodes: Nodes, targets: Tensor, xs: list[Tensor], logits: Tensor
           ) -> tuple[list[Tensor], list[Tensor]]:
    """The replay outputs a chunk's targets read and the gradient injected at each, so that one backward gives row b
    the gradient of target b's value: at MLP l's input [B, T, d_in], W_enc[:, i] at (b, p) for a latent (l, p, i); at
    the logits [B, T, V], e_v − 1/V at (b, logit position) for logit node v (its value is logit_v − mean_u logit_u)."""
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
            row = seeds[-1][b, nodes.logit_pos]
            row.fill_(-1.0 / row.numel())
            row[int(nodes.logit_tokens[t - nodes.n_lat - nodes.n_err - nodes.T])] += 1.0
    return [logits if l == -1 else xs[l] for l in seeds], list(seeds.values())


def _chunks(nodes: Nodes, batch_size: int) -> list[tuple[int, Tensor]]:
    """(depth, target node indices) in chunks of at most ``batch_size``: the logit nodes first, then the latents
    from the last layer down, so that each chunk's backward reaches no deeper than it needs. depth: the number of
    layers whose leaves can reach the chunk's targets (L for logits, l for a latent of layer l, the chunk's max)."""
    logit_nodes = torch.arange(nodes.n_logit) + nodes.n_lat + nodes.n_err + nodes.T
    order = torch.cat([logit_nodes, torch.sort(nodes.layer, descending=True, stable=True).indices])
    depth = torch.full((nodes.size,), nodes.n_layers)
    depth[:nodes.n_lat] = nodes.layer
    return [(int(depth[c].max()), c) for c in order.split(batch_size)]


def attribute(rm: ReplacementModel, rec: Recording, nodes: Nodes, batch_size: int = 32,
              progress: bool = False) -> Attribution:
    """The adjacency matrix of direct effects, the constant terms and the replay values of every target.

    The frozen replay runs once, forward to the logits, on B = min(``batch_size``, targets) copies of the prompt;
    its autograd graph is kept (``retain_graph``) and every chunk of B targets is one backward through it, row b
    reading target b (rows do not mix: attention patterns and norm scales are constants of the replay)."""
    N = nodes.size
    A = torch.zeros(N, N, dtype=torch.float64)
    # Where each layer's active latents sit in its [T, k] code grid, and their node numbers.
    per_layer = [(nodes.layer == l).nonzero(as_tuple=True)[0] for l in range(nodes.n_layers)]
    tok_cols = torch.arange(nodes.T) + nodes.n_lat + nodes.n_err
    chunks = _chunks(nodes, batch_size)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(chunks), desc="attribution", unit="batch")
    leaves = Leaves.of(rec, max(1, min(batch_size, nodes.n_lat + nodes.n_logit)), grad=True)
    xs, logits = rm.replay(rec, leaves)
    for upto, targets in chunks:
        B = targets.numel()
        outs, seeds = _seeds(rm, nodes, targets, xs, logits)
        inputs = [leaves.emb, *leaves.acts[:upto], *leaves.err[:upto]]
        grads = torch.autograd.grad(outs, inputs, seeds, allow_unused=True, retain_graph=True)
        g_emb, g_acts, g_err = grads[0], grads[1:1 + upto], grads[1 + upto:]
        rows = targets
        if g_emb is not None:
            A[rows[:, None], tok_cols[None]] = (g_emb[:B] * rec.emb).sum(-1).double()
        for l in range(upto):
            src = per_layer[l]
            if g_acts[l] is not None and src.numel():
                contrib = g_acts[l][:B] * rec.acts[l]  # [B, T, k]
                A[rows[:, None], src[None]] = contrib[:, nodes.pos[src], nodes.slot[src]].double()
            if g_err[l] is not None:
                cols = torch.arange(nodes.T) + nodes.n_lat + l * nodes.T
                A[rows[:, None], cols[None]] = (g_err[l][:B] * rec.err[l]).sum(-1).double()
        if nodes.const_pos0:  # BOS's leaves are constants: their share is in c_t (computed with them kept below)
            if not nodes.bos_token_node:
                A[rows, nodes.token_index(0)] = 0
            A[rows[:, None], torch.tensor([nodes.error_index(l, 0) for l in range(nodes.n_layers)])[None]] = 0
        if bar is not None:
            bar.update(1)
    del xs, logits, leaves  # the kept autograd graph goes with them
    if bar is not None:
        bar.close()
    targets = torch.cat([torch.arange(nodes.n_lat), torch.arange(nodes.n_logit) + N - nodes.n_logit])
    bias = torch.full((N,), float("nan"), dtype=torch.float64)
    value = torch.full((N,), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        for zl, into in ((Leaves.of(rec, 1, zero=True, keep_pos0=nodes.const_pos0,
                                                              keep_emb0=not nodes.bos_token_node), bias), (Leaves.of(rec, 1), value)):
            zxs, zlogits = rm.replay(rec, zl)
            into[targets] = _target_values(rm, nodes, targets, zxs, zlogits, rows=torch.zeros_like(targets)).double()
    return Attribution(nodes, A, bias, value)


def check_exact(att: Attribution, rec: Recording, rm: ReplacementModel) -> dict[str, float]:
    """The known answers a graph must meet (each can fail):

    - ``max_residual``: max over targets of |t − (Σ_s A[t, s] + c_t)| (edges + constant = the frozen
      replay's value), and ``max_relative_residual``, the same divided by Σ_s |A[t, s]| + |c_t|;
    - ``max_logit_gap``: max |replay logits − clean logits| at the last position (the replacement model
      with its error nodes is the model);
    - ``max_latent_gap``: max |replay pre-activation − clean activation| over latent nodes.
    """
    n = att.nodes
    is_target = ~torch.isnan(att.value)
    A, c, v = att.adjacency[is_target], att.bias[is_target], att.value[is_target]
    resid = (v - (A.sum(1) + c)).abs()
    scale = A.abs().sum(1) + c.abs()
    logit_vals = v[-n.n_logit:]
    clean = rec.logits[n.logit_pos].double()
    clean_vals = clean[n.logit_tokens] - clean.mean()
    with torch.no_grad():
        _, logits = rm.replay(rec, Leaves.of(rec, 1))
    return {
        "targets": int(is_target.sum()),
        "max_residual": float(resid.max()),
        "max_relative_residual": float((resid / scale.clamp_min(1e-12)).max()),
        "max_logit_gap": float((logits[0, n.logit_pos].double() - clean).abs().max()),  # type: ignore[index]
        "max_logit_node_gap": float((logit_vals - clean_vals).abs().max()),
        "max_latent_gap": float((v[:n.n_lat] - n.act.double()).abs().max()) if n.n_lat else 0.0,
    }

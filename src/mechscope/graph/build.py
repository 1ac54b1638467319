"""One prompt's attribution graph from start to end: record, attribute, check, prune, score, losses.

The fidelity numbers reported beside the graph:

- the exactness check (:func:`mechscope.graph.attribute.check_exact`): edges + constant = each target's
  frozen-linear value, and the replacement model with its error nodes reproduces the model's logits;
- replacement and completeness scores (:mod:`mechscope.graph.prune`);
- next-token loss on the prompt (mean over its T − 1 predictions, nats) of the clean model, of the global
  replacement model (every MLP replaced by its transcoder's prediction, no error nodes, attention and
  norms live; BOS's MLPs kept exact when BOS is part of the constant, and the loss with them replaced
  too reported beside it), and of the rock (a unigram fit on training tokens), with KL(clean ‖ replacement) per
  prediction. A replacement model worse than the rock explains nothing on this prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechscope.errors import UsageError
from mechscope.graph.attribute import Attribution, Nodes, attribute, check_exact, select_nodes
from mechscope.graph.config import GraphConfig
from mechscope.graph.freeze import model_kind
from mechscope.graph.memory import plan_memory
from mechscope.graph.prune import Pruned, prune, scores
from mechscope.graph.replacement import LayerTranscoder, Recording, ReplacementModel
from mechscope.graph.splice import next_token_nll


@dataclass(frozen=True, eq=False)
class GraphResult:
    """Everything one ``mechscope graph`` run measured (``summary()`` is its JSON)."""

    cfg: GraphConfig
    rec: Recording
    att: Attribution
    pruned: Pruned
    scores: dict[str, float]
    checks: dict[str, float]
    losses: dict[str, float]
    tokens: list[str]
    """The prompt's tokens as text."""
    logit_text: list[str]
    """The logit nodes' tokens as text."""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def nodes(self) -> Nodes:
        return self.att.nodes

    def summary(self) -> dict[str, Any]:
        n, kept = self.nodes, self.pruned.node_mask
        lat = slice(0, n.n_lat)
        return {
            "tokens": self.tokens,
            "logits": [{"token": t, "probability": float(p)} for t, p in zip(self.logit_text, n.logit_probs)],
            "nodes": {"latents": n.n_lat, "errors": n.n_err, "tokens": n.T, "logits": n.n_logit, "total": n.size},
            "kept": {
                "nodes": int(kept.sum()),
                "latents": int(kept[lat].sum()),
                "errors": int(kept[n.n_lat : n.n_lat + n.n_err].sum()),
                "edges": int(self.pruned.edge_rows.sum()),
                "edges_nonzero": int((self.att.rows != 0).sum()),
            },
            "thresholds": {"node": self.cfg.node_threshold, "edge": self.cfg.edge_threshold},
            **self.scores,
            "checks": self.checks,
            "losses": self.losses,
            "seconds": self.seconds,
        }


def prompt_losses(
    rm: ReplacementModel, rec: Recording, rock: Any | None, lm: bool = True, exact_pos0: bool = False
) -> dict[str, float]:
    """Clean, replacement-model and rock next-token losses on the prompt, and KL(clean ‖ replacement).
    With ``exact_pos0`` the replacement model keeps BOS's true MLP outputs (the graph's definition) and
    ``replacement_bos_transcoded`` is also reported: the loss with BOS's MLPs replaced too."""
    if not lm or rec.ids.numel() < 2:
        nan = float("nan")
        return {"clean": nan, "replacement": nan, "rock": nan, "kl_replacement": nan}
    rep = rm.spliced_logits(rec.ids, exact_pos0=exact_pos0)
    extra = (
        {"replacement_bos_transcoded": float(next_token_nll(rm.spliced_logits(rec.ids), rec.ids).mean())}
        if exact_pos0
        else {}
    )
    p_log = rec.logits[:-1].double().log_softmax(-1)
    q_log = rep[:-1].double().log_softmax(-1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1)
    return {
        "clean": float(next_token_nll(rec.logits, rec.ids).mean()),
        "replacement": float(next_token_nll(rep, rec.ids).mean()),
        "rock": float(rock.nll(rec.ids[1:]).mean()) if rock is not None else float("nan"),
        "kl_replacement": float(kl.mean()),
        **extra,
    }


def bos_is_constant(cfg: GraphConfig, ids: Tensor, bos_id: int | None) -> bool:
    """Whether position 0 of ``ids`` is the tokenizer's BOS and ``cfg.bos_mode`` makes (part of) it constant."""
    return cfg.bos_mode != "position" and bos_id is not None and int(ids[0]) == bos_id and ids.numel() > 1


def check_logit_position(
    position: int, n_tokens: int, bos_constant: bool, flag: str = "logit_position", off: str = "bos_mode='position'"
) -> None:
    """Refuse a logit position outside a prompt of ``n_tokens`` tokens, or on a BOS that is part of the constant
    (its logits have no inputs left to explain). ``flag`` names the setting and ``off`` the way to leave BOS out of
    the constant in the error (the CLI passes its flags)."""
    if not -n_tokens <= position < n_tokens:
        raise UsageError(
            f"{flag} {position}: the prompt has {n_tokens} tokens (BOS included, if any); choose a position "
            f"in 0..{n_tokens - 1}, or -{n_tokens}..-1 counting from the end"
        )
    if bos_constant and position % n_tokens == 0:
        raise UsageError(
            f"{flag} {position}: that is the BOS token, part of the model's constant, so its logits have "
            f"nothing to explain; choose a later position, or pass {off}"
        )


def prompt_ids(tokenizer: Any, prompt: str, bos: str = "auto") -> Tensor:
    """Token ids [T] of ``prompt``, the tokenizer's BOS first where ``bos`` (auto | always | never) asks for it,
    as the corpus contexts are read."""
    from mechscope.data.text import _bos_id

    b = _bos_id(tokenizer, bos)
    # without special tokens: BOS is added here, once (a tokenizer that adds it itself, Gemma's, would add a second)
    return torch.tensor(([b] if b is not None else []) + list(tokenizer(prompt, add_special_tokens=False).input_ids))


def build_graph(
    model: torch.nn.Module,
    ids: Tensor,
    transcoders: list[LayerTranscoder],
    cfg: GraphConfig,
    *,
    decode: Callable[[int], str] = str,
    rock: Any | None = None,
    lm: bool = True,
    bos_id: int | None = None,
    progress: bool = False,
) -> GraphResult:
    """The attribution graph of ``ids`` [T] over ``model`` with one transcoder per MLP. ``bos_id``: the
    tokenizer's BOS; ``cfg.bos_mode`` says what a BOS at position 0 is (constant, circuit-tracer's, a position)."""
    model_kind(model)  # refuses, by name, a family whose attention and norms cannot be frozen yet
    const0 = bos_is_constant(cfg, ids, bos_id)
    check_logit_position(cfg.logit_position, ids.numel(), const0)
    t0 = time.perf_counter()
    rm = ReplacementModel(model, transcoders)
    rec = rm.record(ids)
    nodes = select_nodes(
        rec,
        cfg.max_logits,
        cfg.logit_probability,
        cfg.logit_position,
        const0,
        bos_token_node=cfg.bos_mode == "circuit-tracer",
    )
    replay_batch = cfg.batch_size
    if cfg.max_memory_gb:
        replay_batch, _ = plan_memory(rm, rec, nodes, cfg.batch_size, cfg.max_latents, cfg.max_memory_gb)
    t1 = time.perf_counter()
    att = attribute(
        rm, rec, nodes, cfg.batch_size, progress=progress, max_latents=cfg.max_latents, replay_batch=replay_batch
    )
    nodes = att.nodes  # with max_latents, the kept latents
    t2 = time.perf_counter()
    checks = check_exact(att, rec, rm)
    pruned = prune(att.rows, nodes, cfg.node_threshold, cfg.edge_threshold, targets=att.targets)
    sc = scores(att.rows, nodes, targets=att.targets)
    losses = prompt_losses(rm, rec, rock, lm, exact_pos0=const0)
    t3 = time.perf_counter()
    return GraphResult(
        cfg,
        rec,
        att,
        pruned,
        sc,
        checks,
        losses,
        [decode(int(t)) for t in ids],
        [decode(int(t)) for t in nodes.logit_tokens],
        {"record": t1 - t0, "attribution": t2 - t1, "checks_prune_losses": t3 - t2},
    )

"""The configuration of one attribution graph (``mechscope graph``); flags are generated from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mechscope.config import COUNT, NON_NEGATIVE, check_ranges


@dataclass(frozen=True)
class GraphConfig:
    """How to build, prune and show the attribution graph of one prompt."""

    model: str = "smollm2"
    """'smollm2' (embedded), a local Hugging Face directory, or zoo:NAME (the prompt is then token ids, e.g. "3 1 4 1")."""
    node_threshold: float = 0.8
    """Keep the fewest nodes whose influence on the logits reaches this share of the total (Ameisen et al.: 0.8)."""
    edge_threshold: float = 0.98
    """Keep the fewest edges whose influence reaches this share of the total, after node pruning (Ameisen et al.: 0.98)."""
    max_logits: int = 10
    """At most this many logit nodes (the most probable next tokens at the last position)."""
    logit_probability: float = 0.95
    """Add logit nodes, most probable first, until their probabilities sum to this (or max_logits is reached)."""
    logit_position: int = -1
    """Position whose output logits become the logit nodes (-1: the last, next-token prediction; 0 for zoo:parens)."""
    batch_size: int = 32
    """Target nodes per backward pass (copies of the prompt in one replay batch); with max_memory_gb, at most this."""
    max_latents: int = field(default=0, metadata=NON_NEGATIVE)
    """At most this many latent nodes (0: every active latent), the most influential on the logits, chosen batch by
    batch as circuit-tracer's max_feature_nodes; the others' edges join their error nodes (the graph stays exact).
    With it, memory and time grow linearly with the prompt length."""
    max_memory_gb: float = field(default=0.0, metadata=NON_NEGATIVE)
    """Cap on the estimated peak memory (GiB, the process's resident set; 0: no cap): fewer targets per backward
    pass than batch_size when that fits under it, refused up front when even one does not (lower max_latents)."""
    bos: Literal["auto", "always", "never"] = "auto"
    """Prepend the tokenizer's BOS: auto = when it has one and does not add it itself (as the corpus contexts do)."""
    bos_mode: Literal["constant", "circuit-tracer", "position"] = "constant"
    """What a BOS at position 0 (the tokenizer's) is in the graph. Its state is the same for every prompt (causal
    attention, nothing before it), so its parts can be counted as the model's constant; the replacement model then
    keeps BOS's true MLP outputs. constant: its latents, error nodes and token node get no edges (their effect joins
    each target's constant c_t) and pruning drops its token node. circuit-tracer: its latents and error nodes are
    constant, its token node keeps its edges and is always kept by pruning (circuit-tracer 0.5.0's node set and
    edges). position: BOS is a position like any other (its latents and error nodes are nodes)."""
    dashboard_rows: int = field(default=16384, metadata=COUNT)
    """Store rows scanned per layer for each kept latent's top-activating contexts (with --store); ≥ 1."""
    top_contexts: int = 5
    """Top-activating contexts shown per latent (with --store)."""
    draw_nodes: int = 400
    """At most this many kept nodes are drawn (the most influential; tokens and logits always)."""
    draw_edges: int = 1500
    """At most this many kept edges are drawn (highest edge influence first); every node's card lists its strongest edges anyway."""

    def __post_init__(self) -> None:
        check_ranges(self)
        for name in ("node_threshold", "edge_threshold", "logit_probability"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
        for name in ("max_logits", "batch_size", "draw_nodes", "draw_edges"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.top_contexts < 0:
            raise ValueError("--top-contexts must be non-negative")

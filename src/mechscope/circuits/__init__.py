"""Circuit discovery checked against exact patching; see docs/circuits.md.

- :mod:`~mechscope.circuits.patching`      node effects by exact activation patching and by AtP, their agreement
- :mod:`~mechscope.circuits.atpstar`       AtP* (attention-saturation fix, GradDrop)
- :mod:`~mechscope.circuits.residual`      the residual graph of writers and readers (zoo and Hugging Face), edge patching
- :mod:`~mechscope.circuits.hf`            one head's own input and pattern on Hugging Face attention
- :mod:`~mechscope.circuits.edges`         exact edge effects, EAP, EAP-IG, ACDC
- :mod:`~mechscope.circuits.faithfulness`  the circuit alone beside full, empty and rock, with intervals
- :mod:`~mechscope.circuits.tasks`         induction, parens, IOI on SmolLM2, a user's own prompt pairs
- :mod:`~mechscope.circuits.discover`      one run of a method, checked against a budget of exact patches
- :mod:`~mechscope.circuits.export`        the circuit as JSON and as a causal-scrubbing hypothesis
- :mod:`~mechscope.circuits.latents`       latent-level nodes through a spliced SAE (Marks et al. 2024)

Latent circuits from the command line: `mechscope circuit --sae SITE=DIR [SITE=DIR ...]`. Not built: edges between latents.
"""

from mechscope.circuits.atpstar import atp_star_effects
from mechscope.circuits.edges import acdc, eap_effects, exact_edge_effects
from mechscope.circuits.patching import Component, Effects, agreement, atp_effects, exact_effects
from mechscope.circuits.residual import Edge, ResidualGraph, hf_graph, model_graph, zoo_graph
from mechscope.circuits.tasks import PromptPair, pairs_task

__all__ = [
    "Component",
    "Edge",
    "Effects",
    "PromptPair",
    "ResidualGraph",
    "acdc",
    "agreement",
    "atp_effects",
    "atp_star_effects",
    "eap_effects",
    "exact_edge_effects",
    "exact_effects",
    "hf_graph",
    "model_graph",
    "pairs_task",
    "zoo_graph",
]

"""Circuit discovery checked against exact patching (issue 13, in progress).

Built: node effects by exact activation patching and by attribution patching (AtP), and their
agreement (:mod:`mechscope.circuits.patching`). Not built yet: AtP*, EAP / EAP-IG, ACDC, latent-level
circuits, faithfulness, the ``mechscope circuit`` command and its report.
"""

from mechscope.circuits.patching import Effects, Node, agreement, atp_effects, exact_effects

__all__ = ["Effects", "Node", "agreement", "atp_effects", "exact_effects"]

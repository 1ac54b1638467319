"""Parameter decomposition (SPD, Bushnaq et al. 2025): write each Linear/Embedding weight as a sum of rank-one
subcomponents, learn which ones each input needs, and check the result where the true mechanisms are known
(docs/decompose.md)."""

from mechscope.decompose.analysis import alive, coactivation, dashboards, recovery
from mechscope.decompose.config import SPDConfig
from mechscope.decompose.spd import SPD, find_targets
from mechscope.decompose.train import close_restarts, held_out_loss, train_best_of, train_spd

__all__ = [
    "SPDConfig",
    "SPD",
    "find_targets",
    "train_spd",
    "train_best_of",
    "held_out_loss",
    "close_restarts",
    "alive",
    "recovery",
    "coactivation",
    "dashboards",
]

"""Singular learning theory: the local learning coefficient λ of a trained network.

- :mod:`~mechscope.slt.sgld` — localised SGLD and RMSProp-preconditioned SGLD (``torch.optim.Optimizer``s);
- :mod:`~mechscope.slt.estimator` — :class:`LLCEstimator` (update / finalize / results) and :func:`estimate_llc`;
- :mod:`~mechscope.slt.diagnostics` — R̂, MALA acceptance, stationarity and escape warnings;
- :mod:`~mechscope.slt.calibrate` — the automatic sweep over ε and γ;
- :mod:`~mechscope.slt.known` — models with analytic λ (regular, monomials and their sums, reduced-rank
  regression with Aoyagi's formula);
- :mod:`~mechscope.slt.checkpoints` — λ̂ along a series of training checkpoints;
- :mod:`~mechscope.cli.llc` — ``mechscope llc``.
"""

from mechscope.slt.calibrate import CalibrationConfig, CalibrationResult, calibrate
from mechscope.slt.estimator import LLCConfig, LLCEstimator, LLCResult, estimate_llc, full_loss, tensor_loader
from mechscope.slt.known import KNOWN, KnownModel, aoyagi_rrr, default_nbeta, known_model, localized_monomial_llc
from mechscope.slt.sgld import SAMPLERS, LocalRMSpropSGLD, LocalSGLD

__all__ = [
    "CalibrationConfig",
    "CalibrationResult",
    "KNOWN",
    "KnownModel",
    "LLCConfig",
    "LLCEstimator",
    "LLCResult",
    "LocalRMSpropSGLD",
    "LocalSGLD",
    "SAMPLERS",
    "aoyagi_rrr",
    "calibrate",
    "default_nbeta",
    "estimate_llc",
    "full_loss",
    "known_model",
    "localized_monomial_llc",
    "tensor_loader",
]

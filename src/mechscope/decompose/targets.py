"""The models ``decompose`` knows by name, each built as a :class:`~mechscope.decompose.toys.KnownModel` (the model,
its training batches, evaluation inputs and, where known, the true mechanisms), and the SPD settings that suit
each; any other name is read as a Hugging Face model folder (:mod:`mechscope.decompose.paths`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechscope.decompose.toys import KnownModel, TargetConfig, tms_target
from mechscope.errors import UsageError
from mechscope.models.resolve import spec_kind


def _resid_mlp(cfg: TargetConfig) -> KnownModel:
    from mechscope.decompose.resid_mlp import resid_mlp_target

    return resid_mlp_target(cfg)


def _modadd(cfg: TargetConfig) -> KnownModel:
    from mechscope.decompose.modadd import modadd_target

    return modadd_target(cfg)


def _path(spec: str, cfg: TargetConfig) -> KnownModel:
    from mechscope.decompose.paths import path_target

    return path_target(spec, cfg)


# name → builder; the model choices (besides a path) come from here.
MODELS: dict[str, Callable[[TargetConfig], KnownModel]] = {
    "toy:tms": tms_target,
    "toy:resid-mlp": _resid_mlp,
    "zoo:modadd": _modadd,
}


# name → SPD settings that replace SPDConfig's (TMS-tuned) defaults for that model; settings given still win.
# toy:tms: best of 3 random starts by held-out SPD loss (a start costs seconds; one start, seed 0 or 1, merges two of
# linear2's mechanisms, 9 of 10 alive, MMCS 0.927; the selection never looks at the truth; docs/decompose.md).
# toy:resid-mlp (one start: a start costs minutes): C = 100, p = 2 and importance 1e-3 (the paper's 1e-5 on an MSE
# averaged over its 100 outputs), the later reference code's delta component with no faithfulness loss; lr 1e-2 with
# cosine decay, 256 rows × 10,000 steps (the paper: lr 2e-3 constant, 2,048 rows × 20,000–30,000 steps). Measured
# (docs/decompose.md): W_in 99 alive, MMCS 0.979; W_out 54 alive, its 50 neuron columns (MMCS 0.990), one entry off
# the paper's dense check. The earlier defaults (importance 1e-2, faithfulness loss) found W_in (0.979) but not W_out.
SPD_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy:tms": {"restarts": 3},
    "toy:resid-mlp": {
        "C": 100,
        "importance_coeff": 1e-3,
        "pnorm": 2.0,
        "lr": 1e-2,
        "steps": 10000,
        "batch_size": 256,
        "delta_component": True,
        "faithfulness_coeff": 0.0,
    },
}


def build_target(spec: str, cfg: TargetConfig) -> KnownModel:
    """The model named ``spec`` (a name in :data:`MODELS`, or a Hugging Face model folder) as a known target."""
    if spec in MODELS:
        return MODELS[spec](cfg)
    if spec_kind(spec, check=False) != "lm":  # a zoo: or toy: model decompose does not know
        raise UsageError(f"unknown `model` {spec!r}; choose one of {', '.join(MODELS)} or a path")
    return _path(spec, cfg)

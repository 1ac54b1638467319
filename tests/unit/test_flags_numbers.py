"""Numeric flags: NaN and ±inf refused by every float flag (unless a field opts in), out-of-range counts refused
with the valid range instead of clamped, and the toy/decompose sizes named flag by flag (issue 24, items 4, 5, 11)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass

import pytest

from mechscope.cli.toy import TMSConfig
from mechscope.coding.frontier import FrontierConfig
from mechscope.config import (
    NON_FINITE,
    add_arguments,
    check_ranges,
    finite_float,
    from_namespace,
    in_range,
)
from mechscope.decompose.config import SPDConfig
from mechscope.decompose.toys import TargetConfig
from mechscope.errors import UsageError
from mechscope.sae import OptimConfig
from mechscope.sae.jumprelu import JumpReLUConfig
from mechscope.slt.calibrate import CalibrationConfig
from mechscope.slt.estimator import LLCConfig
from mechscope.toy.bench import BenchConfig
from mechscope.toy.datadim import DataDimConfig
from mechscope.toy.features import FeatureConfig
from mechscope.toy.models import ToyModelConfig
from mechscope.toy.sweep import SweepConfig


@dataclass(frozen=True)
class Numbers:
    """A config with every kind of float field."""

    rate: float = 0.5
    """A plain float."""
    tol: float | None = None
    """An optional float."""
    grid: tuple[float, ...] = (1.0, 2.0)
    """Several floats."""
    cap: float = dataclasses.field(default=math.inf, metadata=NON_FINITE)
    """An upper bound; inf = none (so this field accepts inf and nan)."""


def _parse(argv: list[str]) -> Numbers:
    p = argparse.ArgumentParser(prog="x")
    add_arguments(p, Numbers)
    return from_namespace(Numbers, p.parse_args(argv))


@pytest.mark.parametrize("flag", ["--rate", "--tol", "--grid"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_float_flags_refuse_non_finite_values_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        _parse([f"{flag}={value}"])  # the = form: argparse reads a bare -inf as another option
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"x: error: argument {flag}:") and "not a finite number" in err, err


def test_finite_values_pass_and_a_field_may_opt_in_to_non_finite():
    cfg = _parse(["--rate=-1e-3", "--tol", "0", "--grid", "3", "1e30"])
    assert (cfg.rate, cfg.tol, cfg.grid) == (-1e-3, 0.0, (3.0, 1e30))
    assert _parse(["--cap", "inf"]).cap == math.inf and math.isnan(_parse(["--cap", "nan"]).cap)
    with pytest.raises(argparse.ArgumentTypeError, match="'two' is not a number"):
        finite_float("two")


def test_sae_sweep_values_refuse_non_finite_floats():
    from mechscope.cli.train import sweep_members
    from mechscope.sae import OptimConfig, TopKConfig

    with pytest.raises(UsageError, match=r"--sweep lr=nan: lr takes finite float values"):
        sweep_members(TopKConfig(d_in=4, latents=8, k=2), OptimConfig(), ["lr=1e-3,nan"])


def test_detect_settings_refuse_non_finite_floats():
    from mechscope.cli.detect import parse_settings

    assert parse_settings("mahalanobis", ("calibration_fraction=0.3",)) == {"calibration_fraction": 0.3}
    with pytest.raises(UsageError, match=r"'inf' is not a valid finite float"):
        parse_settings("mahalanobis", ("calibration_fraction=inf",))


def test_detect_settings_refuse_a_field_without_a_default_by_name(monkeypatch):
    # A required field has no default to take its type from (parse_settings once called type(MISSING)(value)).
    from mechscope.anomaly import REGISTRY
    from mechscope.anomaly.base import DetectorConfig
    from mechscope.cli.detect import parse_settings

    @dataclass(frozen=True)
    class Required(DetectorConfig):
        rank: int = dataclasses.field(kw_only=True)

    class Fake:
        config_cls = Required

    monkeypatch.setitem(REGISTRY, "fake", Fake)
    with pytest.raises(UsageError, match=r"--set 'rank=3': rank of detector 'fake' has no default"):
        parse_settings("fake", ("rank=3",))


@pytest.mark.parametrize(
    "cls, kw, match",
    [
        (TMSConfig, {"features": 0}, r"^`features` 0: .* give `features` ≥ 2$"),
        (TMSConfig, {"features": -3}, r"^`features` -3: .* give `features` ≥ 2$"),
        (TMSConfig, {"dims": 0}, r"^`dims` 0: give `dims` between 1 and 4 "),
        (TMSConfig, {"importance_decay": math.inf}, r"--importance-decay inf must be finite"),
        (TMSConfig, {"importance_decay": 1e30}, r"--importance-decay 1e\+30: .* between 0 \(excluded\) and 3.16e\+07$"),
        (TMSConfig, {"instances": 0}, r"instances.* ≥ 1"),
        (FeatureConfig, {"importance_decay": math.nan}, "importance_decay must be finite"),
        (FeatureConfig, {"scale_sigma": math.inf}, "scale_sigma"),
        (ToyModelConfig, {"lr": math.nan}, "lr must be positive and finite"),
        (SweepConfig, {"n_features": 0}, r"^`n_features` 0: .* ≥ 2$"),
        (DataDimConfig, {"toy_steps": 0}, "`toy_steps` and `image_steps`"),
        (BenchConfig, {"k": 100, "latents": 10}, r"^`k` 100 .* give `k` between 1 and 10 "),
        (BenchConfig, {"k": 5000, "latents": 0}, r"give `k` between 1 and 4096 "),  # latents 0: as many as features
        (BenchConfig, {"lr": math.nan}, r"^`lr`: nan is out of range; give a value in \(0, 10\]$"),
        (BenchConfig, {"curve_points": -1}, r"`curve_points` ≥ 0"),
        (TargetConfig, {"features": 0}, r"^`features` 0: .* ≥ 2$"),
        (TargetConfig, {"dims": 0}, r"^--dims 0: give --dims ≥ 1"),
        (TargetConfig, {"toy_steps": 0}, r"^--toy-steps 0: must be ≥ 1$"),
        (SPDConfig, {"lr": math.nan}, r"^`lr`: nan is out of range; give a value in \(0, 10\]$"),
        (
            SPDConfig,
            {"importance_coeff": math.inf, "leak": -1},
            r"^`importance_coeff`: inf is out of range; give a value in \[0, 1e6\]$",
        ),
        (SPDConfig, {"checkpoint_every": -1}, r"^`checkpoint_every`: -1 is out of range; give a value ≥ 0$"),
    ],
)
def test_out_of_range_sizes_name_the_flag_and_the_range(cls, kw, match):
    """Python callers get the same refusals as the flags, naming the parameter where the message is the library's
    (a NaN fails every comparison, so each check is written to fail on it)."""
    with pytest.raises(UsageError, match=match):
        cls(**kw)


def test_auto_k_above_the_dictionary_is_refused_too():
    from mechscope.toy.bench import dict_size_sweep

    cfg = BenchConfig(n_features=64, d=16, parents=4, p=0.2, latents=64, steps=1, batch_size=8, eval_rows=8)
    with pytest.raises(UsageError, match=r"`k` 12 is more than the 4 latents of the smallest of `sizes`"):
        dict_size_sweep(cfg, (4, 32), progress=False)  # k = 0: the expected L0, 4·0.2 + 12·0.1 + 48·0.2 = 11.6 → 12


# ---- ranges (issue 24, the campaign's last cases): one Range per field, used by the flag and by the config ----


@dataclass(frozen=True)
class Ranged:
    """A config with ranged fields."""

    lr: float = dataclasses.field(default=0.1, metadata=in_range(0, 10, lo_open=True))
    """A learning rate."""
    grid: tuple[int, ...] = dataclasses.field(default=(1, 2), metadata=in_range(1))
    """Counts."""
    cap: float = dataclasses.field(default=math.inf, metadata={**NON_FINITE, **in_range(0)})
    """An upper bound; inf = none."""

    def __post_init__(self) -> None:
        check_ranges(self)


@pytest.mark.parametrize(
    "argv, flag, refusal",
    [
        (["--lr", "1e300"], "--lr", "1e+300 is out of range; give a value in (0, 10]"),
        (["--lr", "0"], "--lr", "0.0 is out of range; give a value in (0, 10]"),
        (["--grid", "3", "0"], "--grid", "0 is out of range; give a value ≥ 1"),
        (["--cap=-1"], "--cap", "-1.0 is out of range; give a value ≥ 0"),
    ],
)
def test_a_range_is_checked_by_the_flag_and_by_the_config(argv, flag, refusal, capsys):
    p = argparse.ArgumentParser(prog="x")
    add_arguments(p, Ranged)
    with pytest.raises(SystemExit):
        p.parse_args(argv)
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"x: error: argument {flag}: {refusal}"
    name = flag[2:]
    value = float(argv[-1].split("=")[-1])
    with pytest.raises(UsageError, match=rf"^`{name}`: "):  # the same Range, built in Python
        Ranged(**{name: (value,) if name == "grid" else value})
    assert Ranged(cap=math.inf).cap == math.inf  # NON_FINITE composes with a range


# Every flag the campaign found accepting a value that overflows later, hangs or is silently meaningless.
RANGED_FLAGS = [
    ("train", "--lr", "1e300"),
    ("train", "--l1-coef", "1e300"),
    ("train", "--sparsity-coef", "1e300"),
    ("train", "--auxk-coef", "1e300"),
    ("train", "--tanh-scale", "1e300"),
    ("train", "--bandwidth", "1e300"),
    ("train", "--threshold-init", "1e300"),
    ("train", "--max-grad-norm", "1e300"),
    ("train", "--beta1", "-0.5"),
    ("train", "--beta1", "1e300"),
    ("train", "--beta2", "0"),
    ("train", "--beta2", "1"),
    ("train", "--warmup-steps", "-5"),
    ("train", "--sparsity-warmup-steps", "-5"),
    ("frontier", "--coding-gram-max-latents", "-5"),
    ("frontier", "--coding-nnls-max-iter", "0"),
    ("frontier", "--coding-scale-ridge", "1e300"),
    ("frontier", "--batch-size", "0"),
    ("frontier", "--batch-size", "-5"),
    ("frontier", "--eval-rows", "0"),
    ("frontier", "--fit-rows", "-5"),
    ("frontier", "--loss-contexts", "0"),
    ("report", "--latents", "-5"),
    ("graph", "--dashboard-rows", "0"),
    ("harvest", "--max-tokens", "0"),
    ("harvest", "--max-tokens", "-5"),
    ("circuit", "--threshold", "1e300"),
    ("decompose", "--steps", "0"),
    ("decompose", "--lr", "1e300"),
    ("decompose", "--warmup-lr", "1e300"),
    ("decompose", "--faithfulness-coeff", "1e300"),
    ("decompose", "--recon-coeff", "1e300"),
    ("decompose", "--recon-layerwise-coeff", "1e300"),
    ("decompose", "--importance-coeff", "1e300"),
    ("decompose", "--pnorm", "1e300"),
    ("decompose", "--leak", "1e300"),
    ("decompose", "--upper-leak", "1e300"),
    ("llc", "--epsilon", "1e300"),
    ("llc", "--gamma", "1e300"),
    ("llc", "--nbeta", "1e300"),
    ("llc", "--cal-eps-grid", "1e300"),
    ("llc", "--cal-gammas", "1e300"),
    ("llc", "--cal-pilot-time", "1e300"),
    ("llc", "--cal-pilot-rel-se", "1e300"),
    ("llc", "--cal-rel-tol", "1e300"),
    ("llc", "--cal-max-healthy", "0"),
    ("llc", "--cal-max-healthy", "-5"),
    ("llc", "--cal-pilot-chains", "0"),
    ("llc", "--cal-pilot-chains", "-5"),
    ("demo", "--toy-steps", "0"),
    ("demo", "--toy-steps", "-5"),
    ("demo", "--lr", "1e300"),
    ("toy bench", "--scale-sigma", "1e300"),
    ("toy bench", "--lr", "1e300"),
]


@pytest.mark.parametrize("command, flag, value", RANGED_FLAGS)
def test_out_of_range_values_are_refused_by_the_flag(command, flag, value, capsys):
    from mechscope.cli import command_parser

    name, *action = command.split()
    with pytest.raises(SystemExit) as e:
        command_parser(name).parse_args([*action, f"{flag}={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(rf"error: argument {flag}: \S+ is out of range; give a value ", err), err


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: OptimConfig(beta1=-0.5), r"^`beta1`: -0.5 is out of range; give a value in \[0, 1\)$"),
        (lambda: OptimConfig(warmup_steps=-5), r"^`warmup_steps`: -5 is out of range; give a value ≥ 0$"),
        (lambda: OptimConfig(lr=1e300), r"^`lr`: 1e\+300 is out of range; give a value in \(0, 10\]$"),
        (
            lambda: CalibrationConfig(pilot_chains=0),
            r"^`pilot_chains`: 0 is out of range; give a value ≥ 2 \(the standard",
        ),
        (lambda: LLCConfig(gamma=1e300), r"^`gamma`: 1e\+300 is out of range; give a value in \[0, 1e6\]$"),
        (
            lambda: JumpReLUConfig(d_in=4, latents=8, threshold_init=1e300),
            r"^`threshold_init`: 1e\+300 is out of range",
        ),
        (lambda: FrontierConfig(eval_rows=0), r"^`eval_rows`: 0 is out of range; give a value ≥ 1$"),
        (lambda: SPDConfig(pnorm=1e300), r"^`pnorm`: 1e\+300 is out of range; give a value in \(0, 10\] \(\|g\|\^p"),
    ],
)
def test_configs_built_in_python_refuse_out_of_range_values_naming_the_field(make, match):
    with pytest.raises(UsageError, match=match):
        make()


def test_sweep_names_an_unknown_field_first_as_given():
    from mechscope.cli.train import sweep_members
    from mechscope.sae import TopKConfig

    with pytest.raises(UsageError, match=r"^--sweep nope-campaign: no such field of TopKConfig or OptimConfig; "):
        sweep_members(TopKConfig(d_in=4, latents=8, k=2), OptimConfig(), ["nope-campaign=1,2"])
    with pytest.raises(UsageError, match=r"^--sweep beta2=0: beta2: 0.0 is out of range; give a value in \(0, 1\)"):
        sweep_members(TopKConfig(d_in=4, latents=8, k=2), OptimConfig(), ["beta2=0"])

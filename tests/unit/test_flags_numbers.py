"""Numeric flags: NaN and ±inf refused by every float flag (unless a field opts in), out-of-range counts refused
with the valid range instead of clamped, and the toy/decompose sizes named flag by flag (issue 24, items 4, 5, 11)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import pytest

from mechscope.config import NON_FINITE, add_arguments, finite_float, from_namespace
from mechscope.decompose.config import SPDConfig
from mechscope.decompose.toys import TargetConfig
from mechscope.errors import UsageError
from mechscope.toy.bench import BenchConfig
from mechscope.toy.cli import TMSConfig
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
    from mechscope.sae import OptimConfig, TopKConfig
    from mechscope.sae.cli import sweep_members

    with pytest.raises(UsageError, match=r"--sweep lr=nan: lr takes finite float values"):
        sweep_members(TopKConfig(d_in=4, latents=8, k=2), OptimConfig(), ["lr=1e-3,nan"])


def test_detect_settings_refuse_non_finite_floats():
    from mechscope.anomaly.cli import parse_settings

    assert parse_settings("mahalanobis", ("calibration_fraction=0.3",)) == {"calibration_fraction": 0.3}
    with pytest.raises(UsageError, match=r"'inf' is not a valid finite float"):
        parse_settings("mahalanobis", ("calibration_fraction=inf",))


@pytest.mark.parametrize("cls, kw, match", [
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
    (BenchConfig, {"lr": math.nan}, r"`lr` nan must be positive and finite"),
    (BenchConfig, {"curve_points": -1}, r"`curve_points` ≥ 0"),
    (TargetConfig, {"features": 0}, r"^`features` 0: .* ≥ 2$"),
    (TargetConfig, {"dims": 0}, r"^--dims 0: give --dims ≥ 1"),
    (TargetConfig, {"toy_steps": 0}, r"^--toy-steps 0: must be ≥ 1$"),
    (SPDConfig, {"lr": math.nan}, r"^--lr nan: it must be positive and finite$"),
    (SPDConfig, {"importance_coeff": math.inf, "leak": -1}, r"^--importance-coeff inf, --leak -1: each must be finite and ≥ 0$"),
    (SPDConfig, {"checkpoint_every": -1}, r"^--checkpoint-every -1: it must be ≥ 0$"),
])
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

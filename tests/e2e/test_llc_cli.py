"""``mechscope llc`` end to end: calibrated known answers, a model with checkpoints and its report, and
the one-line errors a user can cause."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.harness import assert_one_line_error, run_cli
from tests.helpers_report import assert_offline

# A reduced sweep for CI (the same rule, fewer grid points): docs/llc.md uses the full default grid.
FAST_CAL = [
    "--cal-gammas",
    "1",
    "10",
    "--cal-eps-grid",
    "1",
    "0.3",
    "0.1",
    "0.03",
    "--cal-pilot-max-steps",
    "1500",
    "--no-progress",
    "--batch-size",
    "500",
]


@pytest.mark.slow
@pytest.mark.parametrize("spec,draws", [("regular:3", "2000"), ("rrr:4,3,8,0", "2000")])
def test_known_answer_calibrated_within_ten_percent(spec, draws):
    proc = run_cli(["llc", "--known", spec, "--json", "--draws", draws, *FAST_CAL], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["llc_true"] == {"regular:3": 1.5, "rrr:4,3,8,0": 6.0}[spec]
    assert abs(r["rel_error"]) <= 0.10, r
    assert r["calibration"]["found_plateau"] and r["diagnostics"]["healthy"], r
    assert r["llc_se"] < 0.05 * r["llc_true"]


@pytest.mark.slow
def test_model_with_checkpoints_writes_the_report(tmp_path):
    out = tmp_path / "llc"
    proc = run_cli(
        [
            "llc",
            "--model",
            "mlp",
            "--checkpoints",
            "--no-calibrate",
            "--epsilon",
            "3e-4",
            "--gamma",
            "100",
            "--chains",
            "2",
            "--draws",
            "60",
            "--burn-in",
            "20",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    steps = [p["step"] for p in r["checkpoints"]]
    assert steps == sorted(steps) and steps[0] == 0 and len(steps) == 11
    assert r["n_params"] == 16 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    assert r["effective_params"] == pytest.approx(2 * r["llc_hat"])
    # training lowers the loss the λ̂ is taken at
    assert r["checkpoints"][-1]["train_loss"] < 0.5 * r["checkpoints"][0]["train_loss"]
    page = (out / "report.html").read_text()
    assert "Local learning coefficient" in page and page.count("data:image/png;base64,") == 2
    assert_offline(page)
    assert (out / "llc_checkpoints.png").stat().st_size > 1000 and json.loads((out / "llc.json").read_text())[
        "model"
    ] == "mlp"


def test_text_output_prints_the_estimate_beside_the_parameter_count(tmp_path):
    proc = run_cli(
        [
            "llc",
            "--model",
            "mlp",
            "--no-calibrate",
            "--epsilon",
            "3e-4",
            "--gamma",
            "100",
            "--chains",
            "2",
            "--draws",
            "30",
            "--burn-in",
            "10",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "λ̂ = " in proc.stdout and "±" in proc.stdout
    assert "effective parameter count 2λ̂" in proc.stdout and "1,732 parameters" in proc.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (
            ["--known", "regular:2", "--no-calibrate", "--epsilon", "0"],
            r"argument --epsilon: 0.0 is out of range; give a value in \(0, 1000\]",
        ),
        (
            ["--known", "regular:2", "--no-calibrate", "--gamma", "-1"],
            r"argument --gamma: -1.0 is out of range; give a value in \[0, 1e6\]",
        ),
        (["--known", "regular:2", "--n", "100", "--batch-size", "256"], "fewer than the batch size"),
        (["--known", "cubic:3"], "unknown known-answer spec"),
        (["--model", "mlp:big"], "takes no argument"),
        (["--known", "regular:2", "--checkpoints"], "--checkpoints needs --model"),
    ],
)
def test_usage_errors_are_one_line(args, match):
    assert_one_line_error(["llc", *args, "--no-progress"], match, code=2)


BROKEN = textwrap.dedent("""
    import torch
    from torch import nn
    from mechscope.slt.targets import Target

    def _base():
        torch.manual_seed(0)
        return nn.Linear(3, 2), (torch.randn(64, 3), torch.randint(0, 2, (64,)))

    def frozen():
        model, data = _base()
        model.requires_grad_(False)
        return Target("frozen", model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), data)

    def nan_loss():
        model, data = _base()
        return Target("nan", model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]) * float("nan"), data)
""")


@pytest.mark.parametrize(
    "fn,match,code", [("frozen", "no trainable parameters", 2), ("nan_loss", "loss at w\\* is nan", 1)]
)
def test_bad_models_are_one_line_errors(tmp_path, fn, match, code):
    (tmp_path / "broken_llc_models.py").write_text(BROKEN)
    assert_one_line_error(
        [
            "llc",
            "--model",
            f"python:broken_llc_models:{fn}",
            "--no-calibrate",
            "--batch-size",
            "32",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        match,
        code=code,
        cwd=str(tmp_path),
    )

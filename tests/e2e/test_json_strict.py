"""``--json`` is strict JSON on every command (issue 24, item 8): one object on stdout that a strict parser reads,
a missing number written as null, never a bare NaN or Infinity token. Each command runs in process on a cheap
input; ``detect --bootstrap 0`` has no interval to report, and printed ``NaN`` for it before this change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechscope.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scrub"


def _refuse(token: str):
    raise AssertionError(f"bare {token} in --json output: strict JSON has no such token")


def strict(capsys) -> dict:
    """The one line of stdout, parsed strictly (NaN, Infinity and -Infinity refused)."""
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout must be one JSON line, got {len(lines)}"
    return json.loads(lines[0], parse_constant=_refuse)


def test_detect_without_bootstrap_writes_null_intervals(tiny_detect_task, capsys):
    assert main(["detect", "--benchmark", "ood", "--detector", "mahalanobis", "--bootstrap", "0", "--json"]) == 0
    out = strict(capsys)
    assert out["auroc_ci"] == [None, None] and 0.5 < out["auroc"] <= 1  # the interval is missing, not made up
    assert (
        main(["detect", "--all", "--benchmark", "ood", "--detector", "mahalanobis", "--bootstrap", "0", "--json"]) == 0
    )
    assert strict(capsys)["table"][0]["ap_ci"] == [None, None]


def test_toy_actions(tmp_path, capsys):
    small = ["--steps", "5", "--batch-size", "32", "--out"]
    assert main(["toy", "tms", "--features", "4", "--instances", "2", *small, str(tmp_path / "tms"), "--json"]) == 0
    assert strict(capsys)["action"] == "tms"
    assert (
        main(
            [
                "toy",
                "sweep",
                "--n-features",
                "4",
                "--dims",
                "2",
                "--points",
                "2",
                "--instances",
                "1",
                *small,
                str(tmp_path / "sweep"),
                "--json",
            ]
        )
        == 0
    )
    assert len(strict(capsys)["points"]) == 2
    assert (
        main(
            [
                "toy",
                "bench",
                "--n-features",
                "64",
                "--d",
                "16",
                "--parents",
                "4",
                "--latents",
                "32",
                "--archs",
                "topk",
                "--coders",
                "omp",
                "--eval-rows",
                "64",
                "--curve-points",
                "0",
                *small,
                str(tmp_path / "bench"),
                "--json",
            ]
        )
        == 0
    )
    assert {r["method"] for r in strict(capsys)["rows"]} >= {"topk", "omp"}
    # the file beside it is strict too
    json.loads((tmp_path / "bench" / "bench.json").read_text(), parse_constant=_refuse)


def test_llc_known_answer(capsys):
    assert (
        main(
            [
                "llc",
                "--known",
                "regular:2",
                "--n",
                "500",
                "--no-calibrate",
                "--chains",
                "2",
                "--draws",
                "20",
                "--burn-in",
                "5",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    assert strict(capsys)["llc_true"] == 1.0


def test_zoo_list(capsys, zoo_modadd):
    assert main(["zoo", "list", "--json"]) == 0
    assert {m["name"] for m in strict(capsys)["models"]} == {"parens", "modadd", "induction"}


def test_scrub(capsys, zoo_modadd):
    assert main(["scrub", str(EXAMPLES / "modadd-correct.yaml"), "--examples", "50", "--seeds", "2", "--json"]) == 0
    assert strict(capsys)["examples"] == 50


@pytest.mark.parametrize("method", ["atp", "acdc"])
def test_circuit(method, capsys, zoo_induction):
    assert (
        main(["circuit", "--model", "zoo:induction", "--method", method, "--examples", "8", "--budget", "2", "--json"])
        == 0
    )
    assert strict(capsys)["method"] == method


def test_decompose(tmp_path, capsys):
    assert (
        main(
            [
                "decompose",
                "--model",
                "toy:tms",
                "--toy-steps",
                "20",
                "--steps",
                "4",
                "--warmup-steps",
                "2",
                "--batch-size",
                "32",
                "--n-eval",
                "64",
                "--out",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    assert "alive" in strict(capsys)

"""``mechscope detect``: JSON keys, the HTML report, and one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from mechscope.data.images import fashion_mnist_dir
from tests.harness import assert_one_line_error, run_cli
from tests.helpers_report import assert_offline

needs_fashion = pytest.mark.skipif(
    not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("CI"),
    reason="Fashion-MNIST is not installed (make data)",
)


@pytest.mark.slow
@needs_fashion
def test_detect_json_and_report(tmp_path):
    report = tmp_path / "detect.html"
    proc = run_cli(
        [
            "detect",
            "--benchmark",
            "backdoor-corner",
            "--detector",
            "knn",
            "--json",
            "--bootstrap",
            "50",
            "--report",
            str(report),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"auroc", "auroc_ci", "ap", "per_site"} <= set(out)
    assert set(out["per_site"]) == {"act1", "act2", "out"}
    assert out["auroc_ci"][0] <= out["auroc"] <= out["auroc_ci"][1]
    page = report.read_text()
    assert "ROC curves" in page and "data:image/png;base64," in page and "backdoor-corner" in page
    assert_offline(page)


@pytest.mark.parametrize(
    "args, match",
    [
        (["detect", "--benchmark", "nope", "--detector", "knn"], "unknown benchmark 'nope'"),
        (["detect", "--benchmark", "ood", "--detector", "knn", "--set", "k=two"], "not a valid int"),
        (
            ["detect", "--task", "ood", "--detector", "knn"],
            r"error: --task was renamed to --benchmark; give --benchmark NAME$",
        ),
    ],
)
def test_bad_flags_end_in_one_line(args, match):
    assert_one_line_error(args, match, code=2)


@pytest.mark.slow
def test_too_few_trusted_rows_without_shrinkage_is_one_line():
    # backdoor-lm: width 64 at every site; 50 trusted inputs leave 40 rows to fit (10 calibrate)
    assert_one_line_error(
        [
            "detect",
            "--benchmark",
            "backdoor-lm",
            "--detector",
            "mahalanobis",
            "--trusted",
            "50",
            "--set",
            "shrinkage=none",
        ],
        r"40 trusted rows for 64 dimensions.*; use --set shrinkage='ledoit-wolf' or give more",
        code=2,
    )


def test_help_lists_every_flag():
    from mechscope.cli import command_parser

    text = command_parser("detect").format_help()
    for flag in ("--benchmark", "--detector", "--all", "--json", "--report", "--set", "--bootstrap"):
        assert flag in text
    assert "--task" not in text  # the old name is only refused, not offered

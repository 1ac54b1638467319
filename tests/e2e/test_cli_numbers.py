"""Bad numbers through the real command line (issue 24, items 4, 5, 11): exit 2 and one line naming the flag and
the valid range, never a silent clamp, a NaN run to rc 0, or a traceback. Each row fails before any work, or after
loading zoo:induction, a cached toy model or the stand-in detection task of conftest.py; before this change each
ran to rc 0, ended in a traceback, or named another flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import check_one_line_error, run_cli_many

CASES = [
    (
        ["circuit", "--model", "zoo:induction", "--method", "acdc", "--threshold", "nan"],
        r"argument --threshold: 'nan' is not a finite number",
    ),
    (
        ["circuit", "--model", "zoo:induction", "--method", "acdc", "--threshold=inf"],
        r"argument --threshold: 'inf' is not a finite number",
    ),
    (["decompose", "--model", "toy:tms", "--lr", "nan"], r"argument --lr: 'nan' is not a finite number"),
    (["toy", "tms", "--importance-decay", "inf"], r"argument --importance-decay: 'inf' is not a finite number"),
    (["toy", "tms", "--p=-inf"], r"argument --p: '-inf' is not a finite number"),
    (["evaluate", "--sae-scaling-factor", "nan"], r"argument --sae-scaling-factor: 'nan' is not a finite number"),
    (["llc", "--known", "regular:2", "--epsilon", "inf"], r"argument --epsilon: 'inf' is not a finite number"),
    (
        ["toy", "tms", "--features", "0"],
        r"--features 0: a toy model of superposition needs at least 2 features; give --features ≥ 2",
    ),
    (["toy", "tms", "--features", "-3"], r"--features -3: .* give --features ≥ 2"),
    (
        ["toy", "tms", "--importance-decay", "1e30"],
        r"--importance-decay 1e\+30: .* give --importance-decay between 0 \(excluded\) and 3.16e\+07",
    ),
    (
        ["toy", "bench", "--k", "100", "--latents", "10"],
        r"--k 100 is more than the 10 latents .* give --k between 1 and 10",
    ),
    (["decompose", "--model", "toy:tms", "--features", "0"], r"--features 0: .* give --features ≥ 2"),
    (["decompose", "--model", "toy:tms", "--features", "2"], r"--dims 2: give --dims between 1 and 1 for 2 features"),
    (
        [
            "circuit",
            "--model",
            "zoo:induction",
            "--method",
            "atp",
            "--top",
            "100000",
            "--examples",
            "8",
            "--budget",
            "0",
        ],
        r"--top 100000: atp scores \d+ nodes on this model and task; give --top between 1 and \d+",
    ),
    (
        [
            "circuit",
            "--model",
            "zoo:induction",
            "--method",
            "eap",
            "--top",
            "100000",
            "--examples",
            "8",
            "--budget",
            "0",
        ],
        r"--top 100000: eap scores \d+ edges on this model and task; give --top between 1 and \d+",
    ),
    (
        ["scrub", "examples/scrub/induction-correct.yaml", "--model", "zoo:induction", "--examples", "100000000"],
        r"only 2000 held-out examples, 100000000 references \+ 0 pool asked; give --examples between 1 and 2000",
    ),
]


@pytest.mark.slow
def test_bad_numbers_end_in_one_line_naming_the_flag(tmp_path, zoo_induction):
    root = Path(__file__).resolve().parents[2]  # the scrub row names an example hypothesis by its relative path
    procs = run_cli_many(
        [
            [*argv, "--out", str(tmp_path / f"o{i}")] if argv[0] in ("toy", "decompose") else argv
            for i, (argv, _) in enumerate(CASES)
        ],
        cwd=str(root),
    )
    for (_, match), proc in zip(CASES, procs):
        check_one_line_error(proc, match, code=2)


def test_detect_refuses_more_trusted_inputs_than_the_benchmark_has(tiny_detect_task, capsys):
    from mechscope.cli import main

    assert (
        main(
            ["detect", "--benchmark", "ood", "--detector", "mahalanobis", "--trusted", "100000000", "--bootstrap", "0"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mechscope: error: --trusted 100000000: benchmark ood has 200 trusted inputs; give --trusted between 1 and 200 "
        "(0 = all of them)"
    ]

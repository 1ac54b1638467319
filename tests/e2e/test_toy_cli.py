"""``mechscope toy``: every action runs end to end on a tiny budget, writes its JSON, plots and report,
and bad inputs end in one line naming the fix."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mechscope.cli import main
from mechscope.errors import UsageError
from tests.harness import assert_one_line_error
from tests.helpers_report import assert_offline


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


def run_json(args, capsys) -> dict:
    assert main(args + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tms_json_plot_and_report(tmp_path, capsys):
    out = tmp_path / "tms"
    res = run_json(
        ["toy", "tms", "--features", "5", "--dims", "2", "--steps", "300", "--instances", "2", "--out", str(out)],
        capsys,
    )
    assert len(res["feature_dimensionality"]) == 5 and 0 < res["dims_per_feature"] <= 1
    assert (
        res["theory"]["feature_dimensionality"] == pytest.approx(0.4) and 1.1 < res["theory"]["norm"] < 1.2
    )  # p = 0.01
    for name in ("tms.png", "tms.json", "report.html"):
        assert (out / name).is_file()
    assert "Toy model of superposition" in (out / "report.html").read_text()
    assert_offline((out / "report.html").read_text())


def test_sweep_and_data_dim_tiny(tmp_path, capsys):
    res = run_json(
        [
            "toy",
            "sweep",
            "--n-features",
            "6",
            "--dims",
            "2",
            "--points",
            "2",
            "--steps",
            "100",
            "--instances",
            "1",
            "--out",
            str(tmp_path / "sweep"),
        ],
        capsys,
    )
    assert [round(p["p"], 3) for p in res["points"]] == [1.0, 0.02] and (
        tmp_path / "sweep" / "sparsity-sweep.png"
    ).is_file()
    res = run_json(
        [
            "toy",
            "data-dim",
            "--image-set",
            "digits",
            "--sizes",
            "5",
            "20",
            "--toy-steps",
            "50",
            "--image-steps",
            "30",
            "--n-features",
            "50",
            "--out",
            str(tmp_path / "dd"),
        ],
        capsys,
    )
    for curve in ("toy", "image"):
        pts = res["curves"][curve]
        assert [p["T"] for p in pts] == [5, 20] and all(p["train_mean"] > 0 and p["val_mean"] > 0 for p in pts)
    assert (tmp_path / "dd" / "data-dim.png").is_file()


def test_bench_scores_every_architecture_and_coder_and_new_ones_join(tmp_path, capsys, monkeypatch):
    from mechscope.coding import CODERS
    from mechscope.sae import REGISTRY, TopKConfig, TopKSAE

    @dataclasses.dataclass(frozen=True)
    class SecondTopKConfig(TopKConfig):
        """A new architecture registered after the benchmark was written."""

    class SecondTopK(TopKSAE):
        arch = "second_topk"
        config_cls = SecondTopKConfig

    monkeypatch.setitem(REGISTRY, "second_topk", SecondTopK)
    out = tmp_path / "bench"
    res = run_json(
        [
            "toy",
            "bench",
            "--n-features",
            "96",
            "--d",
            "24",
            "--latents",
            "96",
            "--parents",
            "4",
            "--p",
            "0.03",
            "--steps",
            "20",
            "--batch-size",
            "64",
            "--eval-rows",
            "128",
            "--dict-sizes",
            "48",
            "96",
            "--out",
            str(out),
        ],
        capsys,
    )
    methods = {r["method"] for r in res["rows"]}
    assert set(REGISTRY) | set(CODERS) <= methods and "second_topk" in methods
    assert all(r["l0"] <= res["k"] + 1e-9 for r in res["rows"])  # matched L0: nobody uses more than k
    assert {p["latents"] for p in res["dict_sizes"]} == {48, 96}
    # The convergence curve: MMCS of every SAE (Matryoshka and the late registration included) at log-spaced steps.
    assert [p["step"] for p in res["curve"]][-1] == 20 and res["curve"][-1]["rows"] == 20 * 64
    assert len(res["curve"]) >= 5 and all(set(p["mmcs"]) == set(REGISTRY) for p in res["curve"])
    assert "matryoshka" in REGISTRY and all(0 < v <= 1 for p in res["curve"] for v in p["mmcs"].values())
    for name in ("bench.png", "bench.md", "dict-size.png", "convergence.png", "report.html"):
        assert (out / name).is_file()


def test_a_bad_input_ends_in_one_line(tmp_path):
    assert_one_line_error(
        ["toy", "tms", "--features", "3", "--dims", "4", "--out", str(tmp_path)], "use fewer dims than features", code=2
    )


@pytest.mark.parametrize(
    "args, match",
    [
        (["toy", "tms", "--p", "0"], r"outside \(0, 1\]"),
        (["toy", "sweep", "--points", "1"], "at least two points"),
        (["toy", "data-dim", "--sizes", "10"], "at least two sizes"),
        (["toy", "bench", "--n-features", "64", "--d", "128"], "fewer dims than features"),
        (["toy", "bench", "--n-features", "64", "--d", "16", "--archs", "nope"], "unknown architectures"),
        (["toy", "bench", "--n-features", "64", "--d", "16", "--dict-sizes", "32"], "at least two sizes"),
    ],
)
def test_bad_inputs_raise_usage_errors(args, match, tmp_path):
    """In process (the CLI prints any UsageError as one line, as the subprocess test above shows)."""
    from mechscope.cli import command_parser

    parsed = command_parser(args[0]).parse_args(args[1:] + ["--out", str(tmp_path)])
    with pytest.raises(UsageError, match=match):
        parsed._run(parsed)

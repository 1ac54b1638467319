"""The whole demo path on SmolLM2 with a tiny budget: every stage wired, every output written."""

from __future__ import annotations

import json

from mechscope.cli import main


def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path, capsys, smollm2):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--tokens",
            "3000",
            "--val-tokens",
            "1000",
            "--latents",
            "512",
            "--k",
            "8",
            "--steps",
            "30",
            "--batch-size",
            "512",
            "--frontier-l0s",
            "4",
            "--frontier-rows",
            "256",
            "--loss-contexts",
            "1",
            "--report-contexts",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    for what in ("store", "SAE", "frontier", "report"):
        assert f"  {what}" in printed
    assert "loss recovered vs zero" in printed and "rock" in printed
    ev = json.loads((out / "sae" / "topk" / "eval.json").read_text())
    assert ev["l0"] == 8.0 and 0.0 < ev["fvu"] < 1.0
    front = json.loads((out / "frontier" / "frontier.json").read_text())
    assert {p["coder"] for p in front["points"]} >= {"omp", "gp", "mp", "encoder"}
    assert all("loss" in p["loss"] for p in front["points"])
    html = (out / "report.html").read_text()
    assert "Sparse coding at inference time" in html and "data:image/png;base64" in html
    # A re-run reuses the store and the SAE instead of recomputing them; with --json, stdout is one object.
    assert (
        main(
            [
                "demo",
                "--json",
                "--out",
                str(out),
                "--tokens",
                "3000",
                "--val-tokens",
                "1000",
                "--latents",
                "512",
                "--k",
                "8",
                "--steps",
                "30",
                "--batch-size",
                "512",
                "--frontier-l0s",
                "4",
                "--frontier-rows",
                "128",
                "--loss-contexts",
                "1",
                "--report-contexts",
                "1",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "reusing the SAE" in captured.err
    result = json.loads(captured.out)
    assert (
        result["sae"]["l0"] == 8.0 and result["splice"]["clean_loss"] > 0 and result["report"].endswith("report.html")
    )
    assert result["frontier"]["points"]
    # the TMS pentagon stage: five features, each owning 2/5 of a dimension
    D = result["toy"]["feature_dimensionality"]
    assert len(D) == 5 and all(abs(d - 0.4) < 0.02 for d in D), D
    assert abs(result["toy"]["dims_per_represented_feature"] - 0.4) < 1e-9

"""``--json`` on the core commands: stdout holds exactly one JSON object with the results, the progress
lines go to stderr, and the object is strict JSON (no NaN token). One chain on a tiny Llama: harvest → train →
evaluate → frontier → report."""

from __future__ import annotations

import json

import pytest

from mechscope.cli import main
from tests.harness import SMALL_TEXT

SITE = "resid_post.1"


def _refuse(token: str):
    raise AssertionError(f"bare {token} in --json output: strict JSON has no such token (a missing number is null)")


def _one_object(capsys) -> tuple[dict, str]:
    """The one JSON object on stdout (the whole of stdout), and what went to stderr."""
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout must be one JSON line, got {len(lines)}: {captured.out[:500]!r}"
    return json.loads(lines[0], parse_constant=_refuse), captured.err


@pytest.mark.slow
def test_core_commands_print_one_json_object(tmp_path, tiny_lm_dir, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert (
        main(
            [
                "harvest",
                "--json",
                "--model",
                str(tiny_lm_dir),
                "--out",
                str(store),
                "--source",
                SMALL_TEXT,
                "--context-length",
                "32",
                "--val-fraction",
                "0.1",
                "--tokens",
                "600",
                "--val-tokens",
                "200",
                "--batch-contexts",
                "4",
                "--site",
                SITE,
            ]
        )
        == 0
    )
    h, err = _one_object(capsys)
    assert "store:" in err  # the human line is still printed, on stderr
    assert h["rows"]["train"] >= 600 and h["rows"]["val"] >= 200 and list(h["sites"].values()) == [64]

    assert (
        main(
            [
                "train",
                "--json",
                "--store",
                str(store),
                "--site",
                "model.layers.1",
                "--out",
                str(run),
                "--latents",
                "32",
                "--k",
                "4",
                "--steps",
                "3",
                "--batch-size",
                "64",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    t, _ = _one_object(capsys)
    assert [s["sae"] for s in t["saes"]] == ["topk"] and t["saes"][0]["l0"] == pytest.approx(4.0)
    sae = t["saes"][0]["folder"]

    assert (
        main(
            [
                "evaluate",
                "--json",
                "--sae",
                sae,
                "--store",
                str(store),
                "--site",
                SITE,
                "--model",
                str(tiny_lm_dir),
                "--contexts",
                "2",
            ]
        )
        == 0
    )
    e, err = _one_object(capsys)
    assert "loss recovered" in err
    assert 0 <= e["reconstruction"]["fvu"] and e["splice"]["clean_loss"] > 0 and "recovered_vs_rock" in e["splice"]

    assert (
        main(
            [
                "frontier",
                "--json",
                "--sae",
                sae,
                "--store",
                str(store),
                "--site",
                SITE,
                "--out",
                str(tmp_path / "f"),
                "--l0s",
                "2",
                "--eval-rows",
                "64",
                "--fit-rows",
                "64",
            ]
        )
        == 0
    )
    f, _ = _one_object(capsys)
    assert {p["coder"] for p in f["points"]} >= {"encoder", "omp"}

    assert (
        main(
            [
                "report",
                "--json",
                "--sae",
                sae,
                "--store",
                str(store),
                "--model",
                str(tiny_lm_dir),
                "--out",
                str(tmp_path / "r.html"),
                "--splice-contexts",
                "1",
                "--top-latents",
                "2",
                "--random-latents",
                "1",
            ]
        )
        == 0
    )
    r, _ = _one_object(capsys)
    assert r["report"].endswith("r.html") and r["splice"]["clean_loss"] > 0 and (tmp_path / "r.html").is_file()

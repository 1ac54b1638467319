"""What the report prints: missing metrics as n/a, and latent directions drawn at random from the live latents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechscope.report.build import ReportOutcome
from mechscope.report.latents import choose_latents, random_live_latents, scan_latents


def _scan_with_counts(counts: torch.Tensor):
    scan = scan_latents(lambda v: v, None, [torch.zeros(1, counts.numel())])
    return type(scan)(
        int(counts.sum()), counts, scan.top_values, scan.top_rows, scan.hist, scan.act_sums, scan.reconstruction
    )


def test_latent_directions_are_a_seeded_random_sample_of_live_latents():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 1000, (200,), generator=g)
    counts[::3] = 0  # a third of the latents are dead
    scan = _scan_with_counts(counts)
    picks = random_live_latents(scan, 8, seed=0)
    assert len(picks) == len(set(picks)) == 8 and picks == sorted(picks)
    assert all(counts[i] > 0 for i in picks)
    assert picks == random_live_latents(scan, 8, seed=0) and picks != random_live_latents(scan, 8, seed=1)
    assert set(picks) != set(choose_latents(scan, 8, 0))  # not the 8 most frequent
    # Over many seeds every live latent is drawn about equally often, dead ones never.
    hits = torch.zeros(200)
    for s in range(300):
        hits[random_live_latents(scan, 8, seed=s)] += 1
    alive = counts > 0
    assert hits[~alive].sum() == 0
    expected = 300 * 8 / int(alive.sum())  # ≈ 18 per live latent
    assert hits[alive].min() > 0.25 * expected and hits[alive].max() < 2.5 * expected
    assert len(random_live_latents(_scan_with_counts(torch.tensor([0, 3, 0, 1])), 8)) == 2  # fewer alive than asked


def test_missing_metrics_print_as_na_not_zero():
    rec = {"rows": 100.0, "fvu": 0.25, "cosine": 0.9, "norm_ratio": 0.95}  # no codes: no L0, dead or dense fraction
    line = ReportOutcome(Path("r.html"), rec, None, None, (), None, (), {}).summary_lines()[0]
    assert "dead n/a" in line and "dense n/a" in line and "L0 n/a" in line and "FVU 0.2500" in line
    assert "0.0%" not in line
    full = {**rec, "l0": 32.0, "dead_fraction": 0.0, "dense_fraction": 0.125}
    line = ReportOutcome(Path("r.html"), full, None, None, (), None, (), {}).summary_lines()[0]
    assert "dead 0.0%" in line and "dense 12.5%" in line and "L0 32.0" in line

    from mechscope.cli.evaluate import summary_lines
    from mechscope.evals.splice import SpliceResult

    splice = SpliceResult(
        site="s",
        task="lm",
        n_examples=2,
        n_predictions=10,
        clean_loss=2.0,
        spliced_loss=2.5,
        zero_loss=9.0,
        mean_loss=6.0,
        rock_loss=5.0,
        rock_name="unigram",
        kl_spliced=0.1,
        kl_zero=3.0,
        kl_mean=2.0,
        mean_source="given",
        reconstruction={},
    )
    first = summary_lines(rec, splice)[0]
    assert "dead n/a" in first and "dense n/a" in first


def test_report_stages_show_a_progress_bar(capsys):
    from mechscope.report.build import _Clock

    clock = _Clock(["encoder pass", "splice", "plots"], progress=True)
    for name in ("encoder pass", "splice", "plots"):
        clock.lap(name)
    err = capsys.readouterr().err
    assert "report" in err and "3/3" in err and "splice" in err
    assert set(clock.laps) == {"encoder pass", "splice", "plots"}


def test_a_figures_file_that_is_not_a_png_is_refused_naming_it(tmp_path, capsys):
    """A binary file given to --figures used to be embedded as a broken image, exit 0 (the campaign of issue 24)."""
    from mechscope.cli import main
    from mechscope.report.figures import PNG_SIGNATURE, is_png

    (tmp_path / "plot.png").write_bytes(PNG_SIGNATURE + b"rest")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)))
    assert is_png(tmp_path / "plot.png") and not is_png(tmp_path / "binary.bin")
    folder = tmp_path / "d"
    folder.mkdir()
    code = main(
        [
            "report",
            "--sae",
            str(folder),
            "--store",
            str(folder),
            "--out",
            str(tmp_path / "r.html"),
            "--figures",
            str(tmp_path / "plot.png"),
            str(tmp_path / "binary.bin"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mechscope: error: --figures {tmp_path / 'binary.bin'}: not a PNG file")
    with pytest.raises(FileNotFoundError):
        is_png(tmp_path / "missing.png")

"""Loss recovered is computed once (:func:`mechscope.evals.metrics.loss_recovered`) with one zero-gap rule:
known values on hand-made numbers, n/a with a reason on a gap of ~0 (never 291%), a number on a real gap,
and every caller (splice, scrubbing, circuit faithfulness, program replacement) printing the warning."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.evals import metrics as M


def test_known_values_by_name_and_in_order():
    assert M.loss_recovered(clean=2.0, ablated=5.0, spliced=3.5).value == 0.5
    assert M.loss_recovered(2.0, 5.0, 2.0).value == 1.0  # one order: clean, ablated, spliced
    assert M.loss_recovered(2.0, 5.0, 5.0).value == 0.0
    assert M.loss_recovered(2.0, 5.0, 6.5).value == -0.5  # worse than the ablation: negative, and said so
    r = M.loss_recovered(clean=1.0, ablated=3.0, spliced=1.5, gap_se=0.1)
    assert (r.value, r.gap, r.gap_se, r.reason) == (0.75, 2.0, 0.1, None)
    assert float(r) == 0.75 and r.warning("zero-ablation") is None
    assert M.percent(r) == "75.0%" and M.percent(math.nan) == "n/a" and M.percent(None) == "n/a"
    assert M.percent_interval(0.5, 0.75) == "50.0–75.0%" and M.percent_interval(math.nan, 1.0) == "n/a"
    with pytest.raises(TypeError):
        100 * r  # a fraction is never used without deciding what its NaN means


@pytest.mark.parametrize("spliced", [2.02, 2.0, 1.95])
def test_a_gap_within_its_noise_is_na_never_291_percent(spliced):
    # The old rule divided by any gap above 1e-9: (2.031 − 2.02) / 0.031 = 35%, (2.031 − 1.95) / 0.031 = 261%.
    r = M.loss_recovered(clean=2.0, ablated=2.031, spliced=spliced, gap_se=0.02)
    assert math.isnan(r.value) and M.percent(r) == "n/a"
    assert "+0.0310 ± 0.0200 nats" in r.reason and "within 2 standard errors of zero" in r.reason
    w = r.warning("mean-ablation")
    assert w.startswith("warning: loss recovered vs mean-ablation is n/a:") and "L_ablated − L_clean = +0.0310" in w


def test_the_rule_triggers_on_a_gap_of_about_zero_and_not_on_a_real_gap():
    # Without a standard error: a gap at or below 1e-3 of the losses' scale is too small to divide by.
    tiny = M.loss_recovered(clean=4.0, ablated=4.0 + 3e-3, spliced=3.9)
    assert math.isnan(tiny.value) and "within 0.001 of the losses' scale (0.004 nats)" in tiny.reason
    assert math.isnan(M.loss_recovered(clean=2.0, ablated=2.0, spliced=2.0).value)
    # The same gap with a small error, or any gap well above both floors, is a number.
    assert M.loss_recovered(clean=4.0, ablated=4.01, spliced=4.005, gap_se=0.001).value == pytest.approx(0.5)
    assert M.loss_recovered(clean=0.001, ablated=0.01, spliced=0.0055, gap_se=1e-4).value == pytest.approx(0.5)
    # A gap just outside two standard errors is a number; just inside, n/a.
    assert M.loss_recovered(clean=1.0, ablated=1.5, spliced=1.25, gap_se=0.249).value == pytest.approx(0.5)
    assert math.isnan(M.loss_recovered(clean=1.0, ablated=1.5, spliced=1.25, gap_se=0.251).value)
    # An ablation that lowers the loss beyond its error: "recovering" a cost it did not have means nothing.
    neg = M.loss_recovered(clean=3.0, ablated=2.0, spliced=2.5, gap_se=0.1)
    assert math.isnan(neg.value) and "negative: the ablation lowers the loss" in neg.reason
    nan = M.loss_recovered(clean=3.0, ablated=math.nan, spliced=2.5)
    assert math.isnan(nan.value) and "not a number" in nan.reason


def _splice_result(**over):
    from mechscope.evals.splice import SpliceResult

    base = dict(
        site="s",
        task="lm",
        n_examples=10,
        n_predictions=100,
        clean_loss=2.0,
        spliced_loss=2.05,
        zero_loss=9.0,
        mean_loss=2.01,
        rock_loss=5.0,
        rock_name="unigram",
        kl_spliced=0.1,
        kl_zero=3.0,
        kl_mean=0.01,
        mean_source="given",
        reconstruction={},
        stderr={"spliced": 0.1, "zero_minus_clean": 0.3, "mean_minus_clean": 0.02, "rock_minus_clean": 0.2},
    )
    return SpliceResult(**{**base, **over})


def test_splice_result_prints_na_and_a_warning_naming_the_baseline_and_gap():
    r = _splice_result()
    # vs zero: (9 − 2.05) / 7; vs mean: the gap 0.01 ± 0.02 is noise, so n/a and not −400%.
    assert r.recovered_vs_zero == pytest.approx(6.95 / 7) and math.isnan(r.recovered_vs_mean)
    assert r.warnings() == [
        "warning: loss recovered vs mean-ablation is n/a: the gap L_ablated − L_clean = +0.0100 ± 0.0200 "
        "nats is within 2 standard errors of zero: too small to divide by (the fraction would be noise)"
    ]
    lines = r.summary_lines()
    assert "loss recovered vs mean n/a" in lines[4] and lines[-1].strip() == r.warnings()[0]
    assert "-400" not in " ".join(lines) and "n/a vs mean" in r.headline()
    d = r.to_dict()
    assert math.isnan(d["recovered_vs_mean"]) and d["warnings"] == r.warnings()
    from mechscope.jsonout import plain

    assert plain(d)["recovered_vs_mean"] is None  # JSON null
    # Without a rock there is no rock warning (the verdict says it); with a real gap there are none.
    assert _splice_result(mean_loss=4.0, rock_loss=math.nan).warnings() == []


def test_evaluate_splice_gives_the_gap_errors_and_the_probe_agrees():
    """A site the output does not read: zero- and mean-ablation cost exactly nothing, so both are n/a with a
    warning, where the old rule printed 0/0 → NaN silently (or, with float noise, any number at all)."""
    from torch import nn

    from mechscope.evals.splice import SpliceConfig, SpliceProbe, evaluate_splice
    from mechscope.task import Task

    class Unread(nn.Module):
        def __init__(self):
            super().__init__()
            self.dead = nn.Linear(4, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            self.dead(x)  # computed and thrown away
            return self.out(x)

    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    task = Task(
        "unread", x, y, x, y, positions=(), n_classes=3
    )  # the same examples train (mean, rock) and are evaluated
    r = evaluate_splice(Unread(), "dead", lambda a: 2 * a, task, cfg=SpliceConfig(batch_size=16, progress=False))
    assert r.zero_loss == r.clean_loss and r.stderr["zero_minus_clean"] == 0.0
    assert {"zero_minus_clean", "mean_minus_clean", "rock_minus_clean"} <= set(r.stderr)
    assert math.isnan(r.recovered_vs_zero) and math.isnan(r.recovered_vs_mean)
    assert [w.split(" is n/a")[0] for w in r.warnings()][:2] == [
        "warning: loss recovered vs zero-ablation",
        "warning: loss recovered vs mean-ablation",
    ]
    probe = SpliceProbe(Unread(), "dead", task, r, SpliceConfig(batch_size=16, progress=False))
    assert math.isnan(probe(lambda a: a)["loss_recovered_zero"])


def test_probe_and_full_evaluation_agree_on_a_real_gap():
    from torch import nn

    from mechscope.evals.splice import SpliceConfig, SpliceProbe, evaluate_splice
    from mechscope.task import Task

    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = torch.randn(3, 4, generator=g)[y] * 3 + torch.randn(90, 4, generator=g)  # three blobs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    for _ in range(60):  # plain gradient descent, a fraction of a second
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.3 * p.grad
    task, cfg = Task("blobs", x, y, x, y, positions=(), n_classes=3), SpliceConfig(batch_size=16, progress=False)
    half = lambda a: 0.5 * a  # noqa: E731
    full = evaluate_splice(model, "1", half, task, cfg=cfg)
    assert full.warnings() == [] and 0 < full.recovered_vs_zero < 1
    probe = SpliceProbe(model, "1", task, evaluate_splice(model, "1", lambda a: a, task, cfg=cfg), cfg)
    got = probe(half)
    assert got["loss_recovered_zero"] == pytest.approx(full.recovered_vs_zero, rel=1e-6)
    assert got["loss_recovered_mean"] == pytest.approx(full.recovered_vs_mean, rel=1e-6)
    assert probe(lambda a: a)["loss_recovered_zero"] == pytest.approx(1.0)


def test_scrub_circuit_and_program_callers_use_the_one_rule():
    """Scrubbing and circuit faithfulness with a gap of zero print n/a and the reason, never a fraction."""
    from mechscope.scrub.engine import ScrubResult

    nan = M.loss_recovered(clean=1.0, ablated=1.0, spliced=1.2, gap_se=0.05)
    s = ScrubResult(1.0, 1.2, (1.1, 1.3), 1.0, 2.0, nan.value, (math.nan, math.nan), 4, 10, recovered_note=nan.reason)
    assert "loss recovered is n/a: the gap L_ablated − L_clean = +0.0000 ± 0.0500 nats" in s.verdict()
    assert "nan%" not in s.verdict() and s.warning().startswith(
        "warning: loss recovered vs the resampled output is n/a"
    )

    from mechscope.circuits.faithfulness import _summary

    class T:  # the one thing _summary reads from a task
        @staticmethod
        def rock():
            return torch.full((8,), 3.0)

    full = torch.tensor([1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.3, 0.7])
    out = _summary(T(), full, full + 0.5, full + torch.tensor([0.1, -0.1] * 4), "mean", n_boot=50, seed=0)
    assert math.isnan(out["recovered"]) and all(math.isnan(v) for v in out["recovered_ci"])
    assert "within 2 standard errors of zero" in out["recovered_note"]
    real = _summary(T(), full, full + 0.5, full + 2.0, "mean", n_boot=50, seed=0)
    assert real["recovered"] == pytest.approx(0.75) and real["recovered_note"] is None
    assert real["recovered_ci"] == [pytest.approx(0.75), pytest.approx(0.75)]  # a constant shift: every resample agrees


def test_the_html_report_and_its_figure_say_na_and_print_the_warning():
    from mechscope.report.figures import losses
    from mechscope.report.html import _splice_html

    r = _splice_result()
    page = _splice_html(r)
    assert "loss recovered vs mean-ablation is n/a" in page and "+0.0100 ± 0.0200 nats" in page
    assert losses(r).axes[0].get_title() == "loss recovered: 99.3% vs zero, n/a vs mean"


def test_scrubber_on_a_model_whose_output_ignores_its_input_reports_na():
    """Toy with a = b = 0 outputs constant logits: the resampled baseline equals the clean loss (gap 0), so the
    engine's recovered is n/a with the note, and the scrub command's JSON writes null."""
    import json

    from test_scrub_engine import FEATURES_MOD, Toy, data, hyp

    from mechscope.jsonout import plain
    from mechscope.scrub import Scrubber

    x, y, task = data()
    r = Scrubber(Toy(a=0.0), hyp(f"{FEATURES_MOD}:feat_x0"), x, y, task).run()
    assert r.loss_baseline == pytest.approx(r.loss_clean, abs=1e-9)
    assert math.isnan(r.recovered) and "the gap L_ablated − L_clean = +0.0000" in r.recovered_note
    assert r.warning().startswith("warning: loss recovered vs the resampled output is n/a")
    row = json.loads(json.dumps(plain(r.to_dict()), allow_nan=False))
    assert (
        row["recovered"] is None and row["recovered_ci"] == [None, None] and row["recovered_note"] == r.recovered_note
    )

"""The one report vocabulary (issue 27): the table builder escapes every cell, the static CSS/JS ship as package
files and are inlined, the one latent card shows what it is given, and every report is one file that asks the
network for nothing."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from mechscope.report.assets import STATIC, css, js
from mechscope.report.card import CardContext, LatentCard, latent_card
from mechscope.report.markup import Markup, table
from tests.helpers_report import assert_offline

EVIL = "<script>alert('x')</script>&"


def test_table_escapes_every_cell_and_formats_numbers():
    html = table(
        [EVIL, "n"],
        [[EVIL, 1234567], ["x", float("nan")], [Markup("<b>ok</b>"), 0.123456], [None, True]],
        row_headers=True,
        classes=("", "note"),
    )
    assert "<script>" not in html and html.count("&lt;script&gt;") == 2  # header and cell
    assert "&#x27;x&#x27;" in html and "&amp;" in html
    assert "<th>&lt;script&gt;" in html  # the row header cell, escaped
    assert "<td class='num note'>1,234,567</td>" in html and ">n/a</td>" in html and ">0.1235</td>" in html
    assert "<th><b>ok</b></th>" in html  # Markup is written as is
    assert "<td class='note'>True</td>" in html  # a bool is a word, not a number
    assert html.count("<tr>") == 5 and html.startswith("<table><tr><th>")
    assert table(None, [["a"]], row_classes=["bad"]) == "<table><tr class='bad'><td>a</td></tr></table>"


def test_static_assets_are_package_files_and_shipped():
    folder = resources.files("mechscope.report").joinpath("static")
    for name in STATIC:
        assert folder.joinpath(name).is_file(), name
    assert ":root" in css() and "svg.mg" in css()
    assert "latent-search" in js() and "svg.mg" in js()
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert '"mechscope.report" = ["static/*.css", "static/*.js"]' in pyproject.read_text()  # the wheel ships them


def test_latent_card_parts_and_escaping():
    card = LatentCard(
        anchor="c-1",
        title=f"latent {EVIL}",
        badge="pick",
        stats=EVIL,
        hist=((0.1, 1.0, 10.0), (3, 1)),
        logits=(((EVIL, 1.5),), (("\n", -0.5),)),
        contexts=(CardContext(2.0, "a\tb", "<tok>", "c"),),
        search_text="A B",
        data_latent=1,
    )
    html = latent_card(card)
    assert "<script>" not in html and "&lt;tok&gt;" in html
    assert "<mark>&lt;tok&gt;</mark>" in html and "a⇥b" in html and "↵" in html  # control characters made visible
    assert "<svg class='hist'" in html and html.count("<rect") == 2
    assert "data-latent='1'" in html and "data-text='a b'" in html and "id='c-1'" in html
    bare = latent_card(LatentCard(anchor="c-2", title="t", contexts=(), logits_note="no unembedding"))
    assert "never fired" in bare and "no unembedding" in bare and "<svg" not in bare


def test_every_report_is_one_offline_file(tmp_path):
    from mechscope.report.html import Section, write_report
    from mechscope.report.latents import Context, LatentDashboard

    d = LatentDashboard(
        index=3,
        density=0.1,
        mean_when_fired=1.0,
        max_value=2.0,
        contexts=(Context(2.0, 5, 0, 1, ("a",), EVIL, ("b",)),),
        hist_edges=(0.1, 1.0),
        hist_counts=(4,),
        logits_up=(("up", 1.0),),
        logits_down=(("down", -1.0),),
    )
    path = write_report(tmp_path / "r.html", config={"k": EVIL}, sections=[Section("s", text=EVIL)], dashboards=[d])
    page = path.read_text()
    assert_offline(page)
    assert "<script>alert" not in page and "id='latent-3'" in page and "<mark>&lt;script&gt;" in page
    assert css() in page and js() in page and list(tmp_path.iterdir()) == [path]


def test_decompose_dashboards_are_latent_cards():
    from mechscope.cli.decompose import _dashboards_html, _recovery_html
    from mechscope.decompose.analysis import SubcomponentDashboard

    d = SubcomponentDashboard("mlp_in", 4, 0.125, 2.0, ((0.9, f"x0 = {EVIL}"), (0.5, "x1")))
    html = _dashboards_html([d])
    assert html.startswith("<div class='latents'><div class='latent' id='sub-mlp_in-4'") and "<script>" not in html
    assert "needed by 12.50% of evaluation inputs (g &gt; t)" in html and "2.000" in html
    assert (
        html.count("<div class='ctx'>") == 2 and "<span class='v'>0.9</span>" in html and "x0 = &lt;script&gt;" in html
    )
    rec = _recovery_html(
        {"recovery": {EVIL: {"mmcs": 0.98765, "matched_mean_cos": 0.5, "alive": 3, "true_mechanisms": 3}}}
    )
    assert "<script>" not in rec and "<td class='num'>0.988</td>" in rec and "<td class='num'>3</td>" in rec
    assert "No known truth" in _recovery_html({})


def test_one_logit_effects_formula_for_the_report_and_the_graph():
    from mechscope.graph.dashboard import latent_logits
    from mechscope.report.latents import logit_effects
    from tests.helpers_graph import random_transcoders

    tc = random_transcoders(["blocks.0.mlp"], 16, skip=False)[0]
    W_U = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))  # [d, V]
    e = tc.sae.W_dec[3] @ W_U
    e = e - e.mean()  # centred over the vocabulary
    got = latent_logits(tc, 3, W_U, lambda t: f"t{t}", k=3)
    assert [t for t, _ in got["up"]] == [f"t{int(i)}" for i in e.topk(3).indices]
    assert [v for _, v in got["up"]] == pytest.approx(e.topk(3).values.tolist(), abs=1e-5)
    assert [v for _, v in got["down"]] == pytest.approx(sorted(e.tolist())[:3], abs=1e-5)
    uv, ui, dv, di = logit_effects(torch.eye(2), torch.tensor([[1.0, 0], [3.0, 1], [2.0, 5]]), 5)  # k clamped to V = 3
    assert ui[0].tolist() == [1, 2, 0] and uv[1].tolist() == [5.0, 1.0, 0.0] and di[0].tolist() == [0, 2, 1]
    cv = logit_effects(torch.eye(2), torch.tensor([[1.0, 0], [3.0, 1], [2.0, 5]]), 1, centred=True)[0]
    assert cv[:, 0].tolist() == pytest.approx([1.0, 3.0])  # 3 − mean(1, 3, 2); 5 − mean(0, 1, 5)


def test_no_plot_module_switches_matplotlibs_backend_or_loads_pyplot():
    import subprocess
    import sys

    modules = [
        f"mechscope.{m}"
        for m in (
            "coding.plots",
            "anomaly.plots",
            "decompose.plots",
            "toy.plots",
            "report.figures",
            "evals.distributions",
            "slt.calibrate",
            "slt.checkpoints",
            "report.html",
        )
    ]
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); "
        + "; ".join(f"import {m}" for m in modules)
        + "; print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "False"]  # coding.plots used to call matplotlib.use("Agg") on import

"""The report's latent cards show what ``mechscope explain`` saved next to the dictionary: the sentence, a line of
its scores beside the random and constant explanations, and a card for every explained latent."""

from __future__ import annotations

import json

from mechscope.explain.run import FILE, FORMAT
from mechscope.report.build import ReportConfig, build_report
from mechscope.report.from_store import explanation_lines
from tests.helpers_explain import name, planted_sae, planted_store


def _interval(a: float, lo: float, hi: float) -> dict:
    return {"auroc": a, "low": lo, "high": hi}


def _write(folder) -> None:
    scores = {
        "latent": 7,
        "scores": {
            "detection": {
                "true": _interval(0.91, 0.82, 0.97),
                "random": _interval(0.48, 0.3, 0.6),
                "constant": _interval(0.5, 0.5, 0.5),
                "positives": 10,
                "negatives": 10,
                "beats_random": True,
            }
        },
    }
    results = [
        {"latent": 7, "explanation": "the token <7> & friends", "scores": scores, "beats_random": True},
        {"latent": 3, "explanation": "threes", "scores": None, "beats_random": None},
        {"latent": 5, "explanation": "", "scores": None, "beats_random": None, "note": "never fired"},
    ]
    (folder / FILE).write_text(json.dumps({"format": FORMAT, "version": 1, "results": results}))


def test_explanation_lines_read_the_saved_scores(tmp_path):
    _write(tmp_path)
    got = explanation_lines(tmp_path)
    assert got == {
        7: (
            "the token <7> & friends",
            "detection 0.91 [0.82, 0.97] vs random 0.48, constant 0.50 · beats random",
        ),
        3: ("threes", ""),
    }
    assert explanation_lines(tmp_path / "elsewhere") == {}


def test_cards_show_explanations_and_explained_latents_get_cards(tmp_path):
    store, tokens, _ = planted_store(tmp_path / "store")
    _write(tmp_path)
    sae = planted_sae()
    cfg = ReportConfig(top_latents=1, random_latents=0, splice_contexts=0, distribution_directions=0, progress=False)
    n = store.n_rows("val")
    out = build_report(
        tmp_path / "r.html",
        sae,
        lambda a, b: store.rows("resid_post.0", a, b, "val"),
        n,
        tokens,
        lambda r: store.row_to_position(r, "val"),
        name,
        cfg=cfg,
        explanations=explanation_lines(tmp_path),
    )
    page = out.path.read_text()
    assert {3, 7} <= set(out.latents) and len(out.latents) <= 3
    card7 = page[page.index("id='latent-7'") :].split("<div class='latent'")[0]
    assert "explained" in card7 and "“the token &lt;7&gt; &amp; friends”" in card7
    assert "vs random 0.48" in card7 and "beats random" in card7
    card3 = page[page.index("id='latent-3'") :].split("<div class='latent'")[0]
    assert "“threes”" in card3 and "vs random" not in card3

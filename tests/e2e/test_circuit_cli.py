"""``mechscope circuit``: the known answer on zoo:induction through the real command, its JSON keys, the saved
circuit scrubbed by ``mechscope scrub``, the report's SVG graph, and one-line errors."""

from __future__ import annotations

import json
import subprocess

from tests.harness import assert_one_line_error, check_one_line_error, run_cli
from tests.helpers_report import assert_offline


def test_eap_on_induction_finds_the_previous_token_head_feeding_the_induction_keys(tmp_path, zoo_induction):
    save, report = tmp_path / "c.json", tmp_path / "c.html"
    proc = run_cli(
        [
            "circuit",
            "--model",
            "zoo:induction",
            "--method",
            "eap",
            "--top",
            "12",
            "--examples",
            "100",
            "--budget",
            "10",
            "--json",
            "--save",
            str(save),
            "--report",
            str(report),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for key in ("nodes", "edges", "faithfulness", "agreement_with_exact", "cost", "known_answer"):
        assert key in out
    known = out["known_answer"]
    assert known["contains_known_heads"], known
    assert (
        "L0H1->L1H0.k" in known["prev_token_feeds_induction_key"]
        or "L0H1->L1H1.k" in known["prev_token_feeds_induction_key"]
    )
    f = out["faithfulness"]
    assert f["loss_circuit"] < f["loss_empty"] and f["recovered"] > 0.8  # measured 0.98 at 200 examples
    assert f["recovered_ci"][0] <= f["recovered"] <= f["recovered_ci"][1]
    assert out["agreement_with_exact"]["budget"] == 10
    assert "<svg id='circuit-svg' class='mg'" in report.read_text() and "L0H1" in report.read_text()
    assert_offline(report.read_text())
    scrub = run_cli(["scrub", str(tmp_path / "c.hypothesis.yaml"), "--examples", "200", "--seeds", "2", "--json"])
    assert scrub.returncode == 0, scrub.stderr[-2000:]
    assert json.loads(scrub.stdout)["recovered"] > 0.8


def test_bad_circuit_requests_end_in_one_line(zoo_induction):
    assert_one_line_error(
        ["circuit", "--model", "zoo:induction", "--task", "parens"], r"task parens runs on zoo:parens", code=2
    )
    assert_one_line_error(["circuit", "--model", "zoo:induction", "--task", "nope"], r"unknown task 'nope'", code=2)
    assert_one_line_error(["circuit", "--model", "zoo:induction", "--examples", "1"], r"--examples must be ≥ 2", code=2)


PAIRS = [  # names of one token each in SmolLM2's tokenizer, so every prompt is 14 tokens
    {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupt": "When Anna and Tom went to the store, Tom gave a drink to",
        "answer": " Mary",
        "wrong": " John",
    },
    {
        "clean": "When Paul and Kate went to the park, Kate gave a book to",
        "corrupt": "When Mark and Lisa went to the park, Lisa gave a book to",
        "answer": " Paul",
        "wrong": " Kate",
    },
    {
        "clean": "When Emma and Jack went to the beach, Jack gave a ball to",
        "corrupt": "When Alice and Bob went to the beach, Bob gave a ball to",
        "answer": " Emma",
        "wrong": " Jack",
    },
]


def test_a_users_own_pairs_run_edge_methods_on_a_hugging_face_folder(tmp_path, tiny_lm_dir, capsys):
    """Issue 23: a user's task is a file of prompt pairs, and EAP runs on a Hugging Face model (a tiny Llama)."""
    import yaml

    from mechscope.cli import main

    pairs = tmp_path / "my-names.yaml"
    pairs.write_text(yaml.safe_dump({"pairs": PAIRS}))
    save = tmp_path / "c.json"
    code = main(
        [
            "circuit",
            "--model",
            str(tiny_lm_dir),
            "--pairs",
            str(pairs),
            "--method",
            "eap",
            "--top",
            "6",
            "--budget",
            "8",
            "--json",
            "--save",
            str(save),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["task"] == "my-names" and out["metric"].startswith("mean logit(answer) − logit(wrong)")
    assert 0 < len(out["edges"]) <= 6 and out["agreement_with_exact"]["budget"] == 8
    assert out["faithfulness"]["examples"] == 3 and out["clean_metric"] != out["corrupt_metric"]
    assert {e["reader"].split(".")[-1] for e in out["scores"]} >= {"q", "k", "v", "in", "logits"}  # per-head inputs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("c.")] == [
        "c.json"
    ]  # heads are slices: no hypothesis

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [PAIRS[0], {**PAIRS[1], "corrupt": "When Mark and Lisa went to the park, Lisa gave the book to them"}]
        )
    )
    for args, match in [
        (
            [str(tiny_lm_dir), "--pairs", str(bad)],
            r"pair 1: the clean prompt is 14 tokens and the corrupted one 1[5-9]; ",
        ),
        (["zoo:induction", "--pairs", str(pairs)], r"--pairs needs a language model with a tokenizer"),
    ]:
        proc = subprocess.CompletedProcess(
            args, main(["circuit", "--model", *args, "--method", "atp"]), "", capsys.readouterr().err
        )
        check_one_line_error(proc, match, code=2)

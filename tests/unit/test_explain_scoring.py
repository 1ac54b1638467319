"""The scorers' arithmetic with fake deterministic judges (exact AUROCs, the bootstrap's distribution and coverage,
the random-explanation rule, the summary), and the local judge's batching on a tiny random model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mechscope.anomaly.metrics import auroc
from mechscope.explain.judge import HFJudge, shared_prefix
from mechscope.explain.scoring import (
    Interval,
    LatentScore,
    ScorerResult,
    Trials,
    bootstrap_auroc,
    detection,
    fuzzing,
    marked,
    score_latent,
    summarise,
    trial_windows,
)
from mechscope.explain.types import Evidence, Example


class TableJudge:
    """P(yes) = the value of the first key of ``table`` found in the prompt; records the prompts it was asked."""

    def __init__(self, table: dict[str, float], default: float = 0.5):
        self.table, self.default, self.asked = table, default, []

    def p_yes(self, prompts: list[str]) -> list[float]:
        self.asked += prompts
        return [next((v for k, v in self.table.items() if k in p), self.default) for p in prompts]


def _window(word: str, fires: bool) -> Example:
    return Example((word,), (1.0 if fires else 0.0,))


def _evidence(pos: list[str], neg: list[str]) -> Evidence:
    return Evidence(
        7, (_window(pos[0], True),), tuple(_window(w, True) for w in pos[1:]), tuple(_window(w, False) for w in neg)
    )


def test_detection_auroc_is_the_pairwise_share():
    judge = TableJudge({"apple": 0.9, "brick": 0.8, "cloud": 0.4, "drum": 0.5, "eagle": 0.1})
    ev = _evidence(["apple", "brick", "cloud"], ["drum", "eagle"])
    trials = detection("anything", ev, judge, np.random.default_rng(0))
    assert trials.labels.tolist() == [1, 1, 1, 0, 0]
    neg, pos = trials.split()
    # pairs won: apple 2, brick 2, cloud 1 (beats eagle only) → 5 of 6
    assert auroc(neg, pos) == pytest.approx(5 / 6)
    assert len(judge.asked) == 5 and all("anything" in p for p in judge.asked)


def test_detection_needs_both_classes():
    with pytest.raises(ValueError, match="negatives"):
        detection("x", _evidence(["apple"], []), TableJudge({}), np.random.default_rng(0))


def test_marked_wraps_runs_and_keeps_leading_spaces_outside():
    assert marked(("a", " (", "(", "b", " c"), (False, True, True, False, True)) == "a <<((>>b <<c>>"
    assert marked(("x", "y"), (False, False)) == "xy"
    # a marked token of spaces alone keeps its markers (it used to vanish: the run was empty, so never closed)
    assert marked(("a", "\n  ", "b"), (False, True, False)) == "a<<\n  >>b"
    assert marked(("a", "  ", " c"), (False, True, True)) == "a<<   c>>"


def test_fuzzing_marks_the_firing_tokens_against_as_many_decoys():
    w1 = Example(("f", "(", "x", "(", "y", "z"), (0, 1, 0, 2, 0, 0))
    w2 = Example(("(", "  ", "u"), (1, 0, 0))  # a blank token is never a decoy: "u" is the only one
    full = Example(("(", "("), (1, 1))  # no non-activating token to mark: left out
    ev = Evidence(3, (w1, full), (w2,), (_window("q", False),))
    judge = TableJudge({"<<(>>": 1.0}, default=0.0)
    trials = fuzzing("parentheses", ev, judge, np.random.default_rng(0))
    assert trials.labels.tolist() == [1, 1, 0, 0]
    texts = [p.split('"""')[1] for p in judge.asked]
    assert texts[:2] == ["f<<(>>x<<(>>yz", "<<(>>  u"] and texts[3] == "(  <<u>>"
    for decoy, window, n in zip(texts[2:], (w1, w2), (2, 1)):  # as many marked tokens as fire, none a firing one
        runs = "".join(run.split(">>")[0] for run in decoy.split("<<")[1:])
        assert len(runs) == n and "(" not in runs
        assert decoy.replace("<<", "").replace(">>", "") == window.text
    neg, pos = trials.split()
    assert auroc(neg, pos) == 1.0


def test_bootstrap_of_a_perfect_separation_is_one():
    t = Trials(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]))
    assert (bootstrap_auroc(t, 200, np.random.default_rng(0)) == 1.0).all()


def test_bootstrap_distribution_of_one_positive_between_two_negatives():
    # negatives 0.2 and 0.8, positive 0.5: the resampled negatives are {0.2,0.2} (¼, AUROC 1), one of each (½, AUROC
    # ½) or {0.8,0.8} (¼, AUROC 0).
    t = Trials(np.array([0.5, 0.2, 0.8]), np.array([1, 0, 0]))
    boots = bootstrap_auroc(t, 20_000, np.random.default_rng(1))
    assert set(np.unique(boots).tolist()) == {0.0, 0.5, 1.0}
    for value, p in ((1.0, 0.25), (0.5, 0.5), (0.0, 0.25)):
        assert np.mean(boots == value) == pytest.approx(p, abs=0.015)


def test_bootstrap_interval_covers_the_true_auroc():
    """Positives ~ N(1, 1), negatives ~ N(0, 1): true AUROC = Φ(1/√2) ≈ 0.760. Over 300 draws of 25 + 25 trials the
    95% percentile interval holds it in about 94% of them (measured 0.940 at this seed)."""
    truth = 0.5 * (1 + math.erf(0.5))
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(25), np.zeros(25)]
    hits = 0
    for _ in range(300):
        t = Trials(np.r_[rng.normal(1, 1, 25), rng.normal(0, 1, 25)], labels)
        boots = bootstrap_auroc(t, 400, rng)
        hits += np.percentile(boots, 2.5) <= truth <= np.percentile(boots, 97.5)
    assert 0.89 <= hits / 300 <= 0.98


def _judge_of(right: str) -> TableJudge:
    """Says yes (0.9) only when the explanation is ``right`` and the window fires ("hot"); 0.3 otherwise."""
    return TableJudge({f'Description: {right}\nText: """hot': 0.9}, default=0.3)


def _hot_cold(n: int = 6) -> Evidence:
    return _evidence(["hot"] * n, ["cold"] * n)


def test_score_latent_true_beats_random_and_constant():
    s = score_latent(
        _hot_cold(), "right", ["right", "wrong"], _judge_of("right"), ["detection"], np.random.default_rng(0), 200
    )
    r = s.scores["detection"]
    assert s.random_explanation == "wrong"  # the one equal to the true explanation is never drawn
    assert (r.true.auroc, r.true.low, r.true.high) == (1.0, 1.0, 1.0)
    assert (r.random.auroc, r.constant.auroc) == (0.5, 0.5)
    assert (r.positives, r.negatives) == (6, 6)
    assert r.beats_random and s.beats_random


def test_score_latent_no_better_than_random_is_unexplained():
    # the judge likes the *random* explanation: the true one scores 0.5, below the random one's 1.0
    s = score_latent(_hot_cold(), "right", ["wrong"], _judge_of("wrong"), ["detection"], np.random.default_rng(0), 200)
    assert s.scores["detection"].random.auroc == 1.0 and not s.beats_random
    # equal scores: the true interval's low end is not above the random point either
    s = score_latent(_hot_cold(), "right", ["wrong"], TableJudge({}), ["detection"], np.random.default_rng(0), 200)
    assert s.scores["detection"].true == s.scores["detection"].random and not s.beats_random


def test_score_latent_json_round_trip():
    s = score_latent(_hot_cold(), "right", ["wrong"], _judge_of("right"), ["detection"], np.random.default_rng(3), 50)
    d = json.loads(json.dumps(s.to_json()))
    assert d["beats_random"] is True and d["scores"]["detection"]["beats_random"] is True
    assert LatentScore.from_json(d) == s


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"others": []}, "others"),
        ({"others": ["right"]}, "others"),
        ({"scorers": ["nope"]}, "scorers"),
        ({"n_boot": 0}, "n_boot"),
    ],
)
def test_score_latent_refuses_bad_arguments_by_name(kwargs, name):
    args = dict(others=["wrong"], judge=TableJudge({}), scorers=["detection"], n_boot=10) | kwargs
    with pytest.raises(ValueError, match=name):
        score_latent(_hot_cold(), "right", **args)


def _latent(i: int, true: float, random: float, low: float) -> LatentScore:
    res = ScorerResult(Interval(true, low, 1.0), Interval(random, random, random), Interval(0.5, 0.5, 0.5), 4, 4)
    return LatentScore(i, "e", "r", "text", {"detection": res})


def test_summarise_means_and_share_beating_random():
    out = summarise([_latent(0, 0.9, 0.5, 0.7), _latent(1, 0.6, 0.5, 0.4)], n_boot=100)
    det = out["scorers"]["detection"]
    assert det["true"]["mean"] == pytest.approx(0.75) and det["random"]["mean"] == pytest.approx(0.5)
    assert 0.6 <= det["true"]["low"] <= det["true"]["mean"] <= det["true"]["high"] <= 0.9
    assert det["beats_random"] == 0.5 and out["beats_random"] == 0.5 and out["latents"] == 2
    with pytest.raises(ValueError, match="scores"):
        summarise([])


def test_judge_batches_with_left_padding_as_one_by_one(tiny_tok_lm):
    """A left-padded batch gives each prompt what it gets alone, and that is P(yes)/(P(yes)+P(no)) of the next token
    after the chat template's opened answer."""
    prompts = ["Is it?", "Mary gave it to John, did she not? Say it.", "a b c d e f g h i j k l m n o p"]
    words = dict(yes=("Mary", " Mary"), no=("John", " John"))  # the tiny tokenizer has no one-token "Yes"
    batched = HFJudge(tiny_tok_lm, batch_size=3, **words).p_yes(prompts)
    judge = HFJudge(tiny_tok_lm, batch_size=1, **words)
    tok = tiny_tok_lm.tokenizer
    assert (judge.yes_ids, judge.no_ids) == (tok.encode(" Mary"), tok.encode(" John"))  # "Mary" is two tokens there
    assert batched == pytest.approx(judge.p_yes(prompts), abs=1e-6)
    ids = torch.tensor([judge._ids(prompts[1])])
    with torch.no_grad():
        p = tiny_tok_lm.model(ids).logits[0, -1].double().softmax(-1)
    yes, no = p[judge.yes_ids].sum(), p[judge.no_ids].sum()
    assert batched[1] == pytest.approx(float(yes / (yes + no)), abs=1e-6)
    assert len(set(np.round(batched, 9))) == 3  # the prompts differ, so do the answers


def test_judge_refuses_answers_that_are_not_one_token(tiny_tok_lm):
    with pytest.raises(ValueError, match="yes/no"):
        HFJudge(tiny_tok_lm, yes=("Xylophonically",), no=("John",))


def test_shared_prefix_leaves_each_row_a_token():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows keep their last token
    assert shared_prefix([[7, 1], [8, 1]]) == 0
    assert shared_prefix([[4]]) == 0


def test_judge_shares_a_long_prefix_and_gives_each_prompt_what_it_gets_alone(tiny_tok_lm):
    """Prompts as the scorers write them (one explanation, many windows) share their start: it is run once for the
    batch, and each prompt still gets its own P(yes), as one-at-a-time (where nothing is shared but the prompt's own
    start) and as a plain forward pass of the whole prompt."""
    words = dict(yes=("Mary", " Mary"), no=("John", " John"))
    head = "Answer Yes or No: does the text contain what the description names? Description: Mary gave it. Text: "
    prompts = [head + t for t in ("it to John", "a b c d e f g", "Say it.", "did she not")]
    judge = HFJudge(tiny_tok_lm, batch_size=4, **words)
    rows = [judge._ids(p) for p in prompts]
    assert shared_prefix(rows) > len(rows[0]) // 2  # most of each prompt is shared
    batched = judge.p_yes(prompts)
    alone = HFJudge(tiny_tok_lm, batch_size=1, **words).p_yes(prompts)
    assert batched == pytest.approx(alone, abs=1e-6)
    with torch.no_grad():
        p = tiny_tok_lm.model(torch.tensor([rows[2]])).logits[0, -1].double().softmax(-1)
    yes, no = p[judge.yes_ids].sum(), p[judge.no_ids].sum()
    assert batched[2] == pytest.approx(float(yes / (yes + no)), abs=1e-6)
    assert len(set(np.round(batched, 9))) == 4


def test_judge_refuses_an_unknown_dtype(tiny_tok_lm):
    with pytest.raises(ValueError, match="dtype"):
        HFJudge(tiny_tok_lm, dtype="float16", yes=("Mary",), no=("John",))


def test_trial_windows_prefer_quantile_samples_then_top_windows():
    top = tuple(_window(f"t{i}", True) for i in range(5))
    quant = tuple(_window(f"q{i}", True) for i in range(4))
    neg = tuple(_window(f"n{i}", False) for i in range(8))
    ev = Evidence(3, top, quant, neg)
    few = trial_windows(ev, 3, np.random.default_rng(0))
    assert few.top == () and few.latent == 3
    assert len(few.quantiles) == 3 and {e.tokens[0] for e in few.quantiles} < {e.tokens[0] for e in quant}
    assert few.negatives == neg[:3]
    more = trial_windows(ev, 6, np.random.default_rng(0))
    names = [e.tokens[0] for e in more.quantiles]
    assert names[:4] == ["q0", "q1", "q2", "q3"] and len(names) == 6 and all(n.startswith("t") for n in names[4:])
    assert len(set(names)) == 6 and more.negatives == neg[:6]
    assert len(trial_windows(ev, 20, np.random.default_rng(0)).quantiles) == 9  # every firing window, no repeats
    with pytest.raises(ValueError, match="n must be positive"):
        trial_windows(ev, 0, np.random.default_rng(0))

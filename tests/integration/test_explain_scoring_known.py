"""Known-answer tests of the scorers on planted latents (mechscope.explain.planted): real stdlib docstring windows in
SmolLM2's tokens, latents that fire on exactly the tokens a rule picks, so the true explanation is known.

- a judge that reads the planted rules perfectly gives the true explanation AUROC 1 on detection and fuzzing, and the
  constant explanation exactly ½: the scorers' trials, markings and decoys line up with the evidence;
- the embedding scorer (all-MiniLM-L6-v2) and the SmolLM2-135M judge give what they honestly reach (numbers in
  docs/explain.md, "Scores").
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from mechscope.explain.planted import PLANTED, planted_evidence, stdlib_windows
from mechscope.explain.scoring import SCORERS, score_latent

WRONG = "names of animals"


@pytest.fixture(scope="module")
def windows():
    from transformers import AutoTokenizer

    from mechscope.models.embedded import SMOLLM2, ensure_converted

    return stdlib_windows(AutoTokenizer.from_pretrained(ensure_converted(SMOLLM2), local_files_only=True))


class OracleJudge:
    """Answers from the planted rules themselves: for a detection prompt, 1 when any token of the window fires under
    the rule the explanation names; for a fuzzing prompt, 1 when every marked run fires under it; ½ for an
    explanation that names no planted rule."""

    def __init__(self, windows):
        self.tokens = {"".join(w): w for w in windows}

    def p_yes(self, prompts: list[str]) -> list[float]:
        out = []
        for p in prompts:
            explanation = p.split("Description: ", 1)[1].split("\n", 1)[0]
            rule = next((q.fires for q in PLANTED.values() if q.explanation == explanation), None)
            text = p.split('"""', 1)[1].rsplit('"""', 1)[0]
            if rule is None:
                out.append(0.5)
            elif "<<" in text:
                out.append(float(all(rule(run) for run in re.findall(r"<<(.*?)>>", text, re.DOTALL))))
            else:
                out.append(float(any(rule(t) for t in self.tokens[text])))
        return out


@pytest.mark.parametrize("name", list(PLANTED))
def test_a_perfect_judge_scores_the_true_explanation_one(windows, name):
    ev = planted_evidence(windows, 0, PLANTED[name], 8, 8, 16, np.random.default_rng(0))
    others = [p.explanation for p in PLANTED.values() if p.name != name]
    s = score_latent(ev, PLANTED[name].explanation, others, OracleJudge(windows), ["detection", "fuzzing"], n_boot=200)
    for scorer in ("detection", "fuzzing"):
        r = s.scores[scorer]
        assert (r.true.auroc, r.true.low) == (1.0, 1.0), scorer
        assert r.constant.auroc == 0.5, scorer
    assert s.scores["fuzzing"].positives == 16 and s.beats_random


def _rows(windows, names, scorers, judge, n):
    """name → (LatentScore, {scorer: AUROC of WRONG}) for the planted latents ``names``."""
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(names):
        ev = planted_evidence(windows, i, PLANTED[name], *n, rng)
        others = [PLANTED[o].explanation for o in names if o != name]
        s = score_latent(ev, PLANTED[name].explanation, others, judge, scorers, rng, n_boot=1000)
        out[name] = s, {sc: SCORERS[sc](WRONG, ev, judge, np.random.default_rng(0)) for sc in scorers}
    return out


def test_embedding_scorer_on_planted_latents(windows):
    """Measured (10 top + 20 quantile windows vs 30 negatives; seed 0): "return" true 0.940 [0.870, 0.992], random
    0.329, wrong 0.511; "(" true 0.640 [0.498, 0.776], random 0.442, wrong 0.567. A word the explanation names is
    found; a single character is barely told apart from other text (the encoder embeds topics, not characters)."""
    rows = _rows(windows, ["paren", "return", "digit"], ["embedding"], None, (10, 20, 30))
    ret, wrong = rows["return"][0].scores["embedding"], rows["return"][1]["embedding"]
    assert ret.true.auroc >= 0.9 and ret.beats_random
    assert wrong <= 0.65 and ret.random.auroc <= 0.65
    paren = rows["paren"][0].scores["embedding"]
    assert 0.55 <= paren.true.auroc <= 0.75 and paren.beats_random


def test_smollm2_judge_on_a_planted_latent(windows, smollm2):
    """The embedded SmolLM2-135M-Instruct as the judge of detection, on the planted "return" latent (5 top + 5
    quantile windows against 10 non-firing, seed 0). It does not reach the known answer. Measured with the prompts
    that put the question first (2026-12-08): true 0.32 [0.10, 0.57], random 0.20, constant 0.26 (before them: true
    0.22 [0.03, 0.47], random 0.15, constant 0.20): its P(yes) follows the window (higher on windows without
    "return"), not the explanation, so the three lie within 0.12 of each other (docs/explain.md, "Scores"). A judge that gets
    better makes this test fail: then raise the bar to the known answer, AUROC ≥ 0.9."""
    from mechscope.explain.judge import HFJudge

    rng = np.random.default_rng(0)
    ev = planted_evidence(windows, 0, PLANTED["return"], 5, 5, 10, rng)
    others = [PLANTED["paren"].explanation]
    s = score_latent(ev, PLANTED["return"].explanation, others, HFJudge(smollm2), ["detection"], rng)
    r = s.scores["detection"]
    print({k: getattr(r, k) for k in ("true", "random", "constant")})
    assert (r.positives, r.negatives) == (10, 10)
    aurocs = [r.true.auroc, r.random.auroc, r.constant.auroc]
    assert r.true.auroc < 0.9 and not s.beats_random
    assert max(aurocs) - min(aurocs) <= 0.15

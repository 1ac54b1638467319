"""The same engine on a model that is not from the zoo: SmolLM2-135M's head 18.6 is an induction head.

The correct hypothesis (examples/scrub/smollm2-correct.yaml) replaces the head's output at each position by
its output on other sequences whose token after the previous occurrence of the current token is the same;
the wrong one (smollm2-wrong.yaml) keeps only the current token. On repeated random tokens the first keeps
almost all of the loss and the second is worse than the rock (a constant predictor), although it
"recovers" most of the gap to the baseline: the baseline (another sequence's output) is far worse than
a constant here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mechscope.scrub import load_hypothesis, run_hypothesis
from mechscope.scrub.tasks import TASKS, Loaded, _split

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scrub"


def scrub_file(name: str, smollm2, examples: int = 60, seeds: int = 2, pool: int = 240):
    """The example file with a smaller budget (CI time): 60 references and a pool of 240 instead of 100 and 400."""
    hyp = dataclasses.replace(load_hypothesis(EXAMPLES / name), examples=examples, seeds=seeds, pool=pool)
    task, x, y = TASKS[hyp.task](Loaded(smollm2.model, smollm2.tokenizer), examples + hyp.pool, **dict(hyp.task_args))
    return run_hypothesis(hyp, _split(smollm2.model, task, x, y, examples, hyp.pool, "smollm2"))


@pytest.mark.slow
def test_smollm2_induction_head_correct_beats_wrong(smollm2):
    right = scrub_file("smollm2-correct.yaml", smollm2)
    wrong = scrub_file("smollm2-wrong.yaml", smollm2)
    # measured with the files' budget (100 references, pool 400, 2 seeds): right 98.9% [97.1, 100.8], scrubbed 3.04 nats (clean 2.95);
    # wrong 87.5% [86.6, 88.5], scrubbed 4.02 nats, worse than the rock (3.69): "87% recovered" explains nothing
    assert right.recovered > 0.95 and not right.worse_than_rock, right.to_dict()
    assert right.recovered_ci[0] > wrong.recovered_ci[1] + 0.05, (right.to_dict(), wrong.to_dict())
    assert wrong.loss_scrubbed > right.loss_scrubbed + 0.5 and wrong.worse_than_rock, wrong.to_dict()

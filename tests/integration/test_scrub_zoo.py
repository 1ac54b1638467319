"""Causal scrubbing on the zoo: on each model a correct hypothesis recovers clearly more than a deliberately
wrong one (ordering asserted with a margin, intervals from seeds), and the modular-addition program
replacement recovers at least 90% of the loss."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mechscope.scrub import Target, load_hypothesis, run_hypothesis
from mechscope.scrub.tasks import TASKS, Loaded

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scrub"


def target_of(zm, task_name: str | None = None, n: int = 1000) -> Target:
    if task_name is None:
        return Target(zm.model, zm.task, zm.task.val_inputs[:n], zm.task.val_targets[:n], zm.name)
    task, x, y = TASKS[task_name](Loaded(zm.model, None, zm), n)
    return Target(zm.model, task, x, y, zm.name)


def scrub_file(name: str, target: Target, seeds: int = 4):
    hyp = dataclasses.replace(load_hypothesis(EXAMPLES / name), seeds=seeds, examples=target.inputs.shape[0])
    return run_hypothesis(hyp, target)


def assert_ordered(right, wrong, margin: float) -> None:
    assert right.recovered_ci[0] > wrong.recovered_ci[1] + margin, (right.to_dict(), wrong.to_dict())
    assert not right.worse_than_rock


def test_parens_correct_beats_wrong(zoo_parens, one_thread):
    t = target_of(zoo_parens)
    right, wrong = scrub_file("parens-correct.yaml", t), scrub_file("parens-wrong.yaml", t)
    assert right.recovered > 0.8
    assert_ordered(right, wrong, margin=0.2)
    assert wrong.worse_than_rock  # measured (2000 examples, 8 seeds): 39.9% recovered, 2.17 nats vs the rock's 0.64


def test_parens_detailed_beats_heads_only_which_is_worse_than_the_rock(zoo_parens, one_thread):
    """The detailed hypothesis (block 1's heads, MLP and per-position state, head 1.1 computed from that state)
    keeps most of the loss; dropping block 1's MLP and skip connection "recovers" about 80% of the loss, but
    its scrubbed loss is at the rock's: it explains (almost) nothing. Which side of the rock it lands on
    depends on the trained weights, and those depend on the CPU's kernels: 0.720 vs the rock's 0.638 on the
    machine of docs/scrub.md (2000 examples, 8 seeds), 0.618 on an AVX-512 AMD EPYC (1000 examples, 4
    seeds). So the test asserts "within 10% of the rock or above it", which both models meet."""
    t = target_of(zoo_parens)
    detailed, heads = scrub_file("parens-correct-detailed.yaml", t), scrub_file("parens-wrong-heads.yaml", t)
    assert detailed.recovered > 0.85
    assert_ordered(detailed, heads, margin=0.05)
    assert heads.loss_scrubbed > 0.9 * heads.loss_rock and heads.recovered > 0.6, heads.to_dict()


def test_modadd_correct_beats_wrong_and_the_program_recovers_90_percent(zoo_modadd, one_thread):
    t = target_of(zoo_modadd)
    right, wrong = scrub_file("modadd-correct.yaml", t), scrub_file("modadd-wrong.yaml", t)
    assert right.recovered > 0.9
    assert_ordered(right, wrong, margin=0.5)
    program = scrub_file("modadd-program.yaml", t, seeds=2)
    assert program.recovered >= 0.9, program.to_dict()
    assert program.loss_scrubbed < program.loss_rock


def test_induction_correct_beats_the_wrong_head_and_the_wrong_key_feature(zoo_induction, one_thread):
    """Measured on 2000 examples, 8 seeds: correct 99.8%, wrong head 25.1%, keys on the current token 26.0%;
    both wrong ones are then worse than the rock (ln 64 ≈ 4.159 nats); on the test's 500 examples (a smaller
    pool) the wrong head's loss is about 3.85, below the rock, so that is not asserted here."""
    t = target_of(zoo_induction, "induction_repeats", n=500)
    right = scrub_file("induction-correct.yaml", t, seeds=3)
    assert right.recovered > 0.9, right.to_dict()
    for wrong_file in ("induction-wrong.yaml", "induction-wrong-keys.yaml"):
        wrong = scrub_file(wrong_file, t, seeds=3)
        assert_ordered(right, wrong, margin=0.5)

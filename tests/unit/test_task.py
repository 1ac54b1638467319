"""The one task (mechscope.task.Task): a language model's per-example loss by hand on a tiny llama, the rock fit on
the training targets only, padded text never scored, and a deterministic, disjoint train/val split."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.evals.splice import SpliceConfig, evaluate_splice, predictions
from mechscope.task import IGNORE, Task
from tests.helpers_families import build


def test_next_token_loss_is_the_hand_computed_mean_nll_on_a_tiny_llama():
    model = build("llama")  # vocab 100
    ids = torch.randint(0, 100, (5, 7), generator=torch.Generator().manual_seed(0))
    task = Task.next_token(ids[:3], ids[3:], n_classes=100)
    assert task.kind == "lm" and task.val_targets.shape == (2, 6)
    with torch.no_grad():
        logits = model(task.val_inputs).logits  # [2, 7, 100]
        got = task.loss(logits, task.val_targets)
    logp = torch.log_softmax(logits.double(), -1)
    by_hand = [-sum(float(logp[i, t, ids[3 + i, t + 1]]) for t in range(6)) / 6 for i in range(2)]
    assert got.tolist() == pytest.approx(by_hand, rel=1e-5)
    # the splice scores exactly these predictions: its clean loss is their mean (every example has 6)
    r = evaluate_splice(model, "resid_post.0", lambda x: x, task, cfg=SpliceConfig(progress=False))
    assert r.n_predictions == 12 and r.clean_loss == pytest.approx(sum(by_hand) / 2, rel=1e-5)


def test_the_rock_is_fit_on_training_targets_only():
    """A token that occurs only among the held-out targets gets the smoothing mass α / (M + α·C), not its count."""
    train = torch.tensor([[0, 1, 2, 1, 2, 1, 2, 1]] * 4)  # targets 1 and 2 only (position 0 is never a target)
    val = torch.tensor([[0, 7, 7, 7, 7, 7, 7, 7]])  # 7 never occurs in training
    task = Task.next_token(train, val, n_classes=10)
    rock = task.rock_model
    M, C, a = 4 * 7, 10, rock.alpha
    assert rock.n_train == M
    assert float(rock.log_q[7]) == pytest.approx(math.log(a / (M + a * C)), rel=1e-12)
    assert float(task.rock(task.val_targets)[0]) == pytest.approx(-math.log(a / (M + a * C)), rel=1e-12)
    # the same rock with the held-out targets in training would have put their counts on token 7
    leaked = Task.next_token(torch.cat([train[:, :], val]), val, n_classes=10).rock_model
    assert float(leaked.log_q[7]) > float(rock.log_q[7]) + 1.0


class _Chars:
    """A character tokenizer: one id per letter (a=1 … z=26), pad id 0."""

    pad_token_id = 0

    def __call__(self, text: str) -> dict:
        return {"input_ids": [ord(c) - 96 for c in text]}

    def __len__(self) -> int:
        return 100


def test_padded_text_is_never_scored_and_the_split_is_deterministic_and_disjoint():
    texts = ["abcdef", "ab", "abcd", "zzzzzzzz", "xyz", "mnop", "qrs", "tuvw", "hello", "world"]
    task = Task.from_texts(texts, _Chars(), val_fraction=0.3)
    again = Task.from_texts(texts, _Chars(), val_fraction=0.3)
    assert torch.equal(task.val_inputs, again.val_inputs) and task.size("val") == 3 and task.size("train") == 7
    rows = lambda x, m: {tuple(r[k.bool()].tolist()) for r, k in zip(x, m)}
    train, val = rows(task.train_inputs, task.train_mask), rows(task.val_inputs, task.val_mask)
    assert not train & val and len(train | val) == len(texts)
    # every target on padding (or predicted from padding) is IGNORE: a text of n tokens has n − 1 scored targets
    for x, m, t in (
        (task.train_inputs, task.train_mask, task.train_targets),
        (task.val_inputs, task.val_mask, task.val_targets),
    ):
        assert ((t != IGNORE).sum(1) == m.sum(1) - 1).all()
        assert torch.equal(t[t != IGNORE], x[:, 1:][(m[:, 1:] & m[:, :-1]).bool()])
    # the splice's predictions leave the padding out, whatever the model says there
    model = build("llama")
    logits, targets, example = predictions(model, task, 0, 3)
    assert logits.shape[0] == targets.shape[0] == int(task.val_mask.sum()) - 3
    assert torch.equal(example.bincount(minlength=3), task.val_mask.sum(1) - 1)
    with pytest.raises(UsageError, match="at least 2 tokens"):
        Task.from_texts(["a", "abc"], _Chars())


def test_a_task_whose_classes_differ_from_the_model_is_refused():
    ids = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1))
    task = Task.next_token(ids[:2], ids[2:], n_classes=50)
    with pytest.raises(UsageError, match="n_classes=100"):
        evaluate_splice(build("llama"), "resid_post.0", lambda x: x, task, cfg=SpliceConfig(progress=False))
    with pytest.raises(UsageError, match="one row per example"):
        Task("bad", ids, ids[:1, 1:], ids, ids[:, 1:], positions=(0,), n_classes=50)


def test_ioi_rock_is_fit_on_training_prompts_disjoint_from_the_evaluated_ones(tiny_lm_dir):
    """IOI's scoring task holds real training prompts (not empty inputs with borrowed answers): none is an evaluated
    prompt, each has its answer, and the rock is fit on those answers only."""
    from mechscope.circuits.tasks import ioi_task
    from mechscope.evals.rock import Rock

    _, task = ioi_task(64, model=str(tiny_lm_dir))
    s = task.scoring
    assert (
        s.train_inputs.shape[0] == s.train_targets.shape[0] > 1500
    )  # of the 2,000 drawn, the repeats of evaluated ones are dropped
    assert torch.equal(s.val_inputs.cpu(), task.clean.cpu())
    assert not (s.train_inputs[:, None] == s.val_inputs.cpu()[None]).all(-1).any()
    rock = Rock.fit(s.train_targets, s.n_classes)
    assert torch.equal(s.rock_model.log_q, rock.log_q)
    assert task.rock().tolist() == pytest.approx((-rock.log_q[task.targets.cpu()]).tolist(), rel=1e-12)


def test_a_language_model_task_reaches_llc_through_target_from_task():
    """Target.from_task on a Hugging Face LM (its output holds the logits) and a next-token task: the llc loss is the
    task's mean per-example loss on the training split."""
    from mechscope.slt.targets import Target

    model = build("llama")
    ids = torch.randint(0, 100, (6, 8), generator=torch.Generator().manual_seed(2))
    task = Task.next_token(ids[:4], ids[4:], n_classes=100)
    t = Target.from_task("lm", model, task)
    with torch.no_grad():
        got = float(t.loss_fn(model, t.data))
        want = float(task.loss(model(ids[:4]).logits, task.train_targets).mean())
    assert got == pytest.approx(want, rel=1e-6)

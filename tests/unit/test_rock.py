"""The rock is a model fit on training targets: known answers for its fit and its α, and a rock that
does not move with how many contexts are evaluated (the in-sample entropy it replaced does)."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.errors import MechscopeError, UsageError
from mechscope.evals import metrics as M
from mechscope.evals.rock import Rock, loo_alpha, loo_log_likelihood
from mechscope.evals.splice import SpliceConfig, evaluate_splice
from mechscope.task import Task


def test_rock_fit_by_hand():
    # 10 training targets over 5 classes: counts [4, 3, 2, 1, 0]; add-α with α = 0.5.
    train = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    rock = Rock.fit(train, 5, alpha=0.5)
    q = [(c + 0.5) / (10 + 2.5) for c in (4, 3, 2, 1, 0)]
    assert torch.allclose(rock.log_q.exp(), torch.tensor(q, dtype=torch.float64), rtol=1e-12)
    evaluation = torch.tensor([4, 0, 2, 2])  # class 4 never occurs in training: it costs −log(0.5 / 12.5)
    assert rock.nll(evaluation).tolist() == pytest.approx([-math.log(q[i]) for i in (4, 0, 2, 2)], rel=1e-12)
    assert rock.n_train == 10 and "α=0.5" in rock.name
    with pytest.raises(MechscopeError, match="in \\[0, 5\\).*another model"):
        Rock.fit(torch.tensor([0, 7]), 5)
    with pytest.raises(UsageError, match="alpha must be > 0"):
        Rock.fit(train, 5, alpha=0.0)


def test_loo_alpha_known_answer():
    # counts [3, 1, 0, 0]: LOO = 3 log((2+α)/(3+4α)) + log(α/(3+4α)); its derivative is (6 − 12α)/(…), so α* = 1/2.
    counts = torch.tensor([3.0, 1.0, 0.0, 0.0])
    assert loo_alpha(counts) == pytest.approx(0.5, rel=1e-6)
    by_hand = 3 * math.log(2.5 / 5) + math.log(0.5 / 5)
    assert loo_log_likelihood(counts, 0.5) == pytest.approx(by_hand, rel=1e-12)
    # Every class seen equally often: the uniform distribution is best, so α runs to its upper bound.
    assert loo_alpha(torch.full((6,), 5.0)) == pytest.approx(10.0, rel=1e-3)


class TinyLM(torch.nn.Module):
    """Embedding → one residual MLP block → unembedding, over a small vocabulary."""

    def __init__(self, vocab: int, d: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.block = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.ReLU(), torch.nn.Linear(32, d))
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        return self.lm_head(h + self.block(h))


@pytest.fixture(scope="module")
def text_contexts(tiny_tokenizer):
    """Real text (the email package's sources), tokenised and cut into train/val contexts of 48 tokens, then
    relabelled onto a 4096-token vocabulary (the 4095 most frequent tokens, the rest one class) so a tiny model
    can score it fast; the unigram statistics of real text are what matters here."""
    from mechscope.data.text import TextCorpusConfig, build_contexts
    from tests.harness import SMALL_TEXT

    ctx = build_contexts(tiny_tokenizer, TextCorpusConfig(source=SMALL_TEXT, context_length=48, val_fraction=0.1))
    counts = torch.bincount(ctx.train.reshape(-1), minlength=len(tiny_tokenizer))
    relabel = torch.full_like(counts, 4095)
    relabel[torch.argsort(counts, descending=True, stable=True)[:4095]] = torch.arange(4095)
    return relabel[ctx.train], relabel[ctx.val]


def test_rock_does_not_depend_on_how_many_contexts_are_evaluated(text_contexts):
    """Fit on the training contexts, the rock on 1 and 8 held-out contexts agrees with the rock on 32 within
    its standard error; the entropy of the evaluated targets (the old rock) climbs with the count by far more."""
    train, val = text_contexts
    assert len(val) >= 32
    torch.manual_seed(0)
    model = TinyLM(4096)
    results = {}
    for n in (1, 8, 32):
        results[n] = evaluate_splice(
            model,
            "block",
            lambda x: x,
            Task.next_token(train, val[:n], n_classes=4096),
            mean_act=torch.zeros(16),
            cfg=SpliceConfig(batch_size=32, skip_first_positions=1),
        )
    ref, se8 = results[32], results[8].stderr["rock"]
    assert se8 > 0 and math.isfinite(se8)
    assert abs(results[8].rock_loss - ref.rock_loss) < 2 * math.hypot(se8, ref.stderr["rock"])
    # One context has no clustered error; hold it to the 8-context error scaled by √8.
    assert abs(results[1].rock_loss - ref.rock_loss) < 2 * math.sqrt(8) * se8
    # The in-sample entropy of the evaluated targets moves by many standard errors between 1 and 32 contexts.
    in_sample = {
        n: M.label_entropy(Task.next_token(train, val, n_classes=4096).flat_targets("val", n)) for n in (1, 8, 32)
    }
    assert in_sample[32] - in_sample[1] > 4 * se8 and in_sample[32] - in_sample[8] > 2 * se8
    # The rock scores the same targets as the other losses (position 0, the BOS, is never one).
    assert ref.n_predictions == 32 * 47 and ref.rock_loss > in_sample[32]


class BosOutlier(torch.nn.Module):
    """A model whose site ``site`` adds 100 to every unit at position 0 (a BOS outlier), as real LMs do."""

    def __init__(self, vocab: int = 11, d: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.site = torch.nn.Identity()
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        h = self.embed(input_ids).clone()
        h[:, 0] += 100.0
        return self.lm_head(self.site(h))


def test_site_mean_leaves_out_the_skipped_positions():
    from mechscope.evals.splice import site_mean

    torch.manual_seed(0)
    model = BosOutlier()
    ids = torch.randint(0, 11, (6, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts = model.embed(ids).double()  # [6, 5, 4] the site's activation, less the outlier at position 0
    by_hand = acts[:, 1:].reshape(-1, 4).mean(0)
    task = Task.next_token(ids, ids, n_classes=11)  # the same contexts as training and held-out split
    got = site_mean(model, "site", task, batch_size=4, skip_first_positions=1)
    assert torch.allclose(got.double(), by_hand, atol=1e-6)
    with_bos = site_mean(model, "site", task, batch_size=4)
    assert with_bos.min() > got.max() + 15  # the outlier drags the BOS-including mean by 100/5 per unit
    # evaluate_splice computes its mean over the same positions its ablations replace.
    cfg = SpliceConfig(batch_size=4, skip_first_positions=1)
    computed = evaluate_splice(model, "site", lambda x: x, task, cfg=cfg)
    given = evaluate_splice(model, "site", lambda x: x, task, mean_act=by_hand.float(), cfg=cfg)
    assert computed.mean_loss == pytest.approx(given.mean_loss, rel=1e-6)


def test_bad_rock_and_dedup_settings_are_usage_errors():
    from mechscope.data.text import TextCorpusConfig

    with pytest.raises(UsageError, match="rock_alpha must be > 0"):
        SpliceConfig(rock_alpha=-1.0)
    with pytest.raises(UsageError, match="dedup_ngram"):
        TextCorpusConfig(dedup_ngram=2)


def test_rock_loss_is_the_cross_entropy_of_the_smoothed_training_distribution_by_hand():
    """Counts [3, 1, 0, 0] choose α* = ½ by leave-one-out (see above), so q = (c + ½) / (4 + 2); the rock's loss on
    given targets is −mean log q_t, and its loss averaged under q itself is the entropy H(q)."""
    rock = Rock.fit(torch.tensor([0, 0, 0, 1]), 4)
    q = [3.5 / 6, 1.5 / 6, 0.5 / 6, 0.5 / 6]
    assert rock.alpha == pytest.approx(0.5, rel=1e-6) and "chosen by leave-one-out" in rock.name
    evaluation = torch.tensor([0, 1, 2, 2, 3])
    assert float(rock.nll(evaluation).mean()) == pytest.approx(
        -sum(math.log(q[t]) for t in evaluation.tolist()) / 5, rel=1e-6
    )
    entropy = -sum(p * math.log(p) for p in q)
    assert float((rock.log_q.exp() * rock.nll(torch.arange(4))).sum()) == pytest.approx(entropy, rel=1e-6)


def skewed_zoo_task():
    """A zoo-style task over 200 classes whose answers are 10 of them (like IOI's names among SmolLM2's tokens),
    so the leave-one-out α is far below ½; [N, 2] targets with IGNORE entries, as the induction task has."""
    from mechscope.task import IGNORE, Task

    g = torch.Generator().manual_seed(0)
    weights = torch.zeros(200, dtype=torch.float64)
    weights[:10] = 1.0 / torch.arange(1, 11).double()
    train = torch.multinomial(weights, 600, replacement=True, generator=g).reshape(300, 2)
    train[::3, 1] = IGNORE
    val = torch.multinomial(weights, 80, replacement=True, generator=g).reshape(40, 2)
    val[::4, 0] = IGNORE
    x = torch.zeros(300, 3, dtype=torch.long)
    return Task("skewed", x, train, x[:40], val, positions=(0, 1), n_classes=200)


def test_zoo_task_rock_is_the_one_rock_scored_per_example_by_hand():
    task = skewed_zoo_task()
    t = task.train_targets.reshape(-1)
    rock = Rock.fit(t[t != -100], 200)
    assert abs(rock.alpha - 0.5) > 0.1  # the data make the old add-½ rule and this one differ
    assert torch.equal(task.rock_logprobs, rock.log_q)
    per = task.rock(task.val_targets)
    by_hand = []
    for row in task.val_targets.tolist():
        kept = [c for c in row if c != -100]
        by_hand.append(sum(float(rock.nll(torch.tensor([c]))) for c in kept) / len(kept))
    assert per.tolist() == pytest.approx(by_hand, rel=1e-12)


def test_graph_command_and_zoo_task_print_the_same_rock_for_the_same_data():
    """``mechscope graph`` on a zoo LM fits its rock on the task's training targets; scrubbing, circuits and SPD
    score the task's rock. They used to smooth differently (leave-one-out α vs add-½) and print different
    rocks for the same targets; now both are the one Rock."""
    from mechscope.cli.graph import _rock

    task = skewed_zoo_task()
    targets = task.val_targets[task.val_targets != -100]
    graph_rock = _rock(lambda: task.train_targets, None, task.n_classes)
    add_half = float(Rock.fit(task.train_targets, 200, alpha=0.5).nll(targets).mean())  # the zoo's old rule
    zoo = float(-task.rock_logprobs[targets].mean())
    assert float(graph_rock.nll(targets).mean()) == pytest.approx(zoo, rel=1e-12)
    assert add_half - zoo > 0.1  # the disagreement the old rules had on these data

"""Splicing on tiny models where each value is known: identity recovers everything, the ablation
itself recovers nothing, and the rock is the smoothed training label (or unigram) distribution scored
on the evaluation targets, computed by hand."""

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mechscope.evals.splice import SpliceConfig, evaluate_splice, site_mean
from mechscope.task import Task


class TinyLM(nn.Module):
    """Embedding → two residual MLP blocks → unembedding; returns an object with ``.logits`` like HF."""

    def __init__(self, vocab: int = 13, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d)) for _ in range(2))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for block in self.layers:
            h = h + block(h)
        return SimpleNamespace(logits=self.lm_head(h))


@pytest.fixture(scope="module")
def blobs():
    """A tiny MLP classifier trained on three Gaussian blobs in 6 dimensions (unequal class sizes)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 2.5
    labels = torch.tensor([0] * 150 + [1] * 90 + [2] * 60)
    x = centres[labels] + torch.randn(300, 6, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 3))
    for _ in range(100):  # plain gradient descent: no optimiser import, a second at most
        model.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.3 * p.grad
    perm = torch.randperm(300, generator=g)
    train, test = perm[:200], perm[200:]
    task = Task("blobs", x[train], labels[train], x[test], labels[test], positions=(), n_classes=3)
    held_out_only = Task("blobs", x[:0], labels[:0], x[test], labels[test], positions=(), n_classes=3)
    return model, task, held_out_only


def test_identity_recovers_all_and_ablation_recovers_nothing(blobs):
    model, task, _ = blobs
    cfg = SpliceConfig(batch_size=32)
    ident = evaluate_splice(model, "1", lambda x: x, task, cfg=cfg)
    assert ident.spliced_loss == ident.clean_loss
    assert ident.recovered_vs_zero == 1.0 and ident.recovered_vs_mean == 1.0
    assert ident.kl_spliced == pytest.approx(0.0, abs=1e-7)
    assert ident.reconstruction["fvu"] == 0.0
    assert ident.mean_source == "training task"
    assert ident.stderr["spliced_minus_clean"] == 0.0 and ident.stderr["clean"] > 0
    assert set(ident.stderr) == {
        "clean",
        "spliced",
        "zero",
        "mean",
        "rock",
        "spliced_minus_clean",
        "spliced_minus_rock",
        "zero_minus_clean",
        "mean_minus_clean",
        "rock_minus_clean",
    }
    assert ident.warnings() == []  # the trained classifier's ablations cost far more than their errors

    zero = evaluate_splice(model, "1", torch.zeros_like, task, cfg=cfg)
    assert zero.spliced_loss == pytest.approx(zero.zero_loss, rel=1e-12)
    assert zero.recovered_vs_zero == pytest.approx(0.0, abs=1e-9)
    assert zero.kl_spliced == pytest.approx(zero.kl_zero)

    mu = site_mean(model, "1", task)  # over the training split
    mean = evaluate_splice(model, "1", lambda x: mu.expand_as(x), task, mean_act=mu, cfg=cfg)
    assert mean.mean_source == "given"
    assert mean.recovered_vs_mean == pytest.approx(0.0, abs=1e-6)
    assert mean.mean_loss == pytest.approx(zero.mean_loss, rel=1e-6)  # given mean == computed mean


def test_rock_is_the_training_label_distribution_by_hand(blobs):
    model, task, held_out_only = blobs
    r = evaluate_splice(model, "1", lambda x: x, task, cfg=SpliceConfig(rock_alpha=1.0))
    counts = Counter(task.train_targets.tolist())
    q = {c: (counts[c] + 1.0) / (200 + 3 * 1.0) for c in range(3)}  # add-one over 3 classes, training labels only
    by_hand = -sum(math.log(q[int(y)]) for y in task.val_targets) / 100
    assert r.rock_loss == pytest.approx(by_hand, rel=1e-12)
    assert "label distribution of 200 training targets" in r.rock_name
    # Scored per example like every loss, so it has the plain standard error of the mean.
    per = torch.tensor([-math.log(q[int(y)]) for y in task.val_targets], dtype=torch.float64)
    assert r.stderr["rock"] == pytest.approx(float(per.std() / 10.0), rel=1e-9)
    rock = r.rock_loss
    r = evaluate_splice(model, "1", lambda x: x, held_out_only)
    assert math.isnan(r.rock_loss) and "no training targets" in r.rock_name and "No rock was measured" in r.verdict()
    assert r.n_predictions == 100 and r.task == "classifier"
    # One prediction per example: the clustered error is the plain standard error of the mean.
    with torch.no_grad():
        per = torch.nn.functional.cross_entropy(model(task.val_inputs), task.val_targets, reduction="none").double()
    assert r.stderr["clean"] == pytest.approx(float(per.std() / 10.0), rel=1e-5)
    # The trained classifier beats the rock by far; ablating its hidden layer loses most of that.
    assert r.clean_loss < 0.5 * rock
    assert r.zero_loss > r.clean_loss and r.mean_loss > r.clean_loss


def test_partial_reconstruction_recovers_a_fraction(blobs):
    model, task, _ = blobs
    acts = torch.relu(model[0](task.train_inputs))  # [200, 24] the hidden activations at site "1"
    mu = acts.mean(0)
    basis = torch.linalg.svd(acts - mu, full_matrices=False).Vh  # principal directions
    recovered = []
    for k in (1, 3, 24):
        P = basis[:k].T @ basis[:k]
        r = evaluate_splice(model, "1", lambda x: mu + (x - mu) @ P, task, mean_act=mu)  # noqa: B023 (called here)
        recovered.append(r.recovered_vs_mean)
    assert recovered[-1] == pytest.approx(1.0, abs=1e-4)
    assert recovered[0] < recovered[-1]
    assert all(0.0 < v <= 1.0 + 1e-4 for v in recovered)


def test_worse_than_rock_is_said_in_words(blobs):
    model, task, _ = blobs
    g = torch.Generator().manual_seed(3)
    r = evaluate_splice(model, "1", lambda x: x + 50 * torch.randn(x.shape, generator=g), task)
    assert r.worse_than_rock
    assert "explains nothing" in r.verdict()
    lines = r.summary_lines()
    assert any(l.strip().startswith("rock") for l in lines) and "explains nothing" in lines[-1]
    d = r.to_dict()
    assert d["worse_than_rock"] is True and set(d) >= {
        "clean_loss",
        "recovered_vs_zero",
        "recovered_vs_mean",
        "rock_loss",
    }


def test_lm_task_rock_is_the_training_unigram_and_mask_is_respected():
    torch.manual_seed(0)
    model = TinyLM()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 13, (5, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding at the end of the first context
    train_ids = torch.randint(0, 13, (7, 9), generator=g)
    task = Task.next_token(train_ids, ids, n_classes=13, val_mask=mask)
    r = evaluate_splice(model, "layers.0", lambda x: x, task, cfg=SpliceConfig(batch_size=2, rock_alpha=0.5))
    targets = [int(ids[i, t + 1]) for i in range(5) for t in range(8) if mask[i, t] and mask[i, t + 1]]
    assert r.n_predictions == len(targets) == 8 * 5 - 3
    counts = Counter(train_ids[:, 1:].reshape(-1).tolist())  # position 0 is never a target
    q = [(counts[v] + 0.5) / (7 * 8 + 0.5 * 13) for v in range(13)]
    assert r.rock_loss == pytest.approx(-sum(math.log(q[t]) for t in targets) / len(targets), rel=1e-12)
    # Clean loss by hand: the model's own logits scored on the unpadded targets.
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[:, :-1], -1)
    nll = [-float(logp[i, t, ids[i, t + 1]]) for i in range(5) for t in range(8) if mask[i, t] and mask[i, t + 1]]
    assert r.clean_loss == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    # A random model: zero-ablating a block moves the loss by less than two standard errors, so loss recovered
    # is n/a with a warning (the old rule printed 1.0 here; a worse splice would have printed any number).
    assert math.isnan(r.recovered_vs_zero) and any("vs zero-ablation is n/a" in w for w in r.warnings())
    assert r.task == "lm"
    # A random model is no better than the rock, and the verdict says the gaps mean nothing.
    assert r.clean_loss >= r.rock_loss and "no better than the rock" in r.verdict()


def test_lm_zero_splice_equals_zero_ablation():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 13, (4, 7), generator=torch.Generator().manual_seed(2))
    r = evaluate_splice(
        model,
        "layers.1",
        torch.zeros_like,
        Task.next_token(ids[:0], ids, n_classes=13),
        cfg=SpliceConfig(batch_size=3, max_examples=3),
    )
    assert r.n_examples == 3
    assert r.spliced_loss == pytest.approx(r.zero_loss, rel=1e-12)
    assert math.isnan(r.recovered_vs_zero)  # a random model: the gap (+0.004 ± 0.022 nats) is noise


def test_skip_first_positions_leaves_them_clean():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 13, (4, 6), generator=torch.Generator().manual_seed(4))
    seen = []

    def recon(x):
        seen.append(x.shape[0])
        return torch.zeros_like(x)

    r = evaluate_splice(
        model,
        "layers.0",
        recon,
        Task.next_token(ids[:0], ids, n_classes=13),
        cfg=SpliceConfig(batch_size=4, skip_first_positions=2),
    )
    assert seen == [4 * 4]  # only positions 2..5 of the 4 contexts reach the reconstruction
    assert r.spliced_loss == pytest.approx(r.zero_loss, rel=1e-12)  # and the zero-ablation skips the same ones
    with pytest.raises(ValueError):
        SpliceConfig(skip_first_positions=-1)


def test_verdicts_in_words():
    from mechscope.evals.splice import SpliceResult

    base = dict(
        site="s",
        task="lm",
        n_examples=10,
        n_predictions=100,
        clean_loss=2.0,
        zero_loss=9.0,
        mean_loss=6.0,
        rock_loss=5.0,
        rock_name="unigram",
        kl_spliced=0.1,
        kl_zero=3.0,
        kl_mean=2.0,
        mean_source="given",
        reconstruction={},
    )
    good = SpliceResult(spliced_loss=2.5, stderr={"spliced": 0.05}, **base)
    assert "beats the rock by 2.5000 nats" in good.verdict() and good.recovered_vs_rock == pytest.approx(2.5 / 3)
    noisy = SpliceResult(spliced_loss=5.1, stderr={"spliced": 0.1}, **base)
    assert "within two standard errors of the rock" in noisy.verdict()
    bad = SpliceResult(spliced_loss=5.5, stderr={"spliced": 0.1}, **base)
    assert "explains nothing" in bad.verdict() and bad.recovered_vs_zero == pytest.approx(3.5 / 7)
    assert "no better than the rock" in SpliceResult(spliced_loss=5.5, **{**base, "clean_loss": 5.2}).verdict()


def test_splice_probe_matches_evaluate_splice(tiny_tok_lm):
    """The one-forward probe gives the same spliced loss, KL and loss recovered as the full evaluation."""
    from mechscope.evals.splice import SpliceConfig, SpliceProbe, evaluate_splice
    from mechscope.models.loading import n_logits

    ids = torch.randint(0, 500, (6, 10), generator=torch.Generator().manual_seed(0))
    task = Task.next_token(ids[:0], ids, n_classes=n_logits(tiny_tok_lm.model))
    cfg = SpliceConfig(batch_size=4, skip_first_positions=1)
    half = lambda x: 0.5 * x  # noqa: E731
    full = evaluate_splice(tiny_tok_lm.model, "resid_post.1", half, task, cfg=cfg)
    probe = SpliceProbe(
        tiny_tok_lm.model,
        "resid_post.1",
        task,
        evaluate_splice(tiny_tok_lm.model, "resid_post.1", lambda x: x, task, cfg=cfg),
        cfg,
    )
    for _ in range(2):  # the second call reads the cached clean log-probs
        got = probe(half)
        assert got["loss"] == pytest.approx(full.spliced_loss, rel=1e-6)
        assert got["kl"] == pytest.approx(full.kl_spliced, rel=1e-5, abs=1e-9)
        # A random model: the gaps may be noise, and then both say n/a (NaN) by the same rule.
        assert got["loss_recovered_zero"] == pytest.approx(full.recovered_vs_zero, rel=1e-6, nan_ok=True)
        assert got["loss_recovered_mean"] == pytest.approx(full.recovered_vs_mean, rel=1e-5, nan_ok=True)
    ident = evaluate_splice(tiny_tok_lm.model, "resid_post.1", lambda x: x, task, cfg=cfg)
    assert probe(lambda x: x)["loss_recovered_zero"] == pytest.approx(ident.recovered_vs_zero, nan_ok=True)


def test_predictions_and_site_mean_stay_on_the_model_device(monkeypatch):
    """The splice's logits, targets and per-example index, and the site mean, are left where the model runs (the
    totals are accumulated there); ``meta`` stands in for an accelerator: a copy to the cpu would raise on it."""
    import torch.fx.experimental._config as fx_config

    from mechscope.evals.splice import predictions, site_mean
    from mechscope.task import Task

    # a classifier's targets are never ignored, so the meta kernel's "every entry kept" is the truth here
    monkeypatch.setattr(fx_config, "meta_nonzero_assume_all_nonzero", True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).to("meta")
    task = Task.classifier(torch.randn(10, 4), torch.randint(3, (10,)), n_classes=3)
    logits, targets, example = predictions(model, task, 0, 2)
    assert {logits.device, targets.device, example.device} == {torch.device("meta")} and logits.shape == (2, 3)
    assert site_mean(model, "0", task, max_examples=4).device == torch.device("meta")

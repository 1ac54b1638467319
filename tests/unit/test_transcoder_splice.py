"""Splicing a transcoder: the MLP's output is replaced by a prediction from the MLP's input, read in the
same forward. Known answers: the MLP itself as the "transcoder" changes nothing; a zero prediction is
the zero-ablation; a source that runs after the target is refused."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mechscope.evals.splice import SpliceConfig, evaluate_splice
from mechscope.task import Task


class TinyLM(nn.Module):
    """Embedding → two residual MLP blocks → unembedding; ``.logits`` like a Hugging Face output."""

    def __init__(self, vocab: int = 13, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d)) for _ in range(2))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for mlp in self.mlps:
            h = h + mlp(h)
        return SimpleNamespace(logits=self.lm_head(h))


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 13, (12, 9), generator=torch.Generator().manual_seed(1))
    train = torch.randint(0, 13, (20, 9), generator=torch.Generator().manual_seed(2))
    return model, Task.next_token(train, ids, n_classes=13)


@pytest.mark.parametrize("p0", [0, 1])
def test_the_mlp_as_its_own_transcoder_changes_nothing(lm, p0):
    model, task = lm
    cfg = SpliceConfig(batch_size=5, skip_first_positions=p0, progress=False)
    mlp = copy.deepcopy(model.mlps[1])  # a hook-free copy: the model's own module carries the splice hooks
    res = evaluate_splice(model, "mlps.1", mlp, task, cfg=cfg, source_site="mlps.1:input")
    assert res.spliced_loss == pytest.approx(res.clean_loss, abs=1e-6)
    assert res.reconstruction["fvu"] == pytest.approx(0.0, abs=1e-10)
    assert res.zero_loss != pytest.approx(res.clean_loss)  # the MLP matters, so the check above can fail
    # but by less than two standard errors on this random model: loss recovered vs zero is n/a, with a warning.
    assert math.isnan(res.recovered_vs_zero) and "vs zero-ablation is n/a" in res.warnings()[0]


def test_a_zero_prediction_is_the_zero_ablation_and_the_source_is_what_it_reads(lm):
    model, task = lm
    cfg = SpliceConfig(batch_size=4, progress=False)
    seen = []

    def zero(x):
        seen.append(x.shape)
        return torch.zeros(x.shape[0], 8)

    res = evaluate_splice(model, "mlps.0", zero, task, cfg=cfg, source_site="mlps.0:input")
    assert res.spliced_loss == pytest.approx(res.zero_loss, abs=1e-6)
    assert seen and all(s == (4 * 9, 8) for s in seen)
    # A different (wrong) source changes the answer: the prediction really reads the source site.
    wrong = evaluate_splice(model, "mlps.1", copy.deepcopy(model.mlps[1]), task, cfg=cfg, source_site="mlps.0:input")
    assert wrong.spliced_loss != pytest.approx(wrong.clean_loss, abs=1e-4)


def test_a_source_after_the_target_is_refused(lm):
    model, task = lm
    with pytest.raises(ValueError, match="did not run before"):
        evaluate_splice(
            model,
            "mlps.0",
            copy.deepcopy(model.mlps[0]),
            task,
            cfg=SpliceConfig(batch_size=4, progress=False),
            source_site="mlps.1:input",
        )


def test_splice_probe_reads_the_source_site_too(lm):
    from mechscope.evals.splice import SpliceProbe

    model, task = lm
    cfg = SpliceConfig(batch_size=5, skip_first_positions=1, progress=False)
    base = evaluate_splice(model, "mlps.1", lambda x: torch.zeros_like(x), task, cfg=cfg)
    probe = SpliceProbe(model, "mlps.1", task, base, cfg)
    same = probe(copy.deepcopy(model.mlps[1]), source_site="mlps.1:input")
    assert same["loss"] == pytest.approx(base.clean_loss, abs=1e-6) and same["kl"] == pytest.approx(0.0, abs=1e-6)
    zero = probe(lambda x: torch.zeros(x.shape[0], 8), source_site="mlps.1:input")
    assert zero["loss"] == pytest.approx(base.zero_loss, abs=1e-6)

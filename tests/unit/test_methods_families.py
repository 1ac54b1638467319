"""The methods beside circuits on every family (issue 23): the distill detector, SPD on GPT-2's Conv1D, splicing and
causal scrubbing on tiny random Hugging Face models of llama, gpt2, gpt_neox, gemma2, qwen3 and phi; a
TransformerLens model never taken for the zoo; a plain classifier through detect, llc and splicing from
``(model, inputs, labels)`` by the one task abstraction (``Task.classifier``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mechscope.anomaly import make_detector
from mechscope.anomaly.base import collect
from mechscope.errors import UsageError
from mechscope.evals.splice import SpliceConfig, evaluate_splice
from mechscope.models.families import family_of, heads, is_transformer_lens
from mechscope.models.loading import n_logits
from mechscope.sites import resolve_sites
from mechscope.task import Task
from tests.helpers_families import build

FAMILIES = ["llama", "gpt2", "gpt_neox", "gemma2", "qwen3", "phi"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread is faster than several fighting over shared cores."""


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return build(request.param)


def _ids(n: int, seed: int = 0, vocab: int = 100) -> torch.Tensor:
    return torch.randint(0, vocab, (n, 8), generator=torch.Generator().manual_seed(seed))


# --- the distill detector ------------------------------------------------------------------------------


def test_distill_fits_and_scores_on_every_lm_family(lm):
    ids = _ids(40)
    _, outs = collect(lm, ids, [str(resolve_sites(lm, "resid_post.1")[0])], logits=True)
    with torch.no_grad():
        assert torch.equal(outs, lm(ids).logits[:, -1].double())  # the model's logits, read at the last position
    det = make_detector("distill", steps=20, hidden=16).fit(lm, ids, ["resid_post.1", "mlp_out.0"])
    scores = det.score(_ids(6, seed=1))
    assert scores.shape == (6,) and scores.dtype == torch.float64 and torch.isfinite(scores).all()


# --- SPD on transformers' Conv1D ----------------------------------------------------------------------


def _set_exact(comp, W: torch.Tensor) -> None:
    """Subcomponents = the SVD of W [d_out, d_in] (rank-r exact, the rest zero): they sum to W."""
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    with torch.no_grad():
        comp.U.zero_()
        comp.V.zero_()
        comp.U[: s.numel()] = (u * s).T
        comp.V[:, : s.numel()] = vh.T


def test_spd_decomposes_gpt2_conv1d_in_the_layers_orientation():
    from mechscope.decompose import SPD, SPDConfig
    from mechscope.decompose.spd import target_matrix

    model = build("gpt2")
    names = ("transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "transformer.h.1.attn.c_attn")
    spd = SPD(model, SPDConfig(C=100, targets=names))
    assert spd.names == list(names)
    for name, mod in spd.targets.items():
        d_in, d_out = mod.weight.shape  # Conv1D: y = x W + b, W [in, out]
        assert target_matrix(mod).shape == (d_out, d_in)
        _set_exact(spd.comp(name), target_matrix(mod))
        xi = torch.randn(5, d_in)
        with torch.no_grad():  # the components' sum acts on the layer's input exactly as the layer does
            assert torch.allclose(spd.comp(name)(xi, torch.ones(5, 100)) + mod.bias, mod(xi), atol=1e-5)
    assert float(spd.faithfulness().detach()) < 1e-10
    ids = _ids(3)
    ones = {n: torch.ones(3, 8, 100) for n in spd.names}
    with torch.no_grad():
        assert torch.allclose(spd.run_masked(ids, ones), model(ids).logits, atol=1e-4)  # HF output → logits by default
        zero_fc = spd.run_masked(ids, {"transformer.h.0.mlp.c_fc": torch.zeros(3, 8, 100)})
    assert (zero_fc - model(ids).logits).abs().max() > 1e-4  # a zero mask removes the layer's weight
    parts = spd.losses(ids, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in parts.values()) and float(parts["faithfulness"].detach()) < 1e-10


# --- TransformerLens is recognised, never taken for the zoo --------------------------------------------


class _HookPoint(nn.Identity):
    pass


class _TLBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(d), nn.Identity(), nn.LayerNorm(d), nn.Identity()
        self.hook_resid_post = _HookPoint()

    def forward(self, x):
        return self.hook_resid_post(x + self.mlp(self.ln2(x + self.attn(self.ln1(x)))))


class HookedTransformer(nn.Module):
    """A stand-in for transformer_lens.HookedTransformer (not installed here): its class lives in that package's
    module, it has ``blocks`` and ``ln_final`` like the zoo transformer, and bare weight parameters."""

    def __init__(self, vocab: int = 20, d: int = 8) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(vocab, d))
        self.blocks = nn.ModuleList([_TLBlock(d), _TLBlock(d)])
        self.ln_final = nn.LayerNorm(d)
        self.W_U = nn.Parameter(torch.randn(d, vocab))

    def forward(self, tokens):
        x = self.W_E[tokens]
        for b in self.blocks:
            x = b(x)
        return self.ln_final(x) @ self.W_U


for _cls in (HookedTransformer, _TLBlock, _HookPoint):
    _cls.__module__ = "transformer_lens.HookedTransformer"


def test_transformer_lens_is_recognised_and_never_taken_for_the_zoo():
    from mechscope.circuits.atpstar import zoo_layer_writes
    from mechscope.circuits.residual import zoo_graph
    from mechscope.decompose.spd import find_targets

    tl = HookedTransformer()
    assert is_transformer_lens(tl) and not is_transformer_lens(build("gpt2"))
    for refused in (
        lambda: family_of(tl),
        lambda: zoo_layer_writes(tl),
        lambda: zoo_graph(tl),
        lambda: heads(tl),
        lambda: find_targets(tl, ("*",)),
    ):
        with pytest.raises(UsageError, match=r"TransformerLens models \(HookedTransformer\) are not supported by"):
            refused()
    # ... and served through its own hook points by module path
    tokens = torch.randint(0, 20, (30, 6), generator=torch.Generator().manual_seed(0))
    det = make_detector("mahalanobis").fit(tl, tokens, ["blocks.1.hook_resid_post"])
    assert torch.isfinite(det.score(tokens[:4])).all()


def test_zoo_is_still_the_zoo():
    from mechscope.circuits.atpstar import zoo_layer_writes
    from mechscope.zoo.transformer import TransformerShape, ZooTransformer

    s = TransformerShape(
        vocab=20, n_out=20, n_ctx=8, d_model=16, n_heads=2, d_head=4, n_layers=2, d_mlp=32, layer_norm=True, causal=True
    )
    zoo = ZooTransformer(s)
    assert not is_transformer_lens(zoo) and family_of(zoo).name == "zoo"
    assert zoo_layer_writes(zoo) == [["blocks.0.attn", "blocks.0.mlp"], ["blocks.1.attn", "blocks.1.mlp"]]


# --- splicing and scrubbing on every family ------------------------------------------------------------


def _zeroed_mlp_loss(model: nn.Module, layer: int, ids: torch.Tensor) -> float:
    """Next-token loss with the MLP's output projection (weight and bias) of ``layer`` set to zero by hand."""
    from mechscope.models.families import block_path

    m = copy.deepcopy(model)
    mlp = m.get_submodule(f"{block_path(m)}.{layer}.{family_of(m).mlp}")
    last = [mod for mod in mlp.modules() if isinstance(getattr(mod, "weight", None), torch.Tensor)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if getattr(last, "bias", None) is not None:
            last.bias.zero_()
        logits = m(ids).logits[:, :-1]
    return float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


def test_splice_on_every_family(lm):
    ids = _ids(12)
    task, cfg = Task.next_token(ids[6:], ids[:6], n_classes=n_logits(lm)), SpliceConfig(progress=False)
    for site in ("resid_post.0", "attn_out.1", "mlp_in.1", "z.1"):
        r = evaluate_splice(lm, site, lambda a: a, task, cfg=cfg)
        assert r.spliced_loss == r.clean_loss and r.kl_spliced == 0.0, site  # the identity splice changes nothing
        assert r.zero_loss != r.clean_loss and math.isfinite(r.rock_loss), site
    r = evaluate_splice(lm, "mlp_out.1", lambda a: a, task, cfg=cfg)
    assert r.zero_loss == pytest.approx(_zeroed_mlp_loss(lm, 1, ids[:6]), abs=1e-5)  # zero-ablation = the MLP removed


def _scrub(model, child: dict):
    from mechscope.scrub import Target, hypothesis_from_dict, run_hypothesis
    from mechscope.scrub.tasks import Loaded, repeated_tokens

    hyp = hypothesis_from_dict(
        {
            "seeds": 2,
            "examples": 16,
            "pool": 48,
            "root": "output",
            "nodes": {"output": {"feature": "identity", "rest": "identity", "children": ["part"]}, "part": child},
        }
    )
    task, x, y = repeated_tokens(Loaded(model, None), 64, seg=4, vocab_size=6, distinct=True)
    return run_hypothesis(hyp, Target(model, task, x[:16], y[:16], "tiny", x[16:], y[16:]))


@pytest.mark.parametrize("family", FAMILIES)
def test_scrub_on_every_family(family):
    model = build(family, vocab_size=1010)
    e = heads(model).head_dim
    same = _scrub(model, {"sites": ["z.1"], "channels": [e, 2 * e], "feature": "identity"})
    assert same.loss_scrubbed == pytest.approx(same.loss_clean, abs=1e-6)  # x' = x: nothing is resampled
    moved = _scrub(model, {"sites": ["resid_post.0"], "feature": "none"})
    assert moved.loss_scrubbed != pytest.approx(moved.loss_clean, abs=1e-6)
    assert math.isfinite(moved.loss_rock) and moved.loss_clean == same.loss_clean


def test_repeated_tokens_refuses_a_small_vocabulary_by_name():
    from mechscope.scrub.tasks import Loaded, repeated_tokens

    with pytest.raises(UsageError, match=r"draws token ids 1000\.\.1039 but the model's vocabulary has 100 tokens"):
        repeated_tokens(Loaded(build("gpt2"), None), 8)


# --- a plain classifier: (model, inputs, labels) through the one task ---------------------------------


@pytest.fixture(scope="module")
def digits():
    """An MLP trained on scikit-learn's digits (8×8 images → 10 classes) and its task."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    task = Task.classifier(x, y, name="digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = task.loss(model(task.train_inputs), task.train_targets).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), task


def test_classifier_task_splits_scores_and_fits_the_rock(digits):
    model, task = digits
    assert len(task.val_targets) == 359 and len(task.train_targets) == 1797 - 359 and task.n_classes == 10
    assert (task.train_targets.bincount(minlength=10) > 100).all() and (
        task.val_targets.bincount(minlength=10) > 15
    ).all()
    with torch.no_grad():
        loss = task.loss(model(task.val_inputs), task.val_targets)
        acc = task.accuracy(model(task.val_inputs), task.val_targets)
    assert loss.shape == (359,) and float(acc.mean()) > 0.9
    assert float(task.rock(task.val_targets).mean()) == pytest.approx(math.log(10), abs=0.05)  # ~uniform labels
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 3\)"):
        Task.classifier(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), n_classes=3)
    with pytest.raises(UsageError, match="scores a classifier's logits"):
        task.loss(torch.zeros(2, 5, 10), task.val_targets[:2])


def test_classifier_through_detect_llc_splice_and_scrub(digits):
    from mechscope.anomaly import Benchmark, evaluate
    from mechscope.slt import LLCConfig, estimate_llc
    from mechscope.slt.targets import Target

    model, task = digits
    noise = torch.rand(100, 64, generator=torch.Generator().manual_seed(1))
    # detect: fit on the training inputs at the hidden layer, score held-out digits beside noise
    det = make_detector("mahalanobis").fit(model, task.train_inputs, "1")
    scores = det.score(torch.cat([task.val_inputs[:100], noise]))
    assert scores[100:].min() > scores[:100].median()
    result = evaluate(
        Benchmark("digits-vs-noise", model, ["1"], task.train_inputs, task.val_inputs, noise, noise[:0]),
        "knn",
        n_boot=20,
    )
    assert result.summary["auroc"] > 0.9
    # llc: the same task gives the loss and the data
    t = Target.from_task("digits", model, task)
    llc = estimate_llc(
        t.model, t.loss_fn, t.data, LLCConfig(chains=1, draws=20, burn_in=5, batch_size=128), progress=False
    )
    assert math.isfinite(llc.llc_hat) and llc.llc_hat > 0
    # splice: held-out examples, the rock fit on the training labels
    r = evaluate_splice(model, "1", lambda a: a, task, cfg=SpliceConfig(progress=False, batch_size=128))
    assert (
        r.spliced_loss
        == r.clean_loss
        < r.rock_loss
        == pytest.approx(float(task.rock(task.val_targets).mean()), abs=1e-9)
    )
    # scrub: the same task scores a hypothesis about the hidden layer
    from mechscope.scrub import Target as ScrubTarget, hypothesis_from_dict, run_hypothesis

    hyp = hypothesis_from_dict(
        {
            "seeds": 2,
            "examples": 100,
            "root": "output",
            "nodes": {
                "output": {"feature": "identity", "children": ["hidden"]},
                "hidden": {"sites": ["1"], "feature": "identity"},
            },
        }
    )
    s = run_hypothesis(hyp, ScrubTarget(model, task, task.val_inputs, task.val_targets, "digits"))
    assert s.loss_scrubbed == pytest.approx(s.loss_clean, abs=1e-9) and s.loss_clean < s.loss_rock

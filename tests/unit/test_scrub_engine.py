"""Known answers for the causal-scrubbing engine, on hand-built models whose dependence on the input is
known by construction (no training)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mechscope.scrub import Scrubber, hypothesis_from_dict
from mechscope.scrub.features import FEATURES
from mechscope.scrub.sampling import ClassSampler
from mechscope.task import Task

V, T, N = 8, 4, 512


class Toy(nn.Module):
    """logits[:, 0] = a·(2·parity(x_0) − 1) + b·(2·parity(x_j) − 1), read through two sites:
    ``feat`` carries parity(x_0) (one-hot), ``other`` carries parity(x_j), j = ``other_position``."""

    def __init__(self, a: float = 3.0, b: float = 0.0, other_position: int = 1) -> None:
        super().__init__()
        self.a, self.b, self.j = a, b, other_position
        self.feat, self.other, self.out = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feat(nn.functional.one_hot(x[:, 0] % 2, 2).float())  # [B, 2]
        g = self.other(nn.functional.one_hot(x[:, self.j] % 2, 2).float())
        s = self.a * (f[:, 1] - f[:, 0]) + self.b * (g[:, 1] - g[:, 0])
        logits = torch.zeros(x.shape[0], x.shape[1], 2)
        logits[:, 0, 1] = s
        return self.out(logits)


class PrevToken(nn.Module):
    """Next-token logits at position t = 4·one_hot(x_{t−1}) read through the per-position site ``prev``."""

    def __init__(self) -> None:
        super().__init__()
        self.prev = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        return 4.0 * self.prev(nn.functional.one_hot(shifted, V).float())


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Task]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (N, T), generator=g)
    y = x[:, 0] % 2
    return x, y, Task("toy", x, y, x, y, positions=(0,), n_classes=2)


def parity_of(position: int):
    def f(x, y):
        return x[:, position] % 2

    return f


FEATURES_MOD = __name__


def feat_x0(x, y):
    return x[:, 0] % 2


def feat_x1(x, y):
    return x[:, 1] % 2


def bad_shape(x, y):
    return x[:3]


def raises(x, y):
    raise RuntimeError("boom")


def hyp(feature: str, site: str = "feat", **extra) -> object:
    return hypothesis_from_dict(
        {
            "root": "out",
            "seeds": 4,
            "nodes": {"out": {"children": ["n"]}, "n": {"sites": [site], "feature": feature, **extra}},
        }
    )


def run(model, hypothesis, **kw):
    x, y, task = data()
    return Scrubber(model, hypothesis, x, y, task, **kw).run()


def test_correct_feature_recovers_exactly(one_thread):
    r = run(Toy(), hyp(f"{FEATURES_MOD}:feat_x0"))
    assert r.loss_scrubbed == pytest.approx(r.loss_clean, abs=1e-6)
    assert r.loss_scrubbed_ci[1] - r.loss_scrubbed_ci[0] == pytest.approx(0.0, abs=1e-9)
    assert r.recovered == pytest.approx(1.0, abs=1e-6)
    assert r.loss_baseline > r.loss_clean + 1.0  # the output resampled at random is much worse


def test_independent_feature_recovers_nothing(one_thread):
    """Conditioning on parity(x_1), independent of the label, is the same as resampling at random."""
    r = run(Toy(), hyp(f"{FEATURES_MOD}:feat_x1"))
    assert abs(r.recovered) < 0.1
    assert r.loss_scrubbed_ci[0] < r.loss_baseline + 0.05


def test_unclaimed_path_is_resampled_with_the_exact_expected_loss(one_thread):
    """Output = 3·s(x_0) + 1·s(x_0) through two sites; the hypothesis names only ``feat``, so the second
    path reads a random input r. Expected loss: mean over x and pool rows r of CE(3·s(x_0) + s(r_0), y(x))."""
    model = Toy(a=3.0, b=1.0, other_position=0)
    x, y, _ = data()
    s0 = (2 * (x[:, 0] % 2) - 1).double() * 3
    s1 = (2 * (x[:, 0] % 2) - 1).double()
    logit = s0[:, None] + s1[None, :]  # [x, r]
    ce = nn.functional.softplus(torch.where(y[:, None] == 1, -logit, logit))
    expected = float(ce.mean())
    r = run(
        model,
        hypothesis_from_dict(
            {
                "root": "out",
                "seeds": 16,
                "nodes": {"out": {"children": ["n"]}, "n": {"sites": ["feat"], "feature": f"{FEATURES_MOD}:feat_x0"}},
            }
        ),
    )
    lo, hi = r.loss_scrubbed_ci
    assert lo - 0.01 <= expected <= hi + 0.01
    assert r.loss_scrubbed > r.loss_clean + 0.05  # the unclaimed path mattered


@pytest.mark.parametrize(
    "rest, exact", [("identity", True), (f"{FEATURES_MOD}:feat_x0", True), (f"{FEATURES_MOD}:feat_x1", False)]
)
def test_rest_says_where_the_unclaimed_path_reads_from(rest, exact, one_thread):
    """The same two-path toy as above: with ``rest: identity`` (the root's x' = x) or a rest feature that fixes
    parity(x_0), the unnamed ``other`` path reads an input with the reference's parity, so the scrubbed loss is
    the clean loss exactly; a rest feature independent of parity(x_0) is an unconditional resample again."""
    model = Toy(a=3.0, b=1.0, other_position=0)
    h = hypothesis_from_dict(
        {
            "root": "out",
            "seeds": 4,
            "nodes": {
                "out": {"children": ["n"], "rest": rest},
                "n": {"sites": ["feat"], "feature": f"{FEATURES_MOD}:feat_x0"},
            },
        }
    )
    r = run(model, h)
    if exact:
        assert r.loss_scrubbed == pytest.approx(r.loss_clean, abs=1e-6) and r.recovered == pytest.approx(1.0, abs=1e-6)
    else:
        assert r.loss_scrubbed > r.loss_clean + 0.05


def test_separate_pool_is_the_only_source_of_draws(one_thread):
    """With a separate pool whose x_0 is all even, every draw comes from it: the feature ``none`` at the
    only site gives the loss of always predicting from an even x_0, computed by hand."""
    x, y, task = data()
    pool = x[x[:, 0] % 2 == 0][:100]
    h = hypothesis_from_dict(
        {
            "root": "out",
            "seeds": 2,
            "nodes": {"out": {"children": ["n"], "rest": "identity"}, "n": {"sites": ["feat"], "feature": "none"}},
        }
    )
    r = Scrubber(Toy(), h, x, y, task, pool_inputs=pool, pool_targets=pool[:, 0] % 2).run()
    expected = float(nn.functional.cross_entropy(torch.tensor([[0.0, -3.0]]).expand(N, 2), y))
    assert r.loss_scrubbed == pytest.approx(expected, abs=1e-5)


def test_per_position_feature_at_a_leaf(one_thread):
    x = torch.randint(0, V, (N, T), generator=torch.Generator().manual_seed(1))
    y = x[:, :-1]  # position t (≥ 1) is scored against the token before it
    task = Task("prev", x, y, x, y, positions=tuple(range(1, T)), n_classes=V)
    right = hypothesis_from_dict(
        {
            "root": "out",
            "seeds": 3,
            "nodes": {"out": {"children": ["p"]}, "p": {"sites": ["prev"], "feature": "prev_token"}},
        }
    )
    wrong = hypothesis_from_dict(
        {"root": "out", "seeds": 3, "nodes": {"out": {"children": ["p"]}, "p": {"sites": ["prev"], "feature": "token"}}}
    )
    model = PrevToken()
    r_right = Scrubber(model, right, x, y, task).run()
    r_wrong = Scrubber(model, wrong, x, y, task).run()
    assert r_right.recovered == pytest.approx(1.0, abs=1e-6)
    assert r_wrong.recovered < 0.2


def test_sampler_draws_within_class_and_covers_it():
    keys = torch.tensor([0, 1, 0, 2, 1, 0])
    s = ClassSampler(FEATURES["label"], keys, torch.ones(6, dtype=torch.bool), "n")
    g = torch.Generator().manual_seed(0)
    refs = torch.tensor([0] * 3000 + [3] * 10)
    drawn = s.draw(refs, g)
    assert bool((keys[drawn] == keys[refs]).all())
    counts = torch.bincount(drawn[:3000], minlength=6)[[0, 2, 5]].double() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04)
    assert bool((drawn[3000:] == 3).all())


def test_interval_formula():
    from mechscope.scrub.engine import interval

    lo, hi = interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · sd / √S with sd = 1
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))


def wrong_program(model, task):
    return lambda x: torch.zeros(x.shape[0], 3)


def test_parens_features_on_a_hand_written_string():
    from mechscope.zoo.parens import BEGIN, CLOSE, OPEN, PAD

    x = torch.tensor([[BEGIN, OPEN, CLOSE, CLOSE, OPEN, PAD]])  # "())(": elevations 1, 0, −1, 0
    state = FEATURES["parens.elevation_state"].fn(x, None)
    assert state[0, :, 1].tolist() == [0, 1, 0, -1, 0, 0]
    assert state[0, :, 2].tolist() == [1, 1, 1, 0, 0, 0]  # the prefix stays ≥ 0 until the second ")"
    assert FEATURES["parens.length"].fn(x, None).tolist() == [4]
    assert FEATURES["parens.tests"].fn(x, None).tolist() == [[1, 0]]  # passes the count test, fails the horizon test


def test_distinct_repeated_tokens_have_one_previous_occurrence():
    from mechscope.scrub.tasks import _repeated

    x, y = _repeated(50, 6, 10, 1, torch.Generator().manual_seed(0), distinct=True)
    s = x[:, 1:7]
    assert all(len(set(r.tolist())) == 6 for r in s) and torch.equal(x[:, 7:], s)
    key = FEATURES["after_previous_occurrence"].fn(x, y)
    assert bool((key[:, 1:7] == -1).all())  # the first copy: no previous occurrence
    assert torch.equal(key[:, 7:12], x[:, 8:13])  # the second copy: the next token, what induction copies
    from mechscope.task import IGNORE

    assert bool((y[:, :7] == IGNORE).all()) and torch.equal(y[:, 7:], x[:, 8:])  # scored only inside the second copy


def test_repeated_tokens_on_a_model_without_an_output_embedding_takes_the_classes_from_its_targets():
    # get_output_embeddings() may return None (a base model): the vocabulary check is skipped, not an AttributeError.
    from mechscope.scrub.tasks import Loaded, repeated_tokens

    class Headless(nn.Module):
        def get_output_embeddings(self):
            return None

    task, x, y = repeated_tokens(Loaded(Headless()), 4, seg=3, vocab_size=5)
    assert x.shape == (4, 7) and task.n_classes == int(task.train_targets.max()) + 1

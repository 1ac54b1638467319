"""Known answers of sparse probing and of first-letter absorption, on planted activations and dictionaries."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.evals.absorption import full_absorption
from mechscope.probing.absorption import LetterConfig, letter_absorption
from mechscope.probing.features import ACTIVATIONS
from mechscope.probing.sparse import DENSE, RANDOM, ProbeConfig, binary_tasks, sparse_probing


def _concept(n: int = 1200, d: int = 32, seed: int = 0):
    """Gaussian activations [n, d] whose label (half the rows) shifts them along a unit direction u by 1.5; the
    last quarter of the rows are held out."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    label = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g) + 1.5 * label[:, None] * u
    test = torch.arange(n) >= 3 * n // 4
    return x, label, test, u


class _Planted:
    """A ReLU dictionary: latent 0's encoder row is ``u`` with bias ``b`` (the rest are ``others``)."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor) -> None:
        self.W_enc, self.b_enc = W_enc, b_enc
        self.W_dec = W_enc.T.clone()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.W_enc + self.b_enc).relu()


def test_planted_latent_reads_the_concept_at_k1_and_a_random_dictionary_does_not_beat_the_activations():
    x, label, test, u = _concept()
    g = torch.Generator().manual_seed(1)
    d, n = x.shape[1], 256
    others = torch.randn(d, n - 1, generator=g) / math.sqrt(d)
    planted = _Planted(torch.cat([u[:, None], others], 1), torch.zeros(n))
    random = _Planted(torch.randn(d, n, generator=g) / math.sqrt(d), torch.zeros(n))
    feats = {ACTIVATIONS: x, "planted": planted.encode(x), "random": random.encode(x)}
    cfg = ProbeConfig(ks=(1, 2, 5))
    out = sparse_probing(feats, label, test, ("no", "yes"), cfg)
    s = out["scores"]
    # The planted latent is ReLU(x·u): it separates the classes as well as the best linear reader can (the Bayes
    # accuracy of a 1.5 shift is Φ(0.75) ≈ 0.77), and it is the one chosen at k = 1.
    assert s["planted"][1]["accuracy"] >= out["dense"]["accuracy"] - 0.03
    assert s["planted"][1]["auroc"] > 0.8
    assert s["random"][1]["accuracy"] < s["planted"][1]["accuracy"] - 0.05
    for k in cfg.ks:
        assert s["random"][k]["accuracy"] <= out["dense"]["accuracy"] + 0.02
    assert s[RANDOM][1]["accuracy"] < 0.7  # one random direction of 32 barely sees u
    assert DENSE not in s


def test_planted_direction_is_exact_when_the_classes_separate():
    x, label, test, u = _concept()
    x = x + 6.0 * label[:, None] * u  # shift 7.5: separable along u
    planted = _Planted(u[:, None].repeat(1, 4) * torch.tensor([1.0, 0, 0, 0]), torch.zeros(4))
    out = sparse_probing(
        {ACTIVATIONS: x, "planted": planted.encode(x)}, label, test, ("no", "yes"), ProbeConfig(ks=(1,))
    )
    assert out["scores"]["planted"][1]["accuracy"] > 0.99
    assert out["scores"]["planted"][1]["auroc"] > 0.999


def test_one_vs_rest_tasks_are_balanced_and_skip_rare_classes():
    label = torch.tensor([0] * 50 + [1] * 50 + [2] * 5)
    test = torch.zeros(105, dtype=torch.bool)
    test[::4] = True
    tasks = binary_tasks(label, test, ("a", "b", "c"), min_rows=5)
    assert [t.name for t in tasks] == ["a", "b"]
    for t in tasks:
        assert t.y_train.mean() == 0.5 and t.y_test.mean() == 0.5
        assert not set(t.train) & set(t.test)


def _letters(letters: int = 4, per_letter: int = 60, absorbed: float = 0.25, seed: int = 0):
    """Word activations for a planted absorption case (see the test), d = letters + one direction per word."""
    W = letters * per_letter
    d = letters + W
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(d)
    letter = torch.arange(W) % letters
    word = torch.arange(W)
    take = torch.rand(W, generator=g) < absorbed  # the words whose letter is absorbed
    x = eye[letter] + 0.002 * torch.randn(W, d, generator=g)
    x[take] += eye[letters + word[take]]
    # latents: one main latent per letter (u_L − 3 g_w for every word w), one absorbing latent per word
    n = letters + W
    W_enc = torch.zeros(d, n)
    b_enc = torch.zeros(n)
    W_dec = torch.zeros(n, d)
    for L in range(letters):
        W_enc[L, L] = 1.0
        W_enc[letters:, L] = -3.0
        W_dec[L] = eye[L]
    for w in range(W):
        j = letters + w
        c = math.sqrt(2) + 0.5
        W_enc[:, j] = c * (eye[letter[w]] + eye[letters + w])
        b_enc[j] = -(math.sqrt(2) + 1.0)
        W_dec[j] = (eye[letter[w]] + eye[letters + w]) / math.sqrt(2)
    sae = _Planted(W_enc, b_enc)
    sae.W_dec = W_dec
    return x, letter, take, sae


def test_first_letter_absorption_measures_the_planted_rate():
    """Each letter has a main latent that fires on its words except the planted absorbed ones, where a latent for
    that word alone (decoder (u_L + g_w)/√2) fires instead and reconstructs it: the measured absorption is the planted
    share of the held-out words, and a dictionary without absorbing latents measures 0."""
    x, letter, take, sae = _letters()
    test = torch.arange(len(x)) % 3 == 0
    cfg = LetterConfig(max_k=4)
    out = letter_absorption(x[~test], letter[~test], x[test], letter[test], sae, cfg)
    assert out["letters_scored"] == 4
    assert all(r["main_latents"] == [i] for i, r in enumerate(out["letters"]))
    want = int(take[test].sum()) / int(test.sum())  # every held-out word is a probe true positive
    assert out["pooled_absorption"] == pytest.approx(want, abs=1e-9)
    assert 0.1 < want < 0.4
    clean = x.clone()
    clean[take] = (
        clean[take] - torch.eye(x.shape[1])[4 + torch.arange(len(x))[take]]
    )  # no word direction: no absorption
    out0 = letter_absorption(clean[~test], letter[~test], clean[test], letter[test], sae, cfg)
    assert out0["pooled_absorption"] == 0.0 and out0["silent_main"] == 0.0


def test_full_absorption_thresholds():
    W_dec = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    u = torch.tensor([1.0, 0.0])
    x = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.0]])
    codes = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.3, 0.0]])
    fa = full_absorption(x, codes, W_dec, u, main=[0])
    # row 0: main silent, latent 1 (cos 0.6) carries 0.6 of x·u = 1 → absorbed; row 1: main fires;
    # row 2: latent 1 carries 0.18 < 0.4 → not absorbed (but silent)
    assert fa.absorbed.tolist() == [True, False, False]
    assert fa.silent.tolist() == [True, False, True]
    assert full_absorption(x, codes, W_dec, u, main=[0], min_cos=0.7).absorbed.tolist() == [False, False, False]

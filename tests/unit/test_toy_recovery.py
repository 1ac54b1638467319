"""Ground-truth recovery scores on dictionaries whose answer is known by construction."""

from __future__ import annotations

import pytest
import torch

from mechscope.toy import hungarian, mmcs, random_directions, support_scores


def test_a_permuted_rescaled_truth_is_recovered_exactly():
    truth = random_directions(32, 16, seed=1)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    dictionary = truth[perm] * 3.0
    assert mmcs(truth, dictionary) == pytest.approx(1.0, abs=1e-5)
    match = hungarian(truth, dictionary)
    assert match.fraction_above(0.9) == 1.0
    assert torch.equal(match.feature_of_latent, perm)  # latent j holds feature perm[j]


def test_a_duplicated_latent_counts_once_in_the_one_to_one_matching():
    truth = torch.eye(4)
    dictionary = torch.stack([truth[0], truth[0], truth[2], truth[3]])  # feature 1 missing, feature 0 twice
    assert mmcs(truth, dictionary) == pytest.approx(0.75)  # max cosines 1, 0, 1, 1
    match = hungarian(truth, dictionary)
    assert match.fraction_above(0.9) == pytest.approx(0.75)
    assert sorted(match.cos.tolist()) == pytest.approx([0.0, 1.0, 1.0, 1.0])


def test_support_precision_recall_f1_known_rows():
    feature_of_latent = torch.tensor([2, 0, 1, -1])  # latent 3 matches nothing
    active = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    support = torch.tensor(
        [
            [0, 1, 0, 0],  # predicts {0}: P 1, R 1/2, F1 2/3
            [0, 0, 1, 1],  # predicts {1} plus an unmatched latent: P 1/2, R 1, F1 2/3
            [1, 1, 1, 0],
        ],  # predicts {0, 1, 2}: all 1
        dtype=torch.bool,
    )
    s = support_scores(active, support, feature_of_latent)
    assert s["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert s["recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert s["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)

"""Absorption on a hand-built hierarchy whose answer is known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.evals.absorption import absorption

# Features: 0 = parent, 1 and 2 = its children, 3 = independent; orthonormal directions in R^4.
D = torch.eye(4)
PARENT = torch.tensor([-1, 0, 0, -1])
ACTIVE = torch.tensor(
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]], dtype=torch.bool
)


def test_a_dictionary_of_the_true_features_absorbs_nothing():
    got = absorption(ACTIVE.float(), D, D, ACTIVE, PARENT)
    assert got.absorbed == 0 and got.silent_on_child == 0 and got.silent_parent_only == 0
    assert got.parent_cos == pytest.approx(1.0) and got.child_rows == 3 and got.parent_only_rows == 2


def test_child_latents_that_carry_the_parent_absorb_every_child_row():
    W = torch.stack([D[0], (D[0] + D[1]) / math.sqrt(2), (D[0] + D[2]) / math.sqrt(2), D[3]])
    codes = ACTIVE.float().clone()
    on_child = ACTIVE[:, 1:3].any(1)
    codes[on_child, 0] = 0  # the parent latent is silent whenever a child is on; the child latents fire
    got = absorption(codes, W, D, ACTIVE, PARENT)
    assert got.absorbed == 1.0 and got.silent_on_child == 1.0 and got.silent_parent_only == 0.0
    # The same silence with pure child latents is a miss, not absorption: no active latent carries the parent.
    assert absorption(codes, D, D, ACTIVE, PARENT).absorbed == 0.0
    # Below the cosine threshold the carrier does not count.
    assert absorption(codes, W, D, ACTIVE, PARENT, min_cos=0.8).absorbed == 0.0


def test_half_the_child_rows_absorbed():
    W = torch.stack([D[0], (D[0] + D[1]) / math.sqrt(2), D[2], D[3]])
    codes = ACTIVE.float().clone()
    codes[ACTIVE[:, 1], 0] = 0  # absorbed where child 1 is on (rows 1 and 3); row 2 (child 2 only) keeps the parent
    got = absorption(codes, W, D, ACTIVE, PARENT)
    assert got.absorbed == pytest.approx(2 / 3) and got.silent_on_child == pytest.approx(2 / 3)


def test_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="no hierarchy"):
        absorption(ACTIVE.float(), D, D, ACTIVE, torch.full((4,), -1))
    with pytest.raises(ValueError, match="shapes disagree"):
        absorption(ACTIVE.float()[:, :3], D, D, ACTIVE, PARENT)
    with pytest.raises(ValueError, match="no row has an active child"):
        absorption(ACTIVE[[0, 4]].float(), D, D, ACTIVE[[0, 4]], PARENT)

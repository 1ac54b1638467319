"""``mechscope llc --checkpoints``: which checkpoints ``--checkpoint-stride`` keeps, and the training and
held-out accuracy recorded beside λ̂ (a tiny linear model whose checkpoints have known accuracies)."""

from __future__ import annotations

import json
import textwrap

import pytest

from mechscope.errors import UsageError
from mechscope.slt.checkpoints import every_kth
from tests.harness import run_cli


@pytest.mark.parametrize(
    "n,k,steps",
    [
        (7, 1, [0, 1, 2, 3, 4, 5, 6]),
        (7, 2, [0, 2, 4, 6]),
        (7, 3, [0, 3, 6]),
        (7, 4, [0, 4, 6]),
        (7, 10, [0, 6]),
        (4, 2, [0, 2, 3]),
        (1, 3, [0]),
        (2, 5, [0, 1]),
    ],
)
def test_every_kth_keeps_the_first_and_the_last(n, k, steps):
    ckpts = [(10 * s, lambda s=s: s) for s in reversed(range(n))]  # given in any order
    assert [s for s, _ in every_kth(ckpts, k)] == [10 * s for s in steps]


def test_every_kth_rejects_a_stride_below_one():
    with pytest.raises(UsageError, match="needs `k` ≥ 1, got 0") as err:
        every_kth([(0, lambda: None)], 0)
    assert "--" not in str(err.value)


# x = (x₀, 1) with x₀ = i − 20.5 (48 training rows, 27 with x₀ > 0) and i − 3.5 (16 held-out rows, 12 with
# x₀ > 0); the label is [x₀ > 0]. The four checkpoints of a 2 → 2 linear classifier predict: always 0, always 1,
# the label, the opposite of the label, so their accuracies are known exactly.
FOUR = textwrap.dedent("""
    import torch
    from torch import nn
    from mechscope.slt.targets import Target, argmax_accuracy, mean_cross_entropy

    def _data(n, shift):
        x = torch.stack([torch.arange(n, dtype=torch.float32) - shift, torch.ones(n)], 1)
        return x, (x[:, 0] > 0).long()

    def _linear(w, b):
        m = nn.Linear(2, 2)
        with torch.no_grad():
            m.weight.copy_(torch.tensor(w))
            m.bias.copy_(torch.tensor(b))
        return m

    STATES = {0: ([[0., 0.], [0., 0.]], [1., 0.]), 10: ([[0., 0.], [0., 0.]], [0., 1.]),
              20: ([[-1., 0.], [1., 0.]], [0., 0.]), 30: ([[1., 0.], [-1., 0.]], [0., 0.])}

    def four():
        ckpts = [(s, lambda s=s: _linear(*STATES[s])) for s in (30, 0, 20, 10)]
        return Target("four", _linear(*STATES[30]), mean_cross_entropy, _data(48, 20.5), _data(16, 3.5), ckpts,
                      argmax_accuracy)
""")

ACC = {0: (21 / 48, 4 / 16), 10: (27 / 48, 12 / 16), 20: (1.0, 1.0), 30: (0.0, 0.0)}


def test_checkpoint_stride_and_accuracies(tmp_path):
    # stride 2 of the steps (0, 10, 20, 30), given out of order: 0 and 20, and the last (30) always
    (tmp_path / "four_ckpts.py").write_text(FOUR)
    proc = run_cli(
        [
            "llc",
            "--model",
            "python:four_ckpts:four",
            "--checkpoints",
            "--checkpoint-stride",
            "2",
            "--no-calibrate",
            "--epsilon",
            "1e-4",
            "--gamma",
            "100",
            "--chains",
            "2",
            "--draws",
            "6",
            "--burn-in",
            "0",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "out"),
            "--json",
            "--no-progress",
        ],
        timeout=300,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    pts = json.loads(proc.stdout)["checkpoints"]
    assert [p["step"] for p in pts] == [0, 20, 30]
    for p in pts:
        assert (p["train_acc"], p["val_acc"]) == pytest.approx(ACC[p["step"]], abs=1e-6), p
        assert p["val_loss"] is not None and p["n_params"] == 6
    # the loss recorded is the full-data loss at the checkpoint: the correct classifier has the lowest
    by_step = {p["step"]: p for p in pts}
    assert by_step[20]["train_loss"] < by_step[0]["train_loss"] < by_step[30]["train_loss"]


def test_checkpoint_stride_below_one_is_refused_before_any_work(monkeypatch, capsys):
    # in process (a subprocess costs seconds of imports): the flag's own type refuses it, before the model is built
    import argparse

    from mechscope.cli import llc as cli
    from mechscope.slt import targets

    parser = argparse.ArgumentParser()
    cli.add_arguments_llc(parser)
    monkeypatch.setattr(targets, "load_target", lambda spec: pytest.fail("the target was built before the check"))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--model", "mlp", "--checkpoints", "--checkpoint-stride", "0"])
    assert exit_info.value.code == 2
    assert "argument --checkpoint-stride: 0 is out of range; give a value ≥ 1" in capsys.readouterr().err

"""The modadd analysis on a hand-built model with known frequencies (no zoo training): each subcomponent reads one
Fourier feature of a + b, so its frequency and purity are known exactly; program replacement keeps exactly the
chosen frequency's subcomponents."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mechscope.decompose import SPD, SPDConfig
from mechscope.decompose.analysis import Alive
from mechscope.decompose.modadd import frequencies

P, K1, K2 = 13, 2, 5


class FourierModel(nn.Module):
    """tokens "a b =" [B, 3] → features [B, 3, 4] = cos/sin(2π k (a + b)/p) for k = K1, K2 → Linear(4, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.readout = nn.Linear(4, 2, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = (tokens[:, 0] + tokens[:, 1]).float()[:, None].expand(-1, 3)
        feats = torch.stack([f(2 * math.pi * k * s / P) for k in (K1, K2) for f in (torch.cos, torch.sin)], -1)
        return self.readout(feats)


def test_frequencies_and_purity_are_exact():
    model = FourierModel()
    spd = SPD(model, SPDConfig(C=4))
    with torch.no_grad():
        spd.comp("readout").V.copy_(torch.eye(4))  # subcomponent j reads feature j
    live = Alive(tuple(("readout", j) for j in range(4)), torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4))
    got = frequencies(spd, live, P)
    assert [f["frequency"] for f in got] == [K1, K1, K2, K2]
    assert all(abs(f["purity"] - 1.0) < 1e-9 for f in got)  # all energy of cos(k(a+b)) sits at (±k, ±k)
    with torch.no_grad():
        spd.comp("readout").V.copy_(
            torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]])
        )  # V[:, 0] = e_0 + ½ e_2
    mixed = frequencies(spd, Alive((("readout", 0),), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1)), P)[0]
    assert mixed["frequency"] == K1 and abs(mixed["purity"] - 0.8) < 1e-6  # cos(K1·) + ½cos(K2·): energy 1 : ¼


def test_program_replacement_all_subcomponents_recover_everything():
    from mechscope.decompose.modadd import _grid, program_replacement
    from mechscope.task import Task

    torch.manual_seed(0)
    model = FourierModel()
    spd = SPD(model, SPDConfig(C=4))
    with torch.no_grad():  # exact decomposition: V = I, U = Wᵀ, so all four together are the weight
        spd.comp("readout").V.copy_(torch.eye(4))
        spd.comp("readout").U.copy_(model.readout.weight.T)
    x = _grid(P)
    y = model(x)[:, 2].argmax(-1)  # the model's own answers: clean loss is small, ablated is log 2
    task = Task("fourier", x, y, x, y, positions=(2,), n_classes=2)
    freqs = [{"target": "readout", "index": j, "frequency": k} for j, k in enumerate((K1, K1, K2, K2))]
    live = Alive(tuple(("readout", j) for j in range(4)), torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4))
    res = program_replacement(spd, live, freqs, task, [K1, K2])
    rows = {r["set"]: r for r in res["rows"]}
    assert abs(res["ablated_loss"] - math.log(2)) < 1e-6  # every subcomponent masked: zero logits
    assert (
        abs(rows["all alive"]["loss"] - res["clean_loss"]) < 1e-6
        and abs(rows["all alive"]["loss_recovered"] - 1) < 1e-6
    )
    assert rows[f"only k={K1}"]["subcomponents"] == 2 and rows[f"all alive but k={K1}"]["subcomponents"] == 2


STEPS_MODADD = 150  # docs/decompose.md: the loss recovered by the alive set after 100–400 steps is 0.39–0.46


@pytest.mark.slow
def test_modadd_end_to_end(zoo_modadd, one_thread):
    """SPD on the zoo's trained modular-addition model through the command's own pipeline (``decompose``: train,
    alive set, frequencies, program replacement), at a small budget. What can fail: the decomposition must mark
    most subcomponents as unneeded (at most half of the 2 × 40 alive) and splicing in only the alive ones, every
    other subcomponent masked to 0, must still recover ≥ 25% of the loss the MLP is worth on held-out pairs (a
    wrong mask, importance or splice gives a negative number: −12 with the untrained importances); each of the
    model's key frequencies must keep an alive fc_in subcomponent; every alive one must have a key frequency."""
    from mechscope.decompose.modadd import modadd_target
    from mechscope.decompose.run import decompose
    from mechscope.decompose.toys import TargetConfig

    cfg = SPDConfig(C=40, steps=STEPS_MODADD, batch_size=64)
    kt = modadd_target(TargetConfig(batch_size=cfg.batch_size))
    res, spd, log, live = decompose(kt, cfg, out=None, progress=False)
    keys = res["key_frequencies"]
    assert zoo_modadd.metrics["val_accuracy"] > 0.99 and len(keys) >= 2  # the grokked model, several frequencies
    assert 3 <= res["alive"] <= cfg.C, res["alive_per_target"]
    assert all(f["frequency"] in keys for f in res["subcomponent_frequencies"])
    for k in keys:
        assert res["components_per_frequency"].get(str(k), {}).get("blocks.0.mlp.fc_in", 0) >= 1, res[
            "components_per_frequency"
        ]
    rows = {r["set"]: r for r in res["program_replacement"]["rows"]}
    assert rows["all alive"]["subcomponents"] == res["alive"]
    assert rows["all alive"]["loss_recovered"] >= 0.25, res["program_replacement"]

"""The frontier sweep end to end on a synthetic dictionary, a shrinking SAE-like encoder, and the CLI."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
import torch

from mechscope.cli import main
from mechscope.coding import CODERS, CodingConfig, Dictionary
from mechscope.coding.frontier import FrontierConfig, frontier
from mechscope.coding.plots import save_frontier_plots
from mechscope.coding.splice import splice_loss_fn
from mechscope.evals.metrics import fvu
from mechscope.task import Task

N, D_WIDTH = 256, 32


class ShrinkingSAE(torch.nn.Module):
    """TopK-SAE stand-in: code = 0.8·ReLU(top-6 of x̃ W_enc), with a noisy W_enc so it mis-picks and shrinks."""

    def __init__(self, seed: int = 0, k: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(N, D_WIDTH, generator=g)
        self.W_dec = torch.nn.Parameter(W / W.norm(dim=1, keepdim=True))
        self.b_dec = torch.nn.Parameter(0.1 * torch.randn(D_WIDTH, generator=g))
        self.W_enc = torch.nn.Parameter((self.W_dec + 0.1 * torch.randn(N, D_WIDTH, generator=g)).T.contiguous())
        self.k = k

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, 0.8 * torch.relu(top.values))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b_dec


def data(sae: ShrinkingSAE, rows: int, k: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(rows, N)
    idx = torch.rand(rows, N, generator=g).argsort(dim=1)[:, :k]
    codes.scatter_(1, idx, 0.5 + torch.rand(rows, k, generator=g))
    return (codes @ sae.W_dec + sae.b_dec + 0.02 * torch.randn(rows, D_WIDTH, generator=g)).detach()


def test_frontier_sweep_measures_every_coder_and_plots(tmp_path):
    sae = ShrinkingSAE()
    x_eval, x_fit = data(sae, 600), data(sae, 400, seed=2)
    held = data(sae, 200, seed=3)
    calls = []

    def loss_fn(reconstruct):  # a stand-in for evals.splice: "loss" is the MSE of the reconstruction
        calls.append(1)
        mse = float(((reconstruct(held[None]) - held[None]) ** 2).mean())
        return {"loss": mse, "loss_recovered_zero": 1 - mse / float((held**2).mean())}

    cfg = FrontierConfig(l0s=(2, 4, 8), batch_size=256)
    result = frontier(
        x_eval, sae, sae.encode, cfg, CodingConfig(), x_fit, loss_fn, {"zero ablation": float((held**2).mean())}
    )

    native_l0 = round(result.native.stats["l0"])
    ks = sorted({2, 4, 8, native_l0})
    assert len(result.points) == len(ks) * len(CODERS)
    assert len(calls) == len(result.points) + 1
    assert native_l0 == 6 and result.native.stats["l0"] <= 6
    assert result.native.stats["fvu"] == pytest.approx(fvu(x_eval, sae.decode(sae.encode(x_eval))), rel=1e-6)
    for k in ks:
        at = {p.coder: p for p in result.points if p.k == k}
        assert all(p.stats["l0"] <= k + 1e-9 for p in at.values())
        assert at["encoder"].stats["l0"] <= min(k, 6)  # a TopK encoder cannot give more than its own k
        assert at["encoder"].jaccard == pytest.approx(1.0)
        # Same support, least-squares weights: the refit cannot lose to the encoder's own values.
        assert at["encoder_nnls"].stats["fvu"] <= at["encoder"].stats["fvu"] + 1e-9
        for p in at.values():
            assert 0 <= p.jaccard <= 1 and (p.span_cosine is None or 0 <= p.span_cosine <= 1)
            assert set(p.loss) == {"loss", "loss_recovered_zero"}
    # This encoder shrinks and mis-picks: at its own L0 the best pursuit beats it.
    at_native = {p.coder: p.stats["fvu"] for p in result.points if p.k == native_l0}
    assert min(at_native["omp"], at_native["gp"]) < at_native["encoder"]
    omp = [p.stats["fvu"] for p in result.curve("omp")]
    assert omp == sorted(omp, reverse=True)  # more latents, less unexplained variance

    blob = json.loads(json.dumps(result.to_dict()))
    assert blob["native"]["k"] is None and len(blob["points"]) == len(result.points)
    paths = save_frontier_plots(result, tmp_path)
    assert {p.name for p in paths} == {"fvu_vs_l0.png", "jaccard_vs_l0.png", "span_cosine_vs_l0.png", "loss_vs_l0.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_frontier_without_an_encoder_runs_the_pursuits_only():
    sae = ShrinkingSAE(seed=4)
    result = frontier(data(sae, 200), Dictionary(sae.W_dec.detach(), sae.b_dec.detach()), cfg=FrontierConfig(l0s=(3,)))
    assert {p.coder for p in result.points} == {"mp", "omp", "gp"}
    assert result.native is None and all(p.jaccard is None for p in result.points)


def test_a_topk_encoder_swept_past_its_k_through_pre_activations():
    sae = ShrinkingSAE(seed=8)
    x = data(sae, 300, seed=9)
    cfg = FrontierConfig(l0s=(12,), coders=("encoder", "gp"))
    truncated = frontier(x, sae, sae.encode, cfg)
    swept = frontier(x, sae, lambda rows: torch.relu(sae.pre_acts(rows)), cfg, native=sae.encode)
    l0 = lambda result, k: next(p.stats["l0"] for p in result.points if p.coder == "encoder" and p.k == k)  # noqa: E731
    assert l0(truncated, 12) <= 6 < 11 < l0(swept, 12)  # truncation cannot go past k=6; pre-activations can
    assert swept.native.stats == truncated.native.stats  # the native point is the SAE's own encode either way


def test_cli_reads_val_rows_to_evaluate_and_train_rows_to_fit(tmp_path, monkeypatch, capsys):
    sae = ShrinkingSAE(seed=5)
    rows = {"val": data(sae, 300, seed=6), "train": data(sae, 300, seed=7)}
    asked = []

    class FakeStore:  # the mechscope.store.ActivationStore calls run_frontier makes
        def __init__(self, path):
            self.path = path

        def site_name(self, site):  # the checks run_frontier makes before the work (mechscope.preflight)
            return site

        def d(self, site):
            return D_WIDTH

        def batches(self, site, batch_size, seed=0, start_batch=0, drop_last=True, split="train"):
            asked.append((site, split))
            return iter(rows[split][:batch_size].split(batch_size))

    monkeypatch.setattr("mechscope.store.ActivationStore", FakeStore)  # run_frontier imports both when it runs
    monkeypatch.setattr("mechscope.sae.load_sae", lambda path, **kw: sae)
    captured = {}
    monkeypatch.setattr(
        "mechscope.coding.from_store.frontier", lambda *a, **kw: captured.setdefault("result", frontier(*a, **kw))
    )
    argv = [
        "frontier",
        "--sae",
        "s",
        "--store",
        "st",
        "--site",
        "resid_post.3",
        "--out",
        str(tmp_path),
        "--l0s",
        "2",
        "4",
        "--coders",
        "encoder",
        "gp",
        "--coding-tol",
        "0.01",
        "--no-include-native-l0",
    ]
    assert main(argv) == 0
    result = captured["result"]
    assert asked == [("resid_post.3", "val"), ("resid_post.3", "train")]
    assert result.coding.tol == 0.01 and [p.k for p in result.points] == [2, 2, 4, 4]
    saved = json.loads((tmp_path / "frontier.json").read_text())
    assert saved["config"]["l0s"] == [2, 4] and not math.isnan(saved["points"][0]["stats"]["fvu"])
    assert (tmp_path / "fvu_vs_l0.png").exists()
    assert "gp" in capsys.readouterr().out


def test_splice_loss_fn_scores_reconstructions_against_the_baselines():
    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(10)
            self.embed = torch.nn.Embedding(20, D_WIDTH)
            self.mid = torch.nn.Linear(D_WIDTH, D_WIDTH)
            self.head = torch.nn.Linear(D_WIDTH, 20)
            for p in self.parameters():
                p.data = torch.randn(p.shape, generator=g)

        def forward(self, input_ids, attention_mask=None):
            return self.head(torch.tanh(self.mid(self.embed(input_ids))))

    model = TinyLM().eval()
    # Each next token is the model's own prediction, so the clean model beats zero ablation by a real gap
    # (on random tokens the gap is noise, and loss recovered is then n/a by the one zero-gap rule).
    ids = torch.empty(6, 10, dtype=torch.long)
    ids[:, 0] = torch.randint(0, 20, (6,), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        for t in range(9):
            ids[:, t + 1] = model(ids[:, t : t + 1])[:, -1].argmax(-1)
    loss_fn, baselines = splice_loss_fn(
        model, "mid", Task.next_token(ids[:0], ids, n_classes=20), mean_act=torch.zeros(D_WIDTH)
    )
    assert set(baselines) == {"clean", "zero ablation", "mean ablation", "rock"}
    identity = loss_fn(lambda x: x)
    assert identity["loss"] == pytest.approx(baselines["clean"]) and identity["loss_recovered_zero"] == pytest.approx(
        1.0
    )
    zeroed = loss_fn(torch.zeros_like)
    assert zeroed["loss"] == pytest.approx(baselines["zero ablation"]) and zeroed[
        "loss_recovered_zero"
    ] == pytest.approx(0.0)

"""Trainer: schedules, resume equals an uninterrupted run, NaN stops with the step named, sweeps share batches."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from mechscope import checkpoint
from mechscope.sae import (
    BatchTopKConfig,
    JumpReLUConfig,
    Member,
    NonFiniteError,
    OptimConfig,
    TopKConfig,
    TrainConfig,
    Trainer,
    load_sae,
    train_from_store,
)
from mechscope.sae.trainer import CHECKPOINT

D, N, B = 8, 32, 64
DATA = torch.randn(40, B, D, generator=torch.Generator().manual_seed(0)) * 3 + 1


def batches(start: int = 0, stop: int | None = None, poison: dict[int, float] | None = None):
    """Batch i is DATA[i % 40]; ``poison`` {step: value} writes value into that batch."""
    for i in itertools.count(start):
        if stop is not None and i >= stop:
            raise KeyboardInterrupt  # stands in for a killed process
        x = DATA[i % len(DATA)].clone()
        if poison and i in poison:
            x[3, 2] = poison[i]
        yield x


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


MEMBERS = [
    Member(
        TopKConfig(d_in=D, latents=4 * N, k=2, auxk_coef=0.1), OptimConfig(lr=1e-2, warmup_steps=3)
    ),  # some latents die
    Member(BatchTopKConfig(d_in=D, latents=N, k=3), OptimConfig(lr=1e-2, warmup_steps=3)),
    Member(JumpReLUConfig(d_in=D, latents=N, sparsity_coef=0.1), OptimConfig(lr=1e-2, sparsity_warmup_steps=5)),
]
CFG = TrainConfig(
    steps=14, batch_size=B, checkpoint_every=4, log_every=2, dead_window=3 * B, progress=False, device="cpu"
)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, s in enumerate(trainer.saes) for k, v in s.state_dict().items()}


def test_schedules():
    o = OptimConfig(lr=1.0, warmup_steps=4, decay="linear", decay_start=0.5, sparsity_warmup_steps=10)
    assert [o.lr_at(t, 20) for t in (0, 1, 3, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert o.lr_at(15, 20) == pytest.approx(0.5) and o.lr_at(19, 20) == pytest.approx(0.1)
    cos = OptimConfig(lr=1.0, warmup_steps=0, decay="cosine", decay_start=0.0)
    assert cos.lr_at(0, 10) == 1.0 and cos.lr_at(5, 10) == pytest.approx(0.5)
    assert o.sparsity_at(4) == 0.5 and o.sparsity_at(50) == 1.0


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path):
    whole = Trainer(MEMBERS, CFG, tmp_path / "whole")
    whole.fit(batches())
    # Killed during step 10: the checkpoint of step 8 survives, steps 9 and 10 are lost.
    cut = Trainer(MEMBERS, CFG, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        cut.fit(batches(stop=10))
    again = Trainer(MEMBERS, CFG, tmp_path / "cut")
    start = again.resume()
    assert start == 8
    again.fit(batches(start), start_step=start)
    w_whole, w_again = weights(whole), weights(again)
    assert w_whole.keys() == w_again.keys()
    for k in w_whole:
        assert torch.allclose(w_whole[k], w_again[k], atol=1e-6, rtol=1e-5), k
    # The run really moved the weights (the comparison is not between two initialisations).
    fresh = weights(Trainer(MEMBERS, CFG))
    assert not torch.allclose(fresh["0.W_dec"], w_whole["0.W_dec"], atol=1e-3)
    assert whole.scale == again.scale != 1.0
    # A trainer with other members refuses the checkpoint instead of mixing runs.
    with pytest.raises(ValueError, match="different run"):
        Trainer(MEMBERS[:1], CFG, tmp_path / "cut").resume()


def test_nan_in_a_batch_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(MEMBERS[:1], CFG, tmp_path)
    with pytest.raises(NonFiniteError, match=r"step 9: the batch contains NaN") as err:
        trainer.fit(batches(poison={9: float("nan")}))
    assert str(tmp_path / CHECKPOINT) in str(err.value)
    _, meta = checkpoint.read(tmp_path / CHECKPOINT)
    assert meta["step"] == 8
    resumed = Trainer(MEMBERS[:1], CFG, tmp_path)
    assert resumed.resume() == 8


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    trainer = Trainer(MEMBERS[:1], CFG, tmp_path)
    it = batches()
    trainer.fit(itertools.islice(it, 5))  # five good steps (checkpoint at 4 and at the end, 5)
    with torch.no_grad():
        trainer.saes[0].W_dec[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"step 5: loss of SAE 'topk' is (nan|inf)"):
        trainer.fit(it, start_step=5)
    _, meta = checkpoint.read(tmp_path / CHECKPOINT)
    assert meta["step"] == 5


def test_a_sweep_equals_its_members_trained_alone(tmp_path):
    together = Trainer(MEMBERS[:2], CFG)
    together.fit(batches())
    for i, m in enumerate(MEMBERS[:2]):
        alone = Trainer([m], TrainConfig(**{**CFG.__dict__, "seed": CFG.seed + i}))
        alone.fit(batches())
        for k, v in alone.saes[0].state_dict().items():
            assert torch.allclose(v, together.saes[i].state_dict()[k], atol=1e-6), (i, k)


def test_saved_sae_reads_raw_activations(tmp_path):
    trainer = Trainer(MEMBERS[:1], CFG, tmp_path)
    trainer.fit(batches())
    (folder,) = trainer.save()
    assert folder == tmp_path / "topk" and (folder / "cfg.json").exists()
    sae = load_sae(folder)
    x = DATA[0]
    inner = trainer.saes[0].eval()
    with torch.no_grad():
        want = inner.decode(inner.encode(x * trainer.scale)) / trainer.scale
        assert torch.allclose(sae.decode(sae.encode(x)), want, atol=1e-4)
    assert Path(tmp_path / "train_log.jsonl").read_text().count("\n") >= CFG.steps // CFG.log_every


def test_default_dead_window_follows_the_run_so_auxk_runs_and_dead_is_logged():
    """A 40-step run of 64-row batches sees 2,560 rows, far below the paper's 10M: the window must shrink."""
    cfg = TrainConfig(steps=40, batch_size=B, log_every=5, checkpoint_every=0, progress=False, device="cpu")
    assert cfg.resolved_dead_window() == 40 * B // 4
    assert TrainConfig(steps=10**6, batch_size=4096).resolved_dead_window() == 10_000_000
    assert TrainConfig(steps=2, batch_size=B).resolved_dead_window() == 2 * B  # never longer than the run
    wide = Member(TopKConfig(d_in=D, latents=1024, k=1, auxk_coef=0.1), OptimConfig(lr=1e-2, warmup_steps=3))
    trainer = Trainer([wide], cfg)  # 1024 latents, one per row: most cannot fire within 640 rows
    history = trainer.fit(batches())
    dead = [line["members"]["topk"]["dead"] for line in history if "members" in line]
    auxk = [line["members"]["topk"].get("auxk") for line in history if "members" in line]
    assert max(dead) > 0.1, dead
    assert any(a is not None and a > 0 for a in auxk), auxk


def test_a_dead_window_longer_than_the_run_is_reported(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=B, dead_window=10_000, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="longer than the run"):
        trainer = Trainer(MEMBERS[:1], cfg, tmp_path)
    trainer.fit(batches())
    first = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[0])
    assert "longer than the run" in first["note"]


def test_resume_logs_each_step_once_and_removes_stale_temporaries(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "log_every": 1})
    cut = Trainer(MEMBERS, cfg, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cut.fit(batches(stop=10))  # steps 9 and 10 are logged, then lost with the kill
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"step": 10, "rows_')  # torn by the kill
    stale = [tmp_path / "checkpoint.safetensors.x1.tmp", tmp_path / "topk" / "sae.safetensors.x2.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    again = Trainer(MEMBERS, cfg, tmp_path)
    start = again.resume()
    assert not any(p.exists() for p in stale)
    again.fit(batches(start), start_step=start)
    again.save()
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, CFG.steps + 1))
    assert not list(tmp_path.rglob("*.tmp"))


class FakeStore:
    """The part of ActivationStore that train_from_store reads; ``val`` is the list of held-out batches."""

    path = "fake-store"

    def __init__(self, val: list[torch.Tensor]):
        self.val = val

    def d(self, site):
        return D

    def n_rows(self, split="train"):
        return sum(len(v) for v in self.val) if split == "val" else len(DATA) * B

    def batches(self, site, batch_size, seed=0, start_batch=0, drop_last=True, split="train", epochs=1):
        return iter(self.val) if split == "val" else batches(start_batch)


def test_train_from_store_surfaces_evaluation_errors_naming_the_step_and_file(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=B, progress=False, device="cpu")
    wrong_width = [torch.randn(B, D + 1)]
    with pytest.raises(RuntimeError) as err:
        train_from_store(FakeStore(wrong_width), "s", MEMBERS[:1], cfg, tmp_path)
    note = " ".join(getattr(err.value, "__notes__", []))
    assert str(tmp_path / "topk") in note and "step 3" in note
    assert not (tmp_path / "topk" / "eval.json").exists()


def test_train_from_store_evaluation_errors_on_python_3_10_keep_their_type_and_warn_the_note(tmp_path, monkeypatch):
    # Exceptions have no add_note before 3.11 (requires-python is >=3.10): the error must still surface as
    # itself, not as an AttributeError, with the note said as a warning.
    from types import SimpleNamespace

    from mechscope.sae import from_store

    monkeypatch.setattr(from_store, "sys", SimpleNamespace(version_info=(3, 10, 0)))
    cfg = TrainConfig(steps=3, batch_size=B, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="step 3") as warned, pytest.raises(RuntimeError):
        train_from_store(FakeStore([torch.randn(B, D + 1)]), "s", MEMBERS[:1], cfg, tmp_path)
    assert any(str(tmp_path / "topk") in str(w.message) for w in warned)


def test_train_from_store_without_held_out_rows_says_so_and_writes_no_eval(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=B, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="no held-out rows"):
        assert train_from_store(FakeStore([]), "s", MEMBERS[:1], cfg, tmp_path) == {}
    assert (tmp_path / "topk" / "sae.safetensors").exists() and not (tmp_path / "topk" / "eval.json").exists()
    good = train_from_store(FakeStore([DATA[0]]), "s", MEMBERS[:1], cfg, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "topk" / "eval.json").read_text()) == good["topk"]

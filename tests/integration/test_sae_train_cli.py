"""`mechscope train` on a real (tiny) activation store: kill -9 mid-run, re-run the same command, and
end with the weights of an uninterrupted run; the saved SAE reads raw activations."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mechscope.checkpoint import read
from mechscope.cli.train import add_train_arguments, run_train
from mechscope.data.text import TextCorpusConfig
from mechscope.errors import UsageError
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import load_sae
from mechscope.store import ActivationStore
from tests.harness import SMALL_TEXT

STEPS = 150


@pytest.fixture(scope="module")
def store_dir(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae-store") / "store"
    harvest(
        HarvestConfig(sites=("resid_post.1",), tokens=3000, val_tokens=300, batch_contexts=4, shard_contexts=8),
        TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1),
        out,
        loaded=tiny_lm,
        progress=False,
    )
    return out


def flags(store, out) -> list[str]:
    return [
        "--store",
        str(store),
        "--site",
        "resid_post.1",
        "--out",
        str(out),
        "--arch",
        "topk",
        "--latents",
        "128",
        "--k",
        "8",
        "--steps",
        str(STEPS),
        "--batch-size",
        "64",
        "--checkpoint-every",
        "10",
        "--log-every",
        "50",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "10",
        "--no-progress",
        "--device",
        "cpu",
    ]


def test_kill_and_rerun_resumes_to_the_uninterrupted_weights(store_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below (OMP_NUM_THREADS=1): tiny matrices, a shared machine
    try:
        assert run_train(parser.parse_args(flags(store_dir, tmp_path / "whole"))) == 0
    finally:
        torch.set_num_threads(threads)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["sae"] == "topk" and 0 < line["fvu"] < 1 and line["l0"] <= 8

    cmd = [sys.executable, "-m", "mechscope.cli", "train", *flags(store_dir, tmp_path / "cut")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = read(ckpt)
    assert 0 < meta["step"] < STEPS, "the run ended before it could be killed"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    whole = load_file(str(tmp_path / "whole" / "topk" / "sae.safetensors"))
    again = load_file(str(tmp_path / "cut" / "topk" / "sae.safetensors"))
    for key in whole:
        assert torch.allclose(whole[key], again[key], atol=1e-5, rtol=1e-4), key

    # The saved SAE works on raw store rows and matches its eval.json.
    sae = load_sae(tmp_path / "cut" / "topk")
    x = ActivationStore(store_dir).rows("resid_post.1", 0, 256, split="val")
    with torch.no_grad():
        err = float((sae.decode(sae.encode(x)) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert err < 0.9
    assert json.loads((tmp_path / "cut" / "topk" / "eval.json").read_text())["fvu"] == pytest.approx(
        line["fvu"], rel=1e-3
    )


def test_flags_of_another_architecture_are_refused(store_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args([*flags(store_dir, tmp_path), "--arch", "relu"])
    with pytest.raises(UsageError, match="--k"):
        run_train(args)


def test_online_batches_from_a_model_resume_exactly_and_train(tiny_lm):
    from itertools import islice

    from mechscope.sae import Member, TopKConfig, TrainConfig, Trainer
    from mechscope.sae.online import model_batches
    from mechscope.sites import capture

    g = torch.Generator().manual_seed(0)
    contexts = torch.randint(0, 1000, (12, 16), generator=g)
    stream = list(islice(model_batches(tiny_lm.model, "resid_post.1", contexts, 40, seed=3, contexts_per_forward=5), 8))
    resumed = list(
        islice(
            model_batches(tiny_lm.model, "resid_post.1", contexts, 40, seed=3, start_batch=5, contexts_per_forward=5), 3
        )
    )
    for a, b in zip(stream[5:], resumed):
        assert torch.equal(a, b)
    # Every row is a real activation of the site (position ≥ 1 of some context).
    with torch.no_grad(), capture(tiny_lm.model, "resid_post.1") as acts:
        tiny_lm.model(contexts)
    real = acts["model.layers.1"][:, 1:].reshape(-1, 64)
    dist = torch.cdist(stream[0], real).min(1).values
    assert float(dist.max()) < 1e-3 * float(real.norm(dim=1).mean())  # batching changes the last bits only
    trainer = Trainer(
        [Member(TopKConfig(d_in=64, latents=64, k=4))],
        TrainConfig(steps=4, batch_size=40, progress=False, device="cpu"),
    )
    trainer.fit(model_batches(tiny_lm.model, "resid_post.1", contexts, 40))
    assert trainer.step == 4

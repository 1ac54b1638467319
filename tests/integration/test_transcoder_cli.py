"""`mechscope train --site mlp_in.1 --target-site mlp_out.1 --arch transcoder` on a real (tiny) store,
resumed mid-run to the weights of an uninterrupted run; the saved transcoder predicts the raw target
site; `mechscope evaluate` splices it in place of the MLP; the flags that make no sense are refused."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from mechscope.cli import evaluate as evaluate_cmd
from mechscope.cli.train import add_train_arguments, run_train
from mechscope.data.text import TextCorpusConfig
from mechscope.errors import UsageError
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae import load_sae
from mechscope.store import ActivationStore
from tests.harness import SMALL_TEXT


@pytest.fixture(scope="module")
def store_dir(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("tc-store") / "store"
    harvest(
        HarvestConfig(sites=("mlp_in.1", "mlp_out.1"), tokens=3000, val_tokens=300, batch_contexts=4, shard_contexts=8),
        TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1),
        out,
        loaded=tiny_lm,
        progress=False,
    )
    return out


def _args(store, out, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(
        [
            "--store",
            str(store),
            "--site",
            "mlp_in.1",
            "--target-site",
            "mlp_out.1",
            "--out",
            str(out),
            "--arch",
            "skip_transcoder",
            "--latents",
            "96",
            "--k",
            "8",
            "--batch-size",
            "64",
            "--checkpoint-every",
            "10",
            "--log-every",
            "20",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "10",
            "--no-progress",
            "--device",
            "cpu",
            *extra,
            # no lr decay and a fixed dead window: a run of 30 steps then resumed to 60 is a run of 60
            "--decay",
            "none",
            "--dead-window",
            "640",
        ]
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_train_resume_predict_and_splice(store_dir, tiny_lm_dir, tmp_path, capsys):
    assert run_train(_args(store_dir, tmp_path / "whole", "--steps", "60")) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Stopped at 30, then the same command with --steps 60 resumes (scales and all) from the checkpoint.
    assert run_train(_args(store_dir, tmp_path / "cut", "--steps", "30")) == 0
    assert run_train(_args(store_dir, tmp_path / "cut", "--steps", "60")) == 0
    whole = load_file(str(tmp_path / "whole" / "skip_transcoder" / "sae.safetensors"))
    again = load_file(str(tmp_path / "cut" / "skip_transcoder" / "sae.safetensors"))
    for key in whole:
        assert torch.allclose(whole[key], again[key], atol=1e-5, rtol=1e-4), key

    folder = tmp_path / "whole" / "skip_transcoder"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["site"] == "mlp_in.1" and cfg["metadata"]["target_site"] == "mlp_out.1"
    assert cfg["metadata"]["target_scale"] != cfg["metadata"]["input_scale"]  # the halves were scaled apart
    tc, store = load_sae(folder), ActivationStore(store_dir)
    x, y = store.rows("mlp_in.1", 0, 256, split="val"), store.rows("mlp_out.1", 0, 256, split="val")
    with torch.no_grad():
        fvu = float((tc.predict(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert fvu < 0.8  # it learned the MLP somewhat in 60 steps on raw rows (the folds are right)
    assert json.loads((folder / "eval.json").read_text())["fvu"] == pytest.approx(line["fvu"], rel=1e-3)

    parser = argparse.ArgumentParser()
    evaluate_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            "--sae",
            str(folder),
            "--store",
            str(store_dir),
            "--site",
            "mlp_in.1",
            "--model",
            str(tiny_lm_dir),
            "--contexts",
            "6",
            "--rows",
            "2000",
            "--mean-rows",
            "2000",
            "--json",
        ]
    )
    res = evaluate_cmd._evaluate(
        args,
        evaluate_cmd.from_namespace(evaluate_cmd.EvaluateConfig, args),
        evaluate_cmd.from_namespace(evaluate_cmd.RunOn, args),
    )
    splice = res["splice"]
    assert splice["site"] == "model.layers.1.mlp"  # the MLP's output is what was replaced
    assert res["reconstruction"]["fvu"] == pytest.approx(line["fvu"], rel=0.2)
    assert splice["reconstruction"]["fvu"] < 0.9
    assert splice["zero_loss"] != splice["clean_loss"]


def test_nonsense_flags_are_refused(store_dir, tmp_path):
    no_target = _args(store_dir, tmp_path / "a", "--steps", "2")
    no_target.target_site = None
    with pytest.raises(UsageError, match="--target-site"):
        run_train(no_target)
    sae_with_target = _args(store_dir, tmp_path / "b", "--steps", "2")
    sae_with_target.arch = "topk"
    with pytest.raises(UsageError, match="transcoder"):
        run_train(sae_with_target)


def test_a_crosscoder_trains_on_comma_separated_sites(store_dir, tiny_lm_dir, tmp_path, capsys):
    args = _args(store_dir, tmp_path / "cc", "--steps", "20")
    args.site, args.target_site, args.arch = "mlp_in.1,mlp_out.1", None, "crosscoder"
    assert run_train(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cc = load_sae(tmp_path / "cc" / "crosscoder")
    assert cc.cfg.sites == 2 and cc.cfg.d_in == 128 and cc.site_decoder_norms().shape == (96, 2)
    meta = json.loads((tmp_path / "cc" / "crosscoder" / "cfg.json").read_text())["metadata"]
    assert meta["site"] == ["mlp_in.1", "mlp_out.1"] and 0 < line["fvu"] < 1.5
    parser = argparse.ArgumentParser()
    evaluate_cmd.add_arguments(parser)
    ev = parser.parse_args(
        [
            "--sae",
            str(tmp_path / "cc" / "crosscoder"),
            "--store",
            str(store_dir),
            "--site",
            "mlp_in.1",
            "--model",
            str(tiny_lm_dir),
        ]
    )
    with pytest.raises(UsageError, match="crosscoder"):
        evaluate_cmd._evaluate(
            ev,
            evaluate_cmd.from_namespace(evaluate_cmd.EvaluateConfig, ev),
            evaluate_cmd.from_namespace(evaluate_cmd.RunOn, ev),
        )

"""One resolver for model specs: embedded names, local folders, and hub ids read from a Hugging Face
cache laid out locally (the network is never used), on a device and in a dtype the caller names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.models import load_model
from mechscope.models.loading import ModelNotFoundError, resolve_device, resolve_dtype

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_tokenizer):
    """A Hugging Face hub cache holding one tiny Llama, laid out as huggingface_hub writes it:
    models--ORG--NAME/{refs/main, snapshots/<commit>/…}."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    cache = tmp_path_factory.mktemp("hf-hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snap = repo / "snapshots" / commit
    LlamaForCausalLM(cfg).save_pretrained(snap)
    tok.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_hub_id_loads_from_the_local_cache(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    lm = load_model(REPO)
    assert lm.model_id == REPO and lm.model.config.num_hidden_layers == 2
    assert lm.path is not None and lm.path.parent.name == "snapshots"
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())


def test_missing_hub_id_names_the_cache_and_the_fix(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    with pytest.raises(
        ModelNotFoundError, match=r"'tiny-org/absent' is not in the Hugging Face cache .*hf download tiny-org/absent"
    ):
        load_model("tiny-org/absent")


@pytest.mark.slow  # the real command line in a subprocess
def test_cli_harvests_a_cached_hub_model_offline(hub_cache, tmp_path):
    """The real user path: HF_HUB_CACHE set, network off, a hub id on the command line."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "store"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechscope.cli",
            "harvest",
            "--model",
            REPO,
            "--site",
            "resid_post.1",
            "--tokens",
            "256",
            "--val-tokens",
            "64",
            "--context-length",
            "32",
            "--batch-contexts",
            "4",
            "--shard-contexts",
            "4",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from mechscope.store import ActivationStore

    store = ActivationStore(out)
    assert REPO in json.dumps(store.manifest) and store.d(store.site_name("resid_post.1")) == 32


@pytest.mark.parametrize(
    "spec, says",
    [
        ("no-such-model", "is not an embedded model"),
        ("./no/such/folder", "no such folder"),
        ("/abs/missing", "no such folder"),
    ],
)
def test_unknown_spec_is_one_clear_error(spec, says):
    with pytest.raises(ModelNotFoundError, match=f"{says}.*hub id"):
        load_model(spec)


def test_a_file_is_not_a_model(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_model(str(f))


def test_device_and_dtype_resolution():
    assert resolve_dtype(None) == torch.float32 and resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(UsageError, match="`dtype` 'float8'"):
        resolve_dtype("float8")
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="`device` cuda"):
            resolve_device("cuda")
    with pytest.raises(UsageError, match="not a torch device"):
        resolve_device("gpu0")


def test_dtype_reaches_the_model(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    lm = load_model(REPO, dtype="bfloat16", device="cpu")
    assert next(lm.model.parameters()).dtype == torch.bfloat16 and lm.device == torch.device("cpu")

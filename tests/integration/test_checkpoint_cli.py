"""`mechscope train` refuses a damaged checkpoint in its --out folder with one line naming the file
(truncated, or one flipped exponent bit in W_dec), instead of a bare safetensors error or a resume
from corrupt weights (issue 8, items 17 and 19)."""

from __future__ import annotations

import json
import struct

import pytest

from mechscope.cli import main
from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest
from tests.harness import SMALL_TEXT


@pytest.fixture(scope="module")
def store_dir(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt-store") / "store"
    harvest(
        HarvestConfig(sites=("resid_post.1",), tokens=1500, val_tokens=300, batch_contexts=4, shard_contexts=8),
        TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1),
        out,
        loaded=tiny_lm,
        progress=False,
    )
    return out


def _train(store, out, steps: int) -> list[str]:
    return [
        "train",
        "--store",
        str(store),
        "--site",
        "resid_post.1",
        "--out",
        str(out),
        "--arch",
        "topk",
        "--latents",
        "64",
        "--k",
        "4",
        "--steps",
        str(steps),
        "--batch-size",
        "32",
        "--checkpoint-every",
        "5",
        "--no-progress",
        "--device",
        "cpu",
    ]


def _flip_first_w_dec_exponent(path) -> None:
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    name = next(k for k in json.loads(raw[8 : 8 + n]) if k.endswith("sae.W_dec"))
    at = 8 + n + json.loads(raw[8 : 8 + n])[name]["data_offsets"][0]
    raw[at + 3] ^= 0x40
    path.write_bytes(bytes(raw))


def _error_line(capsys) -> str:
    """The one ``mechscope: error:`` line on stderr (other notes may precede it; no traceback)."""
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if ": error:" in l]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_train_refuses_a_truncated_or_bit_flipped_checkpoint_in_one_line(store_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(_train(store_dir, out, 5)) == 0
    ckpt = out / "checkpoint.safetensors"
    good = ckpt.read_bytes()
    capsys.readouterr()

    _flip_first_w_dec_exponent(ckpt)
    assert main(_train(store_dir, out, 10)) == 1
    line = _error_line(capsys)  # the library's fix names `out`; the command shows its flag
    assert line.startswith(f"mechscope: error: {ckpt}: tensor digest mismatch") and line.endswith(
        "another --out folder"
    ), line

    ckpt.write_bytes(good[: len(good) // 3])
    assert main(_train(store_dir, out, 10)) == 1
    assert _error_line(capsys).startswith(f"mechscope: error: {ckpt}: checkpoint is truncated")

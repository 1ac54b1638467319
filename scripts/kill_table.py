"""Kill -9 / resume table: kill real `mechscope harvest` and `mechscope train` runs at chosen moments, re-run
the same command, and check that the result is byte-identical to an uninterrupted run.

    .venv/bin/python scripts/kill_table.py            # prints one JSON line, rewrites docs/kill-resume.md

Moments are named fault points (mechscope.faults: the process sends itself SIGKILL there, e.g. between a
shard's rename and the manifest that lists it) plus one kill from outside on a progress count. Uses a
tiny random Llama over SmolLM2's tokenizer (as the tests do) so that the whole table takes minutes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' harness (tests.harness)
from tests.harness import SMALL_TEXT, describe_output, file_digests, kill_and_resume, train_result_digests  # noqa: E402

HARVEST_FAULTS = {
    "harvest.before_shard@1": "first shard computed, nothing written yet",
    "atomic:train-00003.safetensors@1": "inside the 4th shard's atomic write (temporary file complete, not renamed)",
    "harvest.shard_saved@6": "6th shard renamed into place, manifest does not list it yet",
    "atomic:manifest.json@9": "inside the manifest write after the 9th shard (old manifest still in place)",
    "harvest.manifest_written@12": "just after the manifest lists 12 shards",
    "atomic:val-00000.safetensors@1": "inside the first held-out shard's write",
    "harvest.before_final_manifest@1": "every shard written, final (complete) manifest not yet",
    "atomic:manifest.json@28": "inside the final manifest write",
}
TRAIN_FAULTS = {
    "train.step@5": "step 5, before the first checkpoint",
    "atomic:checkpoint.safetensors@1": "inside the first checkpoint write (step 10)",
    "train.step@47": "step 47, between checkpoints 40 and 50",
    "atomic:checkpoint.safetensors@9": "inside the checkpoint write of step 90",
    "train.step@150": "last step done, its checkpoint not written",
    "atomic:checkpoint.safetensors@16": "inside the final checkpoint write (after the loop)",
    "atomic:sae.safetensors@1": "inside the final SAE weights write",
    "atomic:cfg.json@1": "SAE weights saved, inside its cfg.json write",
}


def tiny_llama(folder: Path) -> Path:
    """A 3-layer random Llama (width 64) over SmolLM2's vocabulary, saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechscope.models import load_model

    tok = load_model("smollm2").tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def harvest_argv(model: Path, out: Path) -> list[str]:
    return [
        "harvest",
        "--model",
        str(model),
        "--site",
        "resid_post.1",
        "--tokens",
        "6000",
        "--val-tokens",
        "300",
        "--batch-contexts",
        "4",
        "--shard-contexts",
        "8",
        "--source",
        SMALL_TEXT,
        "--context-length",
        "32",
        "--val-fraction",
        "0.1",
        "--out",
        str(out),
    ]


def train_argv(store: Path, out: Path) -> list[str]:
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
        "128",
        "--k",
        "8",
        "--steps",
        "150",
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


train_result = train_result_digests


def outside_kill(argv: list[str], out: Path, ready) -> str:
    """Start a fresh process, SIGKILL it from outside once ``ready(out)``, return what it left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechscope.cli", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not ready(out):
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not alive:
        raise RuntimeError("the run ended before the outside kill")
    return describe_output(out)


def _manifest_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _checkpoint_step(out: Path) -> int:
    from mechscope.checkpoint import read

    try:
        return int(read(out / "checkpoint.safetensors")[1]["step"])
    except Exception:  # not there yet, or being replaced at this instant
        return 0


def main() -> None:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_llama(root / "tiny-llama")
        (root / "harvest").mkdir()
        (root / "train").mkdir()
        h_rows = kill_and_resume(
            lambda o: harvest_argv(model, o), root / "harvest", list(HARVEST_FAULTS), file_digests, describe_output
        )
        store = root / "harvest" / "whole"
        t_rows = kill_and_resume(
            lambda o: train_argv(store, o), root / "train", list(TRAIN_FAULTS), train_result, describe_output
        )

        # One kill from outside each, on a progress count, then the same comparison.
        from tests.harness import run_cli

        extra = []
        for kind, argv, ready, result, want, what in [
            (
                "harvest",
                lambda o: harvest_argv(model, o),
                lambda o: _manifest_shards(o) >= 5,
                file_digests,
                file_digests(store),
                "outside SIGKILL once the manifest lists ≥ 5 shards",
            ),
            (
                "train",
                lambda o: train_argv(store, o),
                lambda o: _checkpoint_step(o) >= 30,
                train_result,
                train_result(root / "train" / "whole"),
                "outside SIGKILL once the checkpoint is at step ≥ 30",
            ),
        ]:
            out = root / kind / "outside"
            disk = outside_kill(argv(out), out, ready)
            again = run_cli(argv(out))
            got = result(out) if again.returncode == 0 else {}
            extra.append(
                (
                    kind,
                    {
                        "fault": what,
                        "killed": True,
                        "on_disk": disk,
                        "resumed_rc": again.returncode,
                        "identical": got == want,
                        "digest": _short(got),
                        "stderr": again.stderr[-2000:] if again.returncode else "",
                    },
                )
            )
        whole = {"harvest": _short(file_digests(store)), "train": _short(train_result(root / "train" / "whole"))}

    table = [("harvest", r) for r in h_rows] + [("train", r) for r in t_rows] + extra
    write_doc(table, whole, time.time() - t0)
    print(
        json.dumps(
            {
                "bench": "kill_table",
                "rows": len(table),
                "identical": sum(r["identical"] for _, r in table),
                "killed": sum(r["killed"] for _, r in table),
                "seconds": round(time.time() - t0, 1),
                "failures": [r for _, r in table if not (r["identical"] and r["killed"])],
            }
        )
    )


def _short(digests: dict[str, str]) -> str:
    from tests.harness import _combined

    return _combined(digests)


def write_doc(table, whole: dict[str, str], seconds: float) -> None:
    descriptions = {**HARVEST_FAULTS, **TRAIN_FAULTS}
    lines = [
        "# Kill -9 and resume",
        "",
        "Each row kills a real `mechscope harvest` or `mechscope train` process with SIGKILL at one moment, then runs",
        "the same command again and compares the result with an uninterrupted run: every file of the store (sha256",
        "of each shard and of the manifest) for harvest; for train, the saved SAE's `cfg.json` and `eval.json`",
        "byte for byte, and the content of `sae.safetensors` and of the final `checkpoint.safetensors` (every tensor",
        "and every metadata item; `tests.harness.train_result_digests`), the checkpoint without `rng.torch`",
        "and the tensor digest that covers it. `rng.torch` is the interpreter's global RNG state, which no training",
        "step draws from and which differs between a fresh interpreter and one that imported other modules first.",
        "Safetensors files are compared by content, not bytes, because safetensors writes metadata keys in the",
        "order of a Rust HashMap, which changes from process to process. *digest* is a sha256 over those; the",
        f"uninterrupted runs give harvest `{whole['harvest']}` and train `{whole['train']}`.",
        "",
        "Moments named `name@n` are fault points (`mechscope.faults`): with `MECHSCOPE_FAULT=name@n` the process",
        "sends itself SIGKILL at the n-th pass, which is what an outside `kill -9` landing there does; `atomic:FILE`",
        "is inside `mechscope.atomic`'s write of FILE, after the temporary file is complete and before the rename.",
        "The last row of each part is killed from outside on a progress count.",
        "",
        "Setup: a 3-layer random Llama (width 64) over SmolLM2's tokenizer; harvest of `resid_post.1`, 6,000 + 300",
        "tokens in shards of 8 contexts (25 training + 2 held-out shards); train of a TopK SAE (128 latents, k=8),",
        "150 steps of 64 rows, a checkpoint every 10 steps. Regenerate with `.venv/bin/python scripts/kill_table.py`;",
        "`tests/integration/test_kill_resume.py` repeats six of these rows in CI.",
        "",
        f"Generated {datetime.date.today().isoformat()} on {platform.machine()} ({os.cpu_count()} cores, shared), "
        f"torch {torch.__version__}, in {seconds:.0f} s.",
        "",
        "| stage | kill point | what was on disk after the kill | resumed | identical | digest |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in table:
        point = f"`{r['fault']}`: {descriptions[r['fault']]}" if r["fault"] in descriptions else r["fault"]
        killed = "" if r["killed"] else " (NOT killed)"
        lines.append(
            f"| {kind} | {point}{killed} | {r['on_disk']} | exit {r['resumed_rc']} | {'yes' if r['identical'] else 'NO'} | `{r['digest']}` |"
        )
    tmp_rows = [r for _, r in table if "*.tmp" in r["on_disk"]]
    lines += ["", f"{len(tmp_rows)} of {len(table)} kills left a `*.tmp` file; harvest sweeps its own on the next run."]
    (ROOT / "docs" / "kill-resume.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

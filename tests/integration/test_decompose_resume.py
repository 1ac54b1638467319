"""``mechscope decompose`` resumes exactly: its loss log (spd-log.jsonl) is appended as training goes and cut back to
the checkpoint's step on resume, so a killed and resumed run ends with the log, the numbers and the weights of an
uninterrupted one (issue 24, item 14)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mechscope.decompose import SPD, SPDConfig, train_spd
from mechscope.decompose.train import CHECKPOINT, LOG
from tests.harness import kill_and_resume, safetensors_content_digest


def _task():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([1.0, 2.0, 3.0])))

    def batch(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        return torch.rand(32, 3, generator=g) * (torch.rand(32, 3, generator=g) < 0.3)

    return model, batch, SPDConfig(C=4, steps=12, warmup_steps=5, checkpoint_every=5, batch_size=32)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_is_written_as_training_goes_and_cut_back_on_resume(tmp_path):
    model, batch, cfg = _task()
    whole = train_spd(SPD(model, cfg), batch, out=tmp_path / "whole", log_every=2)
    assert [r["step"] for r in whole] == [0, 2, 4, 6, 8, 10, 11]
    assert _rows(tmp_path / "whole" / LOG) == whole

    def killed_at_7(step: int) -> torch.Tensor:
        if step == 7:
            raise KeyboardInterrupt
        return batch(step)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_spd(SPD(model, cfg), killed_at_7, out=cut, log_every=2)
    assert [r["step"] for r in _rows(cut / LOG)] == [0, 2, 4, 6]  # on disk before the end; checkpoint at step 5
    with open(cut / LOG, "a") as f:
        f.write('{"step": 8, "loss"')  # a line torn by a kill
    resumed = train_spd(SPD(model, cfg), batch, out=cut, log_every=2)
    assert resumed == whole  # rows 0-4 read back, 6 replayed once, the torn line gone
    assert (cut / LOG).read_bytes() == (tmp_path / "whole" / LOG).read_bytes()
    again = train_spd(SPD(model, cfg), batch, out=cut, log_every=2)  # the finished run re-run: nothing to train
    assert again == whole and (cut / LOG).read_bytes() == (tmp_path / "whole" / LOG).read_bytes()


def decompose_argv(out: Path) -> list[str]:
    return [
        "decompose",
        "--model",
        "toy:tms",
        "--toy-steps",
        "50",
        "--steps",
        "30",
        "--warmup-steps",
        "5",
        "--batch-size",
        "64",
        "--n-eval",
        "256",
        "--checkpoint-every",
        "10",
        "--restarts",
        "1",
        "--out",
        str(out),
    ]


def decompose_result(out: Path) -> dict[str, str]:
    """What a resumed run must reproduce: the log's bytes, decompose.json without its wall time, the final
    weights (checkpoint content), and whether the loss plot exists."""
    got = {}
    if (out / LOG).is_file():
        got[LOG] = hashlib.sha256((out / LOG).read_bytes()).hexdigest()
    if (out / "decompose.json").is_file():
        res = json.loads((out / "decompose.json").read_text())
        res.pop("seconds", None)
        got["decompose.json"] = json.dumps(res, sort_keys=True)
    if (out / CHECKPOINT).is_file():
        got[CHECKPOINT] = safetensors_content_digest(out / CHECKPOINT)
    got["losses.png"] = str((out / "losses.png").is_file())
    return got


def describe(out: Path) -> str:
    from mechscope.checkpoint import read

    if not out.exists():
        return "no folder"
    parts = [f"checkpoint at step {read(out / CHECKPOINT)[1]['step']}"] if (out / CHECKPOINT).is_file() else []
    if (out / LOG).is_file():
        parts.append(
            f"log steps {[json.loads(l)['step'] for l in (out / LOG).read_text().splitlines() if l.endswith('}')]}"
        )
    return "; ".join(parts) or "empty folder"


@pytest.mark.slow
def test_killed_decompose_resumes_to_the_uninterrupted_log_and_weights(tmp_path):
    # 30 steps, logged at steps 0 and 29, checkpoints at 10, 20, 30 and once more at the end (the 4th write).
    rows = kill_and_resume(
        decompose_argv,
        tmp_path,
        ["decompose.step@15", "decompose.step@30", "atomic:spd-checkpoint.safetensors@4", "atomic:decompose.json@1"],
        decompose_result,
        describe,
    )
    for r in rows:
        assert r["killed"], f"{r['fault']}: the run was not killed there"
        assert r["resumed_rc"] == 0, f"{r['fault']}: the re-run failed\n{r['stderr']}"
        assert r["identical"], (
            f"{r['fault']}: resumed to a different result (left on disk: {r['on_disk']}); {r['diff']}"
        )
    assert rows[0]["on_disk"] == "checkpoint at step 10; log steps [0]"
    assert rows[1]["on_disk"] == "checkpoint at step 20; log steps [0, 29]"  # step 29 is logged again after the resume
    assert rows[2]["on_disk"].startswith("checkpoint at step 30; log steps [0, 29]")  # killed after the last checkpoint
    whole = json.loads((tmp_path / "whole" / "decompose.json").read_text())
    assert whole["final_losses"] is not None and (tmp_path / "whole" / "losses.png").is_file()

"""A few of scripts/campaign.py's cases in CI: its damage is what it claims, its classes follow the rules in
docs/campaign.md, and its runner (fork server, a SIGKILL at a moment, stray temporaries) works on real
`mechscope toy tms` runs. The full campaign runs for many minutes; this keeps its instrument honest."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError, safe_open

from mechscope.atomic import save_safetensors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from campaign import Runner, classify_bad, classify_corrupt, run_cases
from campaign_base import BASE, Case
from campaign_damage import damage_json, damage_safetensors
from campaign_kills import result_digests, run_with_kills, strays


def _proc(rc: int, stderr: str = "", stdout: str = "") -> SimpleNamespace:
    return SimpleNamespace(returncode=rc, stderr=stderr, stdout=stdout)


def test_damage_does_what_it_says(tmp_path):
    w = torch.full((4, 8), 1.5)
    clean = tmp_path / "clean.safetensors"
    save_safetensors(clean, {"w": w, "b": torch.zeros(3)}, metadata={"alpha": "1", "beta": "2"})
    size = clean.stat().st_size

    def damaged(how: str) -> Path:
        p = tmp_path / f"{how}.safetensors"
        p.write_bytes(clean.read_bytes())
        damage_safetensors(p, how)
        return p

    assert damaged("truncated").stat().st_size == size // 2
    with pytest.raises(SafetensorError):
        safe_open(str(damaged("header-flipped")), "pt")
    for how, changed in (
        ("weight-exponent-bit", lambda x: not 0.5 < abs(x) < 4),
        ("weight-low-mantissa-bit", lambda x: x != 1.5 and abs(x - 1.5) < 1e-6),
    ):
        with safe_open(str(damaged(how)), "pt") as f:
            got = f.get_tensor("w").flatten()
        assert changed(float(got[16])) and torch.equal(torch.cat([got[:16], got[17:]]), torch.full((31,), 1.5)), how
    p = damaged("metadata-key-renamed")
    with safe_open(str(p), "pt") as f:
        assert set(f.metadata()) == {"alphQ", "beta"} and p.stat().st_size == size

    j = tmp_path / "cfg.json"
    for how, check in (
        ("truncated", lambda t: len(t) < 20),
        ("key-renamed", lambda t: "latentQ" in t),
        ("number-changed", lambda t: json.loads(t)["latents"] == 22),
    ):
        j.write_text('{"latents": 32, "site": "x"}')
        damage_json(j, how)
        assert check(j.read_text()), how


def test_classes_follow_the_rules():
    case = Case("toy", "number", "--steps nan", (), needles=("--steps",))
    assert (
        classify_bad(
            case, _proc(2, "usage: …\nmechscope toy tms: error: argument --steps: invalid int value: 'nan'\n")
        )[0]
        == "one-line"
    )
    assert classify_bad(case, _proc(1, "mechscope: error: something went wrong\n"))[0] == "unclear"
    assert classify_bad(case, _proc(1, "mechscope: error: --steps must be ≥ 1\nwarning: more\n"))[0] == "unclear"
    assert classify_bad(case, _proc(1, "Traceback (most recent call last):\n  …\nValueError: bad --steps\n")) == (
        "traceback",
        "ValueError: bad --steps",
    )
    assert classify_bad(case, _proc(0, "", "{}"))[0] == "accepted"
    assert classify_bad(case, _proc(-14))[0] == "hang"
    # a progress bar repainted after the error line does not hide it
    assert (
        classify_bad(case, _proc(1, "mechscope: error: --steps nan\r  0%|          | 0/10 [00:00<?, ?step/s]\n"))[0]
        == "one-line"
    )
    corrupt = Case("evaluate", "corrupt", "sae.safetensors: truncated", (), needles=("sae.safetensors",))
    assert classify_corrupt(corrupt, _proc(0), "d1", "d1", True)[0] == "undetected"
    assert classify_corrupt(corrupt, _proc(0), "d1", "d2", True)[0] == "repaired"
    assert classify_corrupt(corrupt, _proc(0), "d1", "d2", False)[0] == "undetected"
    assert (
        classify_corrupt(corrupt, _proc(1, "mechscope: error: x/sae.safetensors is truncated\n"), "d1", "d1", False)[0]
        == "detected"
    )


@pytest.mark.slow  # two fork servers (each imports torch and transformers) and a few toy runs: ~15 s
def test_real_cases_and_a_kill(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    tms = BASE["toy tms"](None, "{case}/out")
    cases = [
        Case("toy", "number", "--steps abc", (*tms, "--steps", "abc"), needles=("--steps",)),
        Case("toy", "number", "--p 0", (*tms, "--p", "0"), needles=("--p",)),
        Case("toy", "number", "--steps 5 (valid)", (*tms, "--steps", "5"), needles=("--steps",)),
    ]
    runner = Runner(1, tmp_path / "cwd")
    rows = run_cases(cases, tmp_path / "run", runner, log=lambda msg: None)
    assert [r["class"] for r in rows] == ["one-line", "one-line", "accepted"], rows
    assert (tmp_path / "run" / "cases" / "0002" / "out" / "tms.json").is_file()

    # One run killed from outside after 1 s, one at a fault point inside an atomic write.
    long = [a.replace("{case}", str(tmp_path / "k")) for a in (*tms, "--steps", "1000000")]
    fault = [a.replace("{case}", str(tmp_path / "f")) for a in tms]
    done = run_with_kills(runner, [(long, {}, 1.0), (fault, {"MECHSCOPE_FAULT": "atomic:tms.json@1"}, None)], 120)
    assert [p.returncode for p in done] == [-9, -9], [p.stderr[-500:] for p in done]
    left = strays(tmp_path / "f")
    assert len(left) == 1 and left[0].startswith("out/tms.json.") and left[0].endswith(".tmp"), left
    digests = result_digests(tmp_path / "run" / "cases" / "0002", "{}", (tmp_path / "run" / "cases" / "0002" / "out",))
    assert "out/tms.json" in digests and not any(k.endswith(".tmp") for k in digests)

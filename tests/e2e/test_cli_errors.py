"""User errors end in one line naming the problem and the fix (exit 2 for usage, 1 for failures), never a
traceback: a table of bad inputs to harvest, train, evaluate, frontier, report and demo, each run through
the real command line (:func:`tests.harness.run_cli_many`: one process per row, forked from one
interpreter that imported torch once). The material (stores, SAEs, damaged copies) is made once per module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mechscope.data.text import TextCorpusConfig
from mechscope.harvest import HarvestConfig, harvest
from mechscope.sae.io import save_sae
from mechscope.store import MANIFEST, sha256_file, write_manifest
from tests.harness import SMALL_TEXT, assert_one_line_error, check_one_line_error, perturbed_sae, run_cli, run_cli_many

SITE = "resid_post.1"  # the alias of model.layers.1 in the tiny Llama (width 64)
CORPUS = TextCorpusConfig(source=SMALL_TEXT, context_length=32, val_fraction=0.1)
HARVEST_FLAGS = [
    "--source",
    SMALL_TEXT,
    "--context-length",
    "32",
    "--val-fraction",
    "0.1",
    "--tokens",
    "600",
    "--val-tokens",
    "100",
    "--batch-contexts",
    "4",
    "--shard-contexts",
    "8",
    "--site",
    SITE,
]
CUDA = "cuda:64" if torch.cuda.is_available() else "cuda"  # a device this machine cannot use either way


def _damage(store: Path, edit) -> None:
    """Rewrite a store's manifest through ``edit`` with a fresh digest (as if the harvest had written it)."""
    manifest = json.loads((store / MANIFEST).read_text())
    edit(manifest)
    write_manifest(store, manifest)


@pytest.fixture(scope="module")
def m(tiny_lm, tiny_lm_dir, tmp_path_factory):
    """Paths of the material every row uses."""
    root = tmp_path_factory.mktemp("cli-errors")
    # The same settings as HARVEST_FLAGS with --model, so that a CLI run can resume this store.
    cfg = HarvestConfig(
        model=str(tiny_lm_dir), sites=(SITE,), tokens=600, val_tokens=100, batch_contexts=4, shard_contexts=8
    )
    good = harvest(cfg, CORPUS, root / "store", loaded=tiny_lm, progress=False).path
    noval = harvest(
        HarvestConfig(sites=(SITE,), tokens=600, val_tokens=0, batch_contexts=4, shard_contexts=8),
        CORPUS,
        root / "noval",
        loaded=tiny_lm,
        progress=False,
    ).path
    p = {"lm": str(tiny_lm_dir), "store": str(good), "noval": str(noval), "root": root}

    def copy(name: str) -> Path:
        shutil.copytree(good, root / name)
        return root / name

    trunc = copy("truncated-manifest")
    (trunc / MANIFEST).write_bytes((trunc / MANIFEST).read_bytes()[:200])
    edited = copy("edited-manifest")
    text = (edited / MANIFEST).read_text()
    (edited / MANIFEST).write_text(text.replace('"rows_per_context": 31', '"rows_per_context": 21'))
    assert (edited / MANIFEST).read_text() != text
    corrupt = copy("corrupt-shard")  # same size, one byte changed
    shard = corrupt / "train-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-50] ^= 0x55
    shard.write_bytes(bytes(data))
    nan = copy("nan-store")  # what a model that produced NaN would have written: checksums agree
    shard = nan / "val-00000.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(shard))
    tensors["acts/model.layers.1"][37, 5] = float("nan")
    save_file(tensors, str(shard))

    def fix_shard(man):
        for s in man["shards"]:
            if s["file"] == shard.name:
                s["sha256"], s["bytes"] = sha256_file(shard), shard.stat().st_size

    _damage(nan, fix_shard)
    p.update(trunc=str(trunc), edited=str(edited), corrupt=str(corrupt), nan=str(nan))

    p["sae"] = str(save_sae(perturbed_sae("topk", 64, 32), root / "sae", metadata={"site": "model.layers.1"}))
    p["wide"] = str(save_sae(perturbed_sae("topk", 576, 32), root / "wide", metadata={"site": "model.layers.1"}))
    p["other_site"] = str(
        save_sae(perturbed_sae("topk", 64, 32), root / "other-site", metadata={"site": "model.layers.0"})
    )
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "cfg.json").write_text("{}")
    (pickled / "sae.pt").write_bytes(b"\x80\x04not really")
    p["pickled"] = str(pickled)
    badcfg = root / "badcfg"
    shutil.copytree(p["sae"], badcfg)
    (badcfg / "cfg.json").write_text('{"format": "mechscope-sae", "arch": ')
    p["badcfg"] = str(badcfg)

    # Train output folders holding a damaged or foreign checkpoint (from a real 2-step run).
    base = [
        "train",
        "--store",
        str(good),
        "--site",
        SITE,
        "--latents",
        "32",
        "--k",
        "4",
        "--steps",
        "2",
        "--batch-size",
        "64",
        "--no-progress",
        "--device",
        "cpu",
    ]
    done = run_cli([*base, "--out", str(root / "run")])
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = root / "run" / "checkpoint.safetensors"
    for name, mutate in {
        "trunc-ckpt": lambda b: b[: len(b) // 2],
        "flip-ckpt": lambda b: b[:8] + bytes([b[8] ^ 0x20]) + b[9:],
    }.items():
        (root / name).mkdir()
        (root / name / ckpt.name).write_bytes(mutate(ckpt.read_bytes()))
    p["train"] = base
    p["file"] = str(root / "a-file")
    Path(p["file"]).write_text("not a folder")
    empty = root / "empty-model"
    empty.mkdir()
    p["empty_model"] = str(empty)
    return p


def table(m) -> list[tuple[str, list[str], int, str]]:
    """(row id, argv, exit code, regex the one error line must match)."""
    h = ["harvest", "--model", m["lm"], *HARVEST_FLAGS]
    new = str(m["root"] / "never-made")
    t = m["train"]
    ev = ["evaluate", "--model", m["lm"], "--site", SITE]
    fr = ["frontier", "--site", SITE, "--eval-rows", "64", "--fit-rows", "64", "--l0s", "2"]
    rp = ["report", "--model", m["lm"], "--site", SITE]
    out = ["--out", str(m["root"] / "unused")]
    rows = [
        # harvest: flags, sites, model, text source, output folder, an existing store
        ("h-batch-contexts-0", [*h, *out, "--batch-contexts", "0"], 2, r"--batch-contexts \(0\).*must be positive"),
        ("h-shard-multiple", [*h, *out, "--shard-contexts", "10"], 2, r"multiple of --batch-contexts"),
        ("h-tokens-0", [*h, *out, "--tokens", "0"], 2, r"--tokens \(0\) must be positive"),
        ("h-val-tokens-neg", [*h, *out, "--val-tokens", "-1"], 2, r"--val-tokens \(-1\).*non-negative"),
        ("h-tokens-abc", [*h, *out, "--tokens", "abc"], 2, r"--tokens: 'abc' is not a whole number"),
        ("h-dtype", [*h, *out, "--dtype", "float8"], 2, r"--dtype: invalid choice: 'float8'"),
        ("h-skip-bos-both", [*h, *out, "--skip-bos", "--no-skip-bos"], 2, r"--skip-bos and --no-skip-bos contradict"),
        (
            "h-stop-after-both",
            [*h, *out, "--no-stop-after", "--stop-after"],
            2,
            r"--no-stop-after and --stop-after contradict",
        ),
        (
            "h-alias-typo",
            [*h, *out, "--site", "resid_pots.1"],
            2,
            r"unknown site 'resid_pots.1'.*did you mean 'resid_post.1'",
        ),
        (
            "h-module-typo",
            [*h, *out, "--site", "model.layer.1"],
            2,
            r"unknown site 'model.layer.1'.*did you mean 'model.layers.1'",
        ),
        ("h-layer-range", [*h, *out, "--site", "resid_post.9"], 2, r"layer 9 out of range.*3 blocks"),
        ("h-wildcard", [*h, *out, "--site", "model.nothing.*"], 2, r"wildcard 'model.nothing.\*' matches no module"),
        ("h-site-syntax", [*h, *out, "--site", "model.layers.1:sideways"], 2, r"cannot parse site"),
        (
            "h-model-missing",
            [*h, *out, "--model", str(m["root"] / "no-model")],
            1,
            r"no-model': no such folder; give a folder written by save_pretrained",
        ),
        ("h-model-empty", [*h, *out, "--model", m["empty_model"]], 1, r"does not hold a Hugging Face causal LM"),
        ("h-source", [*h, *out, "--source", str(m["root"] / "nothing-*.txt")], 1, r"text source .* is not 'stdlib'"),
        ("h-context-1", [*h, *out, "--context-length", "1"], 2, r"context_length must be at least 2"),
        ("h-val-fraction", [*h, *out, "--val-fraction", "1.5"], 2, r"val_fraction must lie strictly between 0 and 1"),
        ("h-out-file", [*h, "--out", m["file"]], 2, r"--out .*a-file is a file; give a folder"),
        ("h-out-under-file", [*h, "--out", m["file"] + "/store"], 2, r"a-file is a file, not a folder"),
        ("h-out-unwritable", [*h, "--out", "/proc/mechscope-store"], 2, r"cannot write in /proc"),
        (
            "h-other-settings",
            [*h, "--out", m["store"], "--tokens", "900"],
            2,
            r"other settings \(.*harvest\.tokens: 600 there, 900 asked",
        ),
        ("h-truncated-manifest", [*h, "--out", m["trunc"]], 1, r"truncated-manifest/manifest\.json is not valid JSON"),
        ("h-edited-manifest", [*h, "--out", m["edited"]], 1, r"edited-manifest/manifest\.json was edited or damaged"),
        ("h-unknown-flag", [*h, *out, "--frobnicate"], 2, r"unrecognized arguments: --frobnicate"),
        ("h-no-out", h, 2, r"the following arguments are required: --out"),
        # train
        ("t-sweep-abc", [*t, "--out", new, "--sweep", "k=abc"], 2, r"--sweep k=abc: k takes int values"),
        (
            "t-sweep-field",
            [*t, "--out", new, "--sweep", "kk=1,2"],
            2,
            r"^mechscope: error: --sweep kk: no such field of TopKConfig or OptimConfig; ",
        ),
        ("t-sweep-syntax", [*t, "--out", new, "--sweep", "k"], 2, r"expected FIELD=V1,V2"),
        ("t-sweep-choice", [*t, "--out", new, "--sweep", "decay=sideways"], 2, r"decay is one of linear, cosine, none"),
        ("t-sweep-range", [*t, "--out", new, "--sweep", "k=4,64"], 2, r"--sweep k=64: k must be in 1..latents=32"),
        ("t-device-cuda", [*t, "--out", new, "--device", CUDA], 2, r"--device cuda.*(no CUDA support|visible)"),
        ("t-device-bad", [*t, "--out", new, "--device", "potato"], 2, r"--device 'potato' is not a torch device"),
        ("t-steps-0", [*t, "--out", new, "--steps", "0"], 2, r"steps and batch_size must be positive"),
        (
            "t-lr-0",
            [*t, "--out", new, "--lr", "0"],
            2,
            r"argument --lr: 0.0 is out of range; give a value in \(0, 10\]$",
        ),
        ("t-k-0", [*t, "--out", new, "--k", "0"], 2, r"k must be in 1\.\.latents"),
        ("t-latents-0", [*t, "--out", new, "--latents", "0", "--k", "1"], 2, r"latents must be positive"),
        ("t-foreign-flag", [*t, "--out", new, "--arch", "relu"], 2, r"--k do\(es\) not apply to --arch relu"),
        ("t-arch", [*t, "--out", new, "--arch", "nope"], 2, r"--arch: invalid choice: 'nope'"),
        ("t-batch-too-big", [*t, "--out", new, "--batch-size", "100000"], 2, r"fewer than one batch of 100000"),
        ("t-store-missing", [*t, "--out", new, "--store", new], 1, r"no activation store at .*never-made"),
        ("t-site-missing", [*t, "--out", new, "--site", "resid_post.0"], 2, r"site 'resid_post.0' is not in store"),
        ("t-out-file", [*t, "--out", m["file"]], 2, r"a-file is a file; give a folder"),
        ("t-truncated-manifest", [*t, "--out", new, "--store", m["trunc"]], 1, r"manifest\.json is not valid JSON"),
        (
            "t-corrupt-shard",
            [*t, "--out", new, "--store", m["corrupt"]],
            1,
            r"train-00000\.safetensors fails its checksum",
        ),
        (
            "t-truncated-checkpoint",
            [*t, "--out", str(m["root"] / "trunc-ckpt")],
            1,
            r"trunc-ckpt/checkpoint\.safetensors.*(truncated|damaged|corrupt)",
        ),
        (
            "t-flipped-checkpoint",
            [*t, "--out", str(m["root"] / "flip-ckpt")],
            1,
            r"flip-ckpt/checkpoint\.safetensors.*(header|damaged|corrupt)",
        ),
        ("t-other-run", [*t, "--out", str(m["root"] / "run"), "--latents", "64"], 2, r"written by a different run"),
        (
            "t-nan",
            [*t, "--out", str(m["root"] / "nan-run"), "--store", m["nan"]],
            1,
            r"non-finite activation .*nan-store/val-00000\.safetensors.*row 37",
        ),
        # evaluate
        ("e-sae-missing", [*ev, "--sae", new, "--store", m["store"]], 1, r"no such SAE folder"),
        ("e-store-missing", [*ev, "--sae", m["sae"], "--store", new], 1, r"no activation store at"),
        (
            "e-width",
            [*ev, "--sae", m["wide"], "--store", m["store"]],
            2,
            r"reads 576-wide activations but site model\.layers\.1 .* is 64 wide",
        ),
        (
            "e-site",
            [*ev, "--sae", m["other_site"], "--store", m["store"]],
            2,
            r"trained at site 'model\.layers\.0'.*--force-site",
        ),
        ("e-no-val", [*ev, "--sae", m["sae"], "--store", m["noval"]], 2, r"no held-out \(val\) rows.*--val-tokens > 0"),
        (
            "e-rows-0",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--rows", "0"],
            2,
            r"--rows must be positive, got 0",
        ),
        (
            "e-contexts-0",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--contexts", "0"],
            2,
            r"--contexts must be positive",
        ),
        (
            "e-results-folder",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--results", str(m["root"])],
            2,
            r"--results .* is a folder",
        ),
        (
            "e-results-unwritable",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--results", "/proc/x/e.json"],
            2,
            r"--results .*cannot write",
        ),
        (
            "e-nan",
            [*ev, "--sae", m["sae"], "--store", m["nan"]],
            1,
            r"non-finite activation .*val-00000\.safetensors.*row 37",
        ),
        (
            "e-truncated-manifest",
            [*ev, "--sae", m["sae"], "--store", m["trunc"]],
            1,
            r"manifest\.json is not valid JSON",
        ),
        (
            "e-edited-manifest",
            [*ev, "--sae", m["sae"], "--store", m["edited"]],
            1,
            r"manifest\.json was edited or damaged",
        ),
        ("e-corrupt-shard", [*ev, "--sae", m["sae"], "--store", m["corrupt"]], 1, r"fails its checksum"),
        ("e-pickle", [*ev, "--sae", m["pickled"], "--store", m["store"]], 1, r"refusing to load sae\.pt"),
        ("e-cfg-json", [*ev, "--sae", m["badcfg"], "--store", m["store"]], 1, r"cfg\.json: not JSON"),
        (
            "e-site-typo",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--site", "resid_pots.1"],
            2,
            r"site 'resid_pots\.1' is not in store .*holds model\.layers\.1",
        ),
        (
            "e-model-missing",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--model", new],
            1,
            r"never-made': no such folder",
        ),
        (
            "e-rows-abc",
            [*ev, "--sae", m["sae"], "--store", m["store"], "--rows", "many"],
            2,
            r"--rows: 'many' is not a whole number",
        ),
        # frontier
        ("f-device", [*fr, "--sae", m["sae"], "--store", m["store"], *out, "--device", CUDA], 2, r"--device cuda"),
        ("f-width", [*fr, "--sae", m["wide"], "--store", m["store"], *out], 2, r"reads 576-wide activations"),
        (
            "f-site",
            [*fr, "--sae", m["other_site"], "--store", m["store"], *out],
            2,
            r"trained at site 'model\.layers\.0'",
        ),
        (
            "f-out-file",
            [*fr, "--sae", m["sae"], "--store", m["store"], "--out", m["file"]],
            2,
            r"is a file; give a folder",
        ),
        (
            "f-loss-contexts",
            [*fr, "--sae", m["sae"], "--store", m["store"], *out, "--loss-contexts", "0"],
            2,
            r"argument --loss-contexts: 0 is out of range; give a value ≥ 1$",
        ),
        ("f-no-val", [*fr, "--sae", m["sae"], "--store", m["noval"], *out], 2, r"split 'val' .* has 0 rows"),
        (
            "f-l0s",
            [*fr, "--sae", m["sae"], "--store", m["store"], *out, "--l0s", "0"],
            2,
            r"argument --l0s: 0 is out of range; give a value ≥ 1$",
        ),
        (
            "f-coder",
            [*fr, "--sae", m["sae"], "--store", m["store"], *out, "--coders", "magic"],
            2,
            r"unknown coders \['magic'\]",
        ),
        (
            "f-nan",
            [*fr, "--sae", m["sae"], "--store", m["nan"], *out, "--eval-rows", "4096"],
            1,
            r"non-finite activation .*row 37",
        ),
        # report
        (
            "r-out-folder",
            [*rp, "--sae", m["sae"], "--store", m["store"], "--out", str(m["root"])],
            2,
            r"--out .* is a folder; give a file name",
        ),
        ("r-width", [*rp, "--sae", m["wide"], "--store", m["store"], *out], 2, r"reads 576-wide activations"),
        (
            "r-site",
            [*rp, "--sae", m["other_site"], "--store", m["store"], *out],
            2,
            r"trained at site 'model\.layers\.0'",
        ),
        ("r-no-val", [*rp, "--sae", m["sae"], "--store", m["noval"], *out], 2, r"no held-out \(val\) rows"),
        (
            "r-frontier-missing",
            [*rp, "--sae", m["sae"], "--store", m["store"], *out, "--frontier", new],
            2,
            r"--frontier .*no such file",
        ),
        (
            "r-frontier-json",
            [*rp, "--sae", m["sae"], "--store", m["store"], *out, "--frontier", m["file"]],
            2,
            r"--frontier .*not a JSON file",
        ),
        (
            "r-figures",
            [*rp, "--sae", m["sae"], "--store", m["store"], *out, "--figures", new],
            2,
            r"--figures .*no such file",
        ),
        (
            "r-config",
            [*rp, "--sae", m["sae"], "--store", m["store"], *out, "--max-rows", "0"],
            2,
            r"max_rows must be ≥ 1",
        ),
        # demo
        ("d-steps-0", ["demo", "--steps", "0", "--out", new], 2, r"--steps must be positive"),
        (
            "d-k-latents",
            ["demo", "--k", "64", "--latents", "32", "--out", new],
            2,
            r"--k \(64\) cannot exceed --latents \(32\)",
        ),
        ("d-val-tokens", ["demo", "--val-tokens", "0", "--out", new], 2, r"--val-tokens must be positive"),
        ("d-out-file", ["demo", "--out", m["file"]], 2, r"a-file is a file; give a folder"),
        ("d-l0s", ["demo", "--frontier-l0s", "0", "--out", new], 2, r"--frontier-l0s must be positive"),
        (
            "d-lr",
            ["demo", "--lr", "-1", "--out", new],
            2,
            r"argument --lr: -1.0 is out of range; give a value in \(0, 10\]$",
        ),
    ]
    return rows


def test_bad_inputs_end_in_one_line(m):
    rows = table(m)
    assert len(rows) >= 53 and len({r[0] for r in rows}) == len(rows)
    assert {r[1][0] for r in rows} == {"harvest", "train", "evaluate", "frontier", "report", "demo"}
    procs = run_cli_many([argv for _, argv, _, _ in rows])
    failures = []
    for (name, _argv, code, match), proc in zip(rows, procs):
        try:
            check_one_line_error(proc, match, code)
        except AssertionError as err:
            failures.append(f"--- {name}: {err}")
    assert not failures, f"{len(failures)} of {len(rows)} rows failed:\n" + "\n".join(failures)
    # Nothing was created at the paths the failed commands were given: a harvest that fails (bad site, model,
    # source, flags) leaves no empty --out folder, and the checks before the work create nothing.
    assert not (m["root"] / "never-made").exists() and not (m["root"] / "unused").exists()


def test_missing_sae_folder_is_one_line(tmp_path):
    assert_one_line_error(
        ["evaluate", "--sae", str(tmp_path / "nope"), "--store", str(tmp_path), "--site", "resid_post.6"],
        r"no such SAE folder",
    )


def test_unknown_command_is_usage_error():
    assert_one_line_error(["frobnicate"], r"invalid choice", code=2)


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli(["evaluate", "--debug", "--sae", str(tmp_path / "nope"), "--store", str(tmp_path), "--site", "x"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr

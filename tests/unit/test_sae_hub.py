"""Dictionaries named by hub id (issue 26): ``load_sae("org/name", subfolder=…)``, ``org/name:subfolder`` on the command
line, read from a Hugging Face cache laid out locally with the network off, through the one resolver models use
(:mod:`mechscope.hub`). Not cached: one line naming the cache and the ``hf download`` command."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mechscope.sae import SAEFormatError, load_sae, save_sae
from mechscope.sae.formats import FORMATS, convert
from tests.harness import perturbed_sae, run_cli

REPO = "tiny-org/saes"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A hub cache holding one repository of dictionaries, laid out as huggingface_hub writes it:
    models--ORG--NAME/{refs/main, snapshots/<commit>/<subfolder>/…}, one mechscope SAE under layer_3/."""
    cache = tmp_path_factory.mktemp("hf-hub")
    repo = cache / ("models--" + REPO.replace("/", "--"))
    save_sae(
        perturbed_sae("topk", 8, 24, k=3), repo / "snapshots" / COMMIT / "layer_3", metadata={"site": "resid_post.3"}
    )
    FORMATS["circuittracer"].save(perturbed_sae("jumprelu_transcoder", 8, 24), repo / "snapshots" / COMMIT / "tc", {})
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def test_a_cached_hub_dictionary_loads_by_id_and_subfolder(offline_cache):
    want = perturbed_sae("topk", 8, 24, k=3)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    for sae in (load_sae(REPO, subfolder="layer_3"), load_sae(f"{REPO}:layer_3")):
        assert (sae.arch, sae.file_format) == ("topk", "mechscope")
        with torch.no_grad():
            torch.testing.assert_close(sae.encode(x), want.encode(x))


@pytest.mark.parametrize(
    "spec, subfolder, says",
    [
        (
            "tiny-org/absent",
            None,
            r"'tiny-org/absent' is not in the Hugging Face cache \(.*\); fetch it once with "
            r"`hf download tiny-org/absent`; nor is tiny-org/absent a local path",
        ),
        (
            REPO,
            "layer_9",
            r"'tiny-org/saes' \(subfolder 'layer_9'\) is not in the Hugging Face cache .*"
            r"`hf download tiny-org/saes --include 'layer_9/\*'`",
        ),
        (f"{REPO}:layer_9", None, r"`hf download tiny-org/saes --include 'layer_9/\*'`"),
    ],
)
def test_a_hub_dictionary_not_in_the_cache_says_so_and_how_to_fetch_it(offline_cache, spec, subfolder, says):
    with pytest.raises(SAEFormatError, match=says) as err:
        load_sae(spec, subfolder=subfolder)
    assert "\n" not in str(err.value)


def test_the_cli_reads_a_hub_dictionary_offline(hub_cache, tmp_path):
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    ok = run_cli(["convert", f"{REPO}:layer_3", str(tmp_path / "out"), "--to", "saelens", "--json"], env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["source_format"] == "mechscope"
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"  # the hub copy's metadata was carried
    missing = run_cli(["convert", f"{REPO}:layer_9", str(tmp_path / "o2"), "--to", "saelens"], env=env)
    assert missing.returncode != 0
    assert (
        missing.stderr.strip().count("\n") == 0 and "hf download tiny-org/saes --include 'layer_9/*'" in missing.stderr
    )


def test_a_circuittracer_sets_hf_members_are_read_from_the_cache(offline_cache, tmp_path):
    import yaml

    folder = tmp_path / "set"
    FORMATS["circuittracer"].save(perturbed_sae("jumprelu_transcoder", 8, 24, seed=4), folder, {})
    (folder / "transcoder.safetensors").rename(folder / "mine.safetensors")
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"hf://{REPO}/tc/transcoder.safetensors?revision=main", "mine.safetensors"],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    _, out = convert(folder, tmp_path / "own", "mechscope")
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    for i, want in enumerate(
        (perturbed_sae("jumprelu_transcoder", 8, 24), perturbed_sae("jumprelu_transcoder", 8, 24, seed=4))
    ):
        got = load_sae(out / f"layer_{i}")
        assert got.metadata["site"] == f"mlp_in.{i}"
        with torch.no_grad():
            torch.testing.assert_close(got.encode(x), want.encode(x))
    config["transcoders"][0] = f"hf://{REPO}/tc/absent.safetensors"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(
        SAEFormatError,
        match=r"tiny-org/saes/tc/absent.safetensors is not in the Hugging Face cache .*"
        r"`hf download tiny-org/saes tc/absent.safetensors`",
    ):
        convert(folder, tmp_path / "own2", "mechscope")

"""Checks made before the work: writable outputs (creating nothing), devices, an SAE against a store's site."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.preflight import check_device, check_outputs, sae_fits_store, writable_file, writable_folder
from mechscope.store import StoreSiteError


def test_writable_paths_are_probed_and_nothing_is_created(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert writable_folder(deep) == deep and writable_file(deep / "x.json") == deep / "x.json"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone and no folder was made
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="^`out` .*f is a file; give a folder"):
        writable_folder(tmp_path / "f")
    with pytest.raises(UsageError, match="f is a file, not a folder"):
        writable_folder(tmp_path / "f" / "sub")
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        writable_file(tmp_path, "--json")
    with pytest.raises(UsageError, match="cannot write in /proc"):
        writable_folder("/proc/mechscope-preflight-test")


def test_an_empty_path_is_refused_by_name_not_read_as_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for check, what in ((writable_folder, "folder"), (writable_file, "file")):
        for empty in ("", "  "):
            with pytest.raises(UsageError, match=rf"--plots is empty; give a {what} path"):
                check(empty, "--plots")
    assert writable_folder(".") == Path(".")  # the current folder, when asked for by name
    assert list(tmp_path.iterdir()) == []


def test_check_outputs_checks_every_output_flag_given(tmp_path):
    (tmp_path / "f").write_text("")
    args = argparse.Namespace(report=str(tmp_path / "r.html"), plots=str(tmp_path / "plots"), save=None)
    check_outputs(args, folders=["plots", "not_given"], files=["report", "save"])  # absent and None are skipped
    with pytest.raises(UsageError, match=r"--checkpoint-dir .*f is a file; give a folder"):
        check_outputs(argparse.Namespace(checkpoint_dir=str(tmp_path / "f")), folders=["checkpoint_dir"])
    with pytest.raises(UsageError, match=r"--save .* is a folder; give a file name"):
        check_outputs(
            argparse.Namespace(report=str(tmp_path / "ok.html"), save=str(tmp_path)), files=["report", "save"]
        )
    with pytest.raises(UsageError, match=r"--report is empty; give a file path"):
        check_outputs(argparse.Namespace(report=""), files=["report"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_devices():
    check_device("cpu")
    check_device("auto")
    with pytest.raises(UsageError, match="not a torch device"):
        check_device("potato")
    with pytest.raises(UsageError, match=r"cuda:64"):
        check_device("cuda:64")  # no machine has 65 GPUs; a CPU build says it has no CUDA


class _Store:
    """The part of ActivationStore that sae_fits_store reads: one site of width 8 with an alias."""

    path = "store"

    def site_name(self, site):
        names = {
            "model.layers.1": "model.layers.1",
            "resid_post.1": "model.layers.1",
            "model.layers.0": "model.layers.0",
        }
        if site not in names:
            raise StoreSiteError(f"site {site!r} is not in store")
        return names[site]

    def d(self, site):
        return 8


def _sae_folder(tmp_path, site):
    (tmp_path / "cfg.json").write_text(
        json.dumps({"format": "mechscope-sae", "metadata": {"site": site} if site else {}})
    )
    return tmp_path


def test_an_sae_must_fit_the_site(tmp_path):
    sae = SimpleNamespace(W_dec=torch.zeros(3, 8))
    store = _Store()
    # The recorded site, by alias or by name, is accepted and the canonical name comes back.
    assert sae_fits_store(sae, _sae_folder(tmp_path, "resid_post.1"), store, "model.layers.1") == "model.layers.1"
    assert sae_fits_store(sae, _sae_folder(tmp_path, "model.layers.1"), store, "resid_post.1") == "model.layers.1"
    assert (
        sae_fits_store(sae, _sae_folder(tmp_path, None), store, "model.layers.0") == "model.layers.0"
    )  # nothing recorded
    folder = _sae_folder(tmp_path, "model.layers.0")
    with pytest.raises(
        UsageError,
        match=r"trained at site 'model.layers.0', not 'resid_post.1'; pass `site` model.layers.0 "
        r"\(or set `force_site` to evaluate it at resid_post.1 anyway\)",
    ):
        sae_fits_store(sae, folder, store, "resid_post.1")
    assert sae_fits_store(sae, folder, store, "resid_post.1", force_site=True) == "model.layers.1"
    with pytest.raises(UsageError, match="reads 12-wide activations but site model.layers.1 .* is 8 wide"):
        sae_fits_store(
            SimpleNamespace(W_dec=torch.zeros(3, 12)), folder, store, "resid_post.1", force_site=True
        )  # width is never forced

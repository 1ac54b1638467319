"""The tasks' models do what the tasks claim (clean accuracy, attack success rate), and the published
bar: Mahalanobis reaches AUROC ≥ 0.97 at the best site on the corner-pixel backdoor.

Task models are trained once and cached (<mechscope cache>/anomaly/*.safetensors); the image tasks need
Fashion-MNIST (`make data`) and skip without it only outside CI."""

from __future__ import annotations

import os

import pytest
import torch

from mechscope.anomaly.benchmarks import (
    BenchmarkCacheError,
    ImageMLP,
    cache_path,
    cached_model,
    load_benchmark,
)
from mechscope.anomaly.evaluate import evaluate
from mechscope.data.images import fashion_mnist_dir

needs_fashion = pytest.mark.skipif(
    not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("CI"),
    reason="Fashion-MNIST is not installed (make data)",
)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.mark.slow
@needs_fashion
def test_corner_backdoor_mahalanobis_reaches_the_bar():
    task = load_benchmark("backdoor-corner")
    assert task.info["clean_accuracy"] > 0.8
    assert task.info["attack_success_rate"] > 0.9
    r = evaluate(task, "mahalanobis", n_boot=100)
    assert r.summary["best_site_auroc"] >= 0.97, r.summary
    lo, hi = r.summary["auroc_ci"]
    assert lo <= r.summary["auroc"] <= hi


@pytest.mark.slow
@needs_fashion
def test_blend_backdoor_and_ood_tasks():
    blend = load_benchmark("backdoor-blend")
    assert blend.info["clean_accuracy"] > 0.8 and blend.info["attack_success_rate"] > 0.9
    ood = load_benchmark("ood")
    assert ood.info["clean_accuracy"] > 0.8
    assert ood.anomalous.shape[1:] == ood.trusted.shape[1:] == (28, 28)
    # upscaled digits are plausible grey blobs: 0.85 aggregated, 0.91 at act1 (docs/anomaly.md)
    assert evaluate(ood, "mahalanobis", n_boot=0).summary["best_site_auroc"] > 0.85


@pytest.mark.slow
def test_lm_backdoor_fires_on_the_phrase_only():
    task = load_benchmark("backdoor-lm")
    assert task.info["clean_accuracy"] > 0.95, task.info
    assert task.info["attack_success_rate"] > 0.9, task.info
    r = evaluate(task, "mahalanobis", n_boot=0)
    assert r.summary["best_site_auroc"] > 0.9, r.summary


def test_a_foreign_cache_file_is_refused(tmp_path, monkeypatch):
    from mechscope.atomic import save_safetensors

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    save_safetensors(cache_path("x"), {"weight": torch.zeros(2)})
    with pytest.raises(BenchmarkCacheError, match="delete it to retrain"):
        cached_model("x", ImageMLP, ImageMLP)

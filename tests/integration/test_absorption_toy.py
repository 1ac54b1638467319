"""Matryoshka absorbs less than BatchTopK at the same k on the toy hierarchy (issue 14's claim, measured)."""

from __future__ import annotations

import pytest
import torch

from mechscope.toy.absorption import AbsorptionConfig, absorption_table, k_architectures


def test_every_k_architecture_joins_the_table():
    assert {"topk", "batchtopk", "matryoshka"} <= set(k_architectures())


@pytest.mark.slow
def test_matryoshka_absorbs_less_than_batchtopk_at_equal_l0():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 80-wide matrices: a second thread only adds contention on a 2-core machine
    try:
        res = absorption_table(AbsorptionConfig(steps=800, eval_rows=10_000), archs=["batchtopk", "matryoshka"])
    finally:
        torch.set_num_threads(threads)
    rows = {r["arch"]: r for r in res["rows"]}
    for r in rows.values():
        assert r["l0"] == pytest.approx(2.0, abs=0.25)  # matched L0 (BatchTopK-style selection: the batch mean is k)
    # Measured (800 steps): BatchTopK absorbs most child rows; Matryoshka's first prefix keeps the parents.
    assert rows["batchtopk"]["absorbed"] > 0.4
    assert rows["matryoshka"]["absorbed"] < rows["batchtopk"]["absorbed"] - 0.25

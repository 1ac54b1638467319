"""The absorption table (mechscope.toy.absorption) builds and trains every architecture it lists."""

from __future__ import annotations

from mechscope.toy.absorption import AbsorptionConfig, absorption_table, k_architectures


def test_the_default_table_trains_every_k_architecture():
    # The cross-layer transcoder has a k but no AuxK: its config was given auxk_coef=1.0 and refused (TypeError).
    cfg = AbsorptionConfig(parents=2, children_per_parent=1, k=1, steps=2, batch_size=16, eval_rows=64)
    res = absorption_table(cfg)
    assert "clt" in k_architectures()
    assert [r["arch"] for r in res["rows"]] == k_architectures()
    assert all(r["l0"] <= 2.0 for r in res["rows"])

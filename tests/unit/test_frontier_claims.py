"""The frontier claims no L0 it does not have, sweeps a TopK SAE past its k, and shows its progress."""

from __future__ import annotations

import re

import torch

from mechscope.cli.frontier import summary
from mechscope.coding.base import CodingConfig
from mechscope.coding.frontier import FrontierConfig, frontier, sweep_encoder
from mechscope.sae import REGISTRY


def _topk_sae(k: int = 4):
    cls = REGISTRY["topk"]
    return cls(cls.config_cls(d_in=12, latents=48, k=k), generator=torch.Generator().manual_seed(0)).eval()


def test_topk_encoder_points_have_the_l0_they_claim(capsys):
    sae = _topk_sae(k=4)
    x = torch.randn(256, 12, generator=torch.Generator().manual_seed(1))
    cfg = FrontierConfig(l0s=(2, 8), coders=("encoder", "mp"), batch_size=100)
    truncated = frontier(x, sae, sae.encode, cfg, CodingConfig(), native=sae.encode)
    enc = {p.k: p for p in truncated.points if p.coder == "encoder"}
    assert enc[8].stats["l0"] <= 4 and enc[8].below_target  # truncating a k=4 encoder cannot give 8 latents
    assert not enc[2].below_target and not enc[4].below_target
    table = summary(truncated)
    assert re.search(r"^encoder\s+8\*\s+4\.00", table, re.M) and "target k not reached" in table
    assert not re.search(r"^mp\s+8\*", table, re.M)

    swept = frontier(
        x, sae, sweep_encoder(sae), cfg, CodingConfig(), native=sae.encode
    )  # 'auto': pre-activations for TopK
    enc = {p.k: p for p in swept.points if p.coder == "encoder"}
    assert enc[8].stats["l0"] > 7.5 and not enc[8].below_target
    assert "target k not reached" not in summary(swept)
    assert swept.native.stats == truncated.native.stats
    assert all("below_target" in p for p in swept.to_dict()["points"])

    # One progress step per (coder, L0) point plus the native point: 1 + 3 L0s (2, 4 native, 8) × 2 coders.
    err = capsys.readouterr().err
    assert "frontier" in err and "7/7" in err
    frontier(x, sae, sae.encode, FrontierConfig(l0s=(2,), coders=("mp",), progress=False), CodingConfig())
    assert "frontier" not in capsys.readouterr().err

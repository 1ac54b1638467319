"""`mechscope graph --max-latents --max-memory-gb` on zoo:parens (issue 25): the capped graph keeps that many latents
and stays exact; a cap below the graph's need is refused in one line naming the flags."""

from __future__ import annotations

import json

import torch

from mechscope.cli import main
from tests.integration.test_graph_zoo import train_parens_transcoders


def test_graph_cli_caps_latents_and_refuses_a_memory_cap_too_small(tmp_path, capsys):
    torch.set_num_threads(1)
    train_parens_transcoders(tmp_path / "tc", steps=20)
    args = [
        "graph",
        "--model",
        "zoo:parens",
        "--prompt",
        "1 2 2 3 2 3 3",
        "--transcoders",
        str(tmp_path / "tc"),
        "--logit-position",
        "0",
        "--out",
        str(tmp_path / "g"),
        "--max-latents",
        "5",
    ]
    code = main([*args, "--max-memory-gb", "100", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert code == 0 and s["exact"], s["checks"]
    assert s["nodes"]["latents"] == 5 and s["nodes"]["errors"] == 3 * 7
    code = main([*args, "--max-memory-gb", "0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        err[0].startswith("mechscope: error: --max-memory-gb 0.01: this graph needs about")
        and "--max-latents" in err[0]
    )

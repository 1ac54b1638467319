"""`mechscope graph` end to end on zoo:parens (3 layers, LayerNorm, bidirectional) with a TopK transcoder per
MLP trained here in seconds: the exactness check passes, the graph and its report are written, and the
pruned graph keeps fewer edges than the full one. The command never builds the dense [N, N] matrix (issue 25): the
builder raises while it runs."""

from __future__ import annotations

import json

import torch

from mechscope.cli import main
from mechscope.graph import dense
from mechscope.graph.saved import load_graph
from mechscope.sae.io import save_sae
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE
from mechscope.sites import capture
from mechscope.zoo import load_zoo
from tests.helpers_report import assert_offline


def train_parens_transcoders(out, steps: int = 300, latents: int = 96, k: int = 8) -> list[float]:
    """One transcoder per parens MLP (mlp input → output), Adam on 2,048 held-out strings; returns the FVUs."""
    torch.manual_seed(0)
    zm = load_zoo("parens")
    model = zm.model.eval()
    n_layers = len(model.blocks)
    sites = [f"blocks.{l}.mlp:input" for l in range(n_layers)] + [f"blocks.{l}.mlp" for l in range(n_layers)]
    with torch.no_grad(), capture(model, sites) as acts:
        model(zm.task.val_inputs[:2048])
    fvus = []
    for l in range(n_layers):
        x = acts[f"blocks.{l}.mlp:input"].reshape(-1, model.shape.d_model)
        y = acts[f"blocks.{l}.mlp"].reshape(-1, model.shape.d_model)
        sae = TranscoderSAE(TranscoderConfig(d_in=x.shape[1], latents=latents, k=k, d_out=y.shape[1]))
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
        rows = torch.cat([x, y], 1)
        for _step in range(steps):
            batch = rows[torch.randint(0, rows.shape[0], (1024,))]
            loss = sae(batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = sae.predict(x)
            fvus.append(float(((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()))
        save_sae(
            sae.eval(), out / f"L{l}", metadata={"site": f"blocks.{l}.mlp:input", "target_site": f"blocks.{l}.mlp"}
        )
    return fvus


def test_graph_cli_on_parens(tmp_path, capsys, monkeypatch):
    torch.set_num_threads(1)
    fvus = train_parens_transcoders(tmp_path / "tc")
    assert max(fvus) < 0.5, fvus  # trained transcoders, not noise

    def refuse(*a, **k):
        raise AssertionError("mechscope graph built the dense [N, N] matrix")

    monkeypatch.setattr(dense, "build", refuse)
    code = main(
        [
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
            "--json",
            "--viewer-json",
            str(tmp_path / "v" / "p.json"),
        ]
    )
    s = json.loads(capsys.readouterr().out)
    assert code == 0 and s["exact"], s["checks"]
    assert s["checks"]["max_relative_residual"] < 1e-4 and s["checks"]["max_logit_gap"] < 1e-4
    assert s["nodes"]["latents"] > 0 and s["nodes"]["errors"] == 3 * 7 and s["nodes"]["logits"] >= 1
    assert 0 < s["kept"]["edges"] < s["kept"]["edges_nonzero"]
    assert 0.0 < s["replacement_score"] <= 1.0 and 0.0 < s["completeness_score"] <= 1.0
    page = (tmp_path / "g" / "report.html").read_text()
    assert "id='ag-svg'" in page and "ag-svg-card-" in page and "Fidelity" in page
    assert_offline(page)
    graph = json.loads((tmp_path / "g" / "graph.json").read_text())
    kept = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in kept and e["target"] in kept for e in graph["edges"])
    # the saved graph is read without the model, and its viewer JSON lists the same kept edges
    saved = load_graph(tmp_path / "g" / "adjacency.safetensors")
    assert saved.size == s["nodes"]["total"] and saved.edges.shape[0] == s["kept"]["edges"] == len(graph["edges"])
    assert saved.rows.shape == (saved.targets.numel(), saved.size) and saved.targets.numel() < saved.size
    viewer = json.loads((tmp_path / "v" / "p.json").read_text())
    assert viewer["metadata"]["slug"] == "p" and len(viewer["links"]) == len(graph["edges"])


def test_graph_cli_with_a_cross_layer_transcoder(tmp_path, capsys):
    """A CLT over parens' three MLPs (trained here), saved with its sites listed, is read by `mechscope graph`."""
    from mechscope.sae.clt import CLTConfig, CrossLayerTranscoderSAE

    torch.set_num_threads(1)
    torch.manual_seed(0)
    zm = load_zoo("parens")
    model = zm.model.eval()
    ins, outs = [f"blocks.{l}.mlp:input" for l in range(3)], [f"blocks.{l}.mlp" for l in range(3)]
    with torch.no_grad(), capture(model, ins + outs) as acts:
        model(zm.task.val_inputs[:1024])
    d = model.shape.d_model
    rows = torch.cat([acts[s].reshape(-1, d) for s in ins + outs], 1)
    clt = CrossLayerTranscoderSAE(CLTConfig(d_in=3 * d, latents=3 * 64, k=6, layers=3, d_out=3 * d))
    opt = torch.optim.Adam(clt.parameters(), lr=3e-3)
    for _ in range(300):
        loss = clt(rows[torch.randint(0, rows.shape[0], (1024,))]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_sae(clt.eval(), tmp_path / "clt", metadata={"site": ins, "target_site": outs})
    code = main(
        [
            "graph",
            "--model",
            "zoo:parens",
            "--prompt",
            "1 2 3 2 2 3 3",
            "--transcoders",
            str(tmp_path / "clt"),
            "--logit-position",
            "0",
            "--out",
            str(tmp_path / "g"),
            "--json",
        ]
    )
    s = json.loads(capsys.readouterr().out)
    assert code == 0 and s["exact"] and s["checks"]["max_relative_residual"] < 1e-4, s["checks"]
    assert s["nodes"]["latents"] > 0 and s["nodes"]["errors"] == 21

"""One attribution graph set up for mechscope and for circuit-tracer 0.5.0, and circuit-tracer's nodes mapped
onto mechscope's (issue 26). Used by ``bench/graph_vs_circuit_tracer.py`` (time, memory) and
``tests/integration/test_graph_circuittracer.py`` (the same graph, edge by edge).

circuit-tracer lives in its own venv (``.ci/setup-circuittracer``: it needs transformers ≤ 4.57 and nnsight 0.6.3);
it runs :data:`WORKER`, a script that imports only torch, safetensors and circuit_tracer, on a work folder that
:func:`prepare` fills:

    ids.safetensors               ids [T], the prompt's token ids (BOS first), read by both tools
    model/                        the model folder as transformers 4.57 reads it (:func:`peer_model_folder`)
    ct/L{l}/transcoder.safetensors   layer l's transcoder in circuit-tracer's format (``sae.formats``)
    mechscope/L{l}/               the same transcoder in mechscope's format, with its sites (mlp_in.l → mlp_out.l)

The transcoders are random JumpReLU ones (circuit-tracer's kind; with error nodes any transcoder makes the
replacement model exact): W_enc, W_dec ~ N(0, 1/d), b_enc = 0, b_dec ~ N(0, 0.01²), one threshold per layer set on
the prompt's MLP inputs so that ``active`` latents fire per position on average (BOS left out), halfway between
two pre-activations (a latent on the threshold would fire in one tool and not the other by rounding).

Node order. Both tools order nodes [latents by (layer, position, latent), errors (layer-major, L·T), tokens (T),
logits (most probable first)]: :func:`circuit_tracer_order` maps one onto the other by their labels, refusing node
sets that differ (it is the identity when both tools found the same nodes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.atomic import atomic_write_json, save_safetensors
from mechscope.graph.attribute import Nodes

WORKER = Path(__file__).with_name("circuit_tracer_worker.py")
"""The script circuit-tracer's python runs, as its source: ``python -c SOURCE WORK BATCH NODE_THRESHOLD EDGE_THRESHOLD
[VIEWER_SLUG]``. Never by path: its folder would come first on sys.path, and this package's ``html.py`` would shadow
the standard library's."""


def peer_model_folder(folder: Path, dst: Path, n_layers: int | None = None) -> Path:
    """``folder`` (a transformers 5.x Llama-family folder) as transformers 4.57 reads it, in ``dst`` (weights linked):
    4.57 does not read a 5.x config's ``rope_parameters`` nor its tokenizer class name, so the config carries
    ``rope_theta`` at the top and the tokenizer is a ``PreTrainedTokenizerFast``. ``n_layers``: keep the first
    that many blocks (the config says so; the unused weights are ignored)."""
    dst.mkdir(parents=True)
    for f in folder.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json"):
            (dst / f.name).symlink_to(f.resolve())
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.pop("backend", None)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"  # 5.x names its fast tokenizers' class TokenizersBackend
    atomic_write_json(dst / "tokenizer_config.json", tok)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
    cfg["rope_scaling"] = None
    if n_layers is not None:
        cfg["num_hidden_layers"] = n_layers
        cfg.pop("layer_types", None)
    atomic_write_json(dst / "config.json", cfg)
    return dst


def keep_layers(model: Any, n_layers: int) -> Any:
    """A Hugging Face Llama-family ``model`` cut to its first ``n_layers`` blocks, in place (what
    :func:`peer_model_folder` gives circuit-tracer)."""
    model.model.layers = model.model.layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_layers]
    return model


def prepare(
    work: Path,
    model: Any,
    folder: Path,
    ids: Tensor,
    latents: int,
    active: int,
    seed: int = 0,
    n_layers: int | None = None,
) -> None:
    """Fill ``work`` (see the module docstring) for ``model`` (loaded from ``folder``; cut to ``n_layers`` blocks
    already, if given) and the prompt ``ids`` [T]."""
    from mechscope.sae.formats import FORMATS
    from mechscope.sae.io import save_sae
    from mechscope.sae.transcoder_jumprelu import JumpReLUTranscoderConfig, JumpReLUTranscoderSAE
    from mechscope.sites import Site, capture

    save_safetensors(work / "ids.safetensors", {"ids": ids})
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    sites = [Site(f"model.layers.{l}.mlp", "input") for l in range(L)]
    with torch.no_grad(), capture(model, sites) as got:
        model(input_ids=ids[None])
    g = torch.Generator().manual_seed(seed)
    for l in range(L):
        W_enc = torch.randn(d, latents, generator=g) / d**0.5
        W_dec = torch.randn(latents, d, generator=g) / d**0.5
        b_dec = torch.randn(d, generator=g) * 0.01
        z = got[str(sites[l])][0, 1:] @ W_enc  # [T - 1, latents], BOS left out
        top = z.flatten().topk(active * z.shape[0] + 1).values
        theta = float(top[-2:].mean())  # halfway between two pre-activations: none sits on the threshold
        sae = JumpReLUTranscoderSAE(JumpReLUTranscoderConfig(d_in=d, latents=latents, d_out=d))
        with torch.no_grad():
            sae.W_enc.copy_(W_enc), sae.b_enc.zero_(), sae.W_dec.copy_(W_dec), sae.b_dec.copy_(b_dec)
            sae.threshold.fill_(theta)
        save_sae(sae, work / "mechscope" / f"L{l}", {"site": f"mlp_in.{l}", "target_site": f"mlp_out.{l}"})
        FORMATS["circuittracer"].save(sae, work / "ct" / f"L{l}", {})  # type: ignore[misc]
    peer_model_folder(folder, work / "model", n_layers)


def circuit_tracer_order(nodes: Nodes, active_features: Tensor) -> Tensor:
    """[N] the mechscope node of each circuit-tracer node: circuit-tracer's latents are ``active_features``
    [n_lat, 3] (layer, position, latent); its errors, tokens and logits are in mechscope's order. A latent
    mechscope does not have is refused (the two graphs' node sets differ)."""
    mine = {(int(l), int(p), int(i)): j for j, (l, p, i) in enumerate(zip(nodes.layer, nodes.pos, nodes.latent))}
    theirs = [(int(l), int(p), int(i)) for l, p, i in active_features.tolist()]
    missing = [k for k in theirs if k not in mine]
    if missing or len(theirs) != nodes.n_lat:
        raise ValueError(
            f"active_features: {len(theirs)} latents against mechscope's {nodes.n_lat}; "
            f"not in mechscope's: {missing[:5]}"
        )
    lat = torch.tensor([mine[k] for k in theirs], dtype=torch.long)
    return torch.cat([lat, torch.arange(nodes.n_lat, nodes.size)])

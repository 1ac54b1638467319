"""The local replacement model of one prompt: every MLP's output replaced by its transcoder's prediction
plus a frozen error node, attention patterns and norm scales frozen (:mod:`mechscope.graph.freeze`).

Shapes: B copies of the prompt in a replay batch, T tokens, d residual width, k latents kept per row,
V outputs. Per layer l with transcoder (W_enc, b_enc, W_dec, b_dec, optional W_skip):

    clean:    x_l = the MLP's input,  y_l = MLP(x_l)
              (a_l, i_l) = TopK codes of x_l  [T, k] values and latent indices
              e_l = y_l − (a_l W_dec[i_l] + b_dec + x_l W_skip)            the error node   [T, d]
    replay:   y'_l = a'_l W_dec[i_l] + b_dec + x'_l W_skip + e'_l

where a', e' and the embedding stream h'_0 (the residual entering block 0: token + position embeddings)
are leaves: with a' = a, e' = e, h'_0 = h_0 the replay reproduces the clean forward exactly, and because
attention and norms are frozen, every latent pre-activation x'_l W_enc + b_enc and every logit is an affine
function of the leaves. Its gradient at the leaves is the direct effect of each node (the skip term, like
attention, is a linear path, not a node). The encoder is never differentiated: a latent's value is a leaf.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from mechscope.errors import MechscopeError, UsageError
from mechscope.graph.freeze import Freezer, frozen, model_kind
from mechscope.sites import Site, capture, layer_list_path, patch, resolve_sites, stop_after


@dataclass(frozen=True, eq=False)
class LayerTranscoder:
    """The transcoder that replaces the MLP of one block."""

    layer: int
    mlp: str
    """Module path of the MLP (its input is read, its output replaced)."""
    sae: Any
    """A paired mechscope SAE (transcoder or skip-transcoder): ``encode_sparse``, ``W_dec``, ``b_dec``, ``skip``."""
    folder: str = ""


def mlp_paths(model: nn.Module) -> list[str]:
    """Module path of each block's MLP (``<blocks>.L.mlp``); a model without MLPs is refused."""
    base = layer_list_path(model)
    if base is None:
        raise UsageError(f"{type(model).__name__} has no block list we recognise; attribution graphs need one")
    names = dict(model.named_modules())
    n = len(names[base])  # type: ignore[arg-type]
    paths = [f"{base}.{i}.mlp" for i in range(n)]
    missing = [p for p in paths if not isinstance(names.get(p), nn.Module)]
    if missing:
        raise UsageError(f"blocks without an MLP ({', '.join(missing[:3])}): a replacement model needs an MLP in every "
                         "block (zoo:induction is attention-only; use zoo:parens, zoo:modadd or a Hugging Face model)")
    return paths


def find_transcoders(model: nn.Module, folder: str | Path) -> list[LayerTranscoder]:
    """One transcoder per MLP of ``model`` from the SAE folders under ``folder`` (found by their ``cfg.json``;
    each must record ``metadata.site`` = the MLP's input and ``metadata.target_site`` = its output)."""
    from mechscope.sae.io import load_sae

    root = Path(folder)
    if not root.is_dir():
        raise MechscopeError(f"--transcoders {root}: no such folder; pass the folder holding one trained transcoder per layer")
    paths = mlp_paths(model)
    layer_of = {p: i for i, p in enumerate(paths)}
    found: dict[int, LayerTranscoder] = {}
    for cfg_file in sorted(root.rglob("cfg.json")):
        sae = load_sae(cfg_file.parent)
        meta = getattr(sae, "metadata", None) or _metadata(cfg_file)
        site, target = meta.get("site"), meta.get("target_site")
        if not getattr(sae, "paired", False) or not site or not target:
            continue  # an SAE, not a transcoder: not ours to use
        s, t = (resolve_sites(model, x)[0] for x in (site, target))
        if s.module != t.module or s.io != "input" or t.io != "output" or s.module not in layer_of:
            raise MechscopeError(f"{cfg_file.parent}: transcoder reads {site} and writes {target}, not one MLP's input "
                                 "and output; graphs need mlp_in.L → mlp_out.L transcoders")
        L = layer_of[s.module]
        if L in found:
            raise MechscopeError(f"two transcoders for layer {L} ({found[L].folder} and {cfg_file.parent}); keep one")
        found[L] = LayerTranscoder(L, s.module, sae.eval().requires_grad_(False), str(cfg_file.parent))
    missing = [i for i in range(len(paths)) if i not in found]
    if missing:
        raise MechscopeError(f"{root}: no transcoder for layer(s) {missing}; train them with `mechscope train --site "
                             f"mlp_in.L --target-site mlp_out.L --arch transcoder` (found {len(found)} of {len(paths)})")
    return [found[i] for i in range(len(paths))]


def _metadata(cfg_file: Path) -> dict:
    import json
    return json.loads(cfg_file.read_text()).get("metadata") or {}


def run_logits(model: nn.Module, ids: Tensor) -> Tensor:
    """Logits [B, T, V] of ``ids`` [B, T] (zoo models take tokens, Hugging Face models ``input_ids``)."""
    if model_kind(model) == "zoo":
        return model(ids)
    return model(input_ids=ids, use_cache=False).logits


@dataclass(frozen=True, eq=False)
class Recording:
    """The clean forward of one prompt, seen through the transcoders (batch dimension dropped)."""

    ids: Tensor
    """[T] token ids."""
    emb: Tensor
    """[T, d] the residual stream entering block 0."""
    mlp_in: list[Tensor]
    """Per layer, [T, d_in] the MLP's input x_l."""
    acts: list[Tensor]
    """Per layer, [T, k] TopK code values a_l (zeros are inactive slots)."""
    idx: list[Tensor]
    """Per layer, [T, k] their latent indices i_l."""
    err: list[Tensor]
    """Per layer, [T, d] the error node e_l = y_l − prediction."""
    mlp_out: list[Tensor]
    """Per layer, [T, d] the MLP's true output y_l."""
    logits: Tensor
    """[T, V] the model's logits."""


@dataclass(frozen=True, eq=False)
class Leaves:
    """The replay's inputs, each [B, ...]: set ``requires_grad`` on them to read direct effects."""

    emb: Tensor
    acts: list[Tensor]
    err: list[Tensor]

    @classmethod
    def of(cls, rec: Recording, batch: int, grad: bool = False, zero: bool = False) -> "Leaves":
        def leaf(t: Tensor) -> Tensor:
            v = (torch.zeros_like(t) if zero else t).unsqueeze(0).expand(batch, *t.shape).clone()
            return v.requires_grad_(grad)
        return cls(leaf(rec.emb), [leaf(a) for a in rec.acts], [leaf(e) for e in rec.err])


class ReplacementModel:
    """A model with one transcoder per MLP; :meth:`record` runs the clean forward, :meth:`replay` the
    frozen linear one, :meth:`spliced_logits` the global replacement model (no error nodes, nothing frozen)."""

    def __init__(self, model: nn.Module, transcoders: list[LayerTranscoder], freeze_attention: bool = True) -> None:
        self.model = model
        self.tcs = transcoders
        self.freezer = Freezer()
        self.freeze_attention = freeze_attention
        self.block0 = Site(f"{layer_list_path(model)}.0", "input", None)

    @property
    def n_layers(self) -> int:
        return len(self.tcs)

    @torch.no_grad()
    def record(self, ids: Tensor) -> Recording:
        """The clean forward of ``ids`` [T] with norms and attention recorded."""
        self.freezer.mode, self.freezer.store = "record", {}
        sites = [self.block0] + [Site(tc.mlp, io, None) for tc in self.tcs for io in ("input", "output")]
        with frozen(self.model, self.freezer, self.freeze_attention), capture(self.model, sites) as got:
            logits = run_logits(self.model, ids[None])[0]
        emb = got[str(self.block0)][0]
        mlp_in, acts, idx, err, outs = [], [], [], [], []
        for tc in self.tcs:
            x, y = got[f"{tc.mlp}:input"][0], got[tc.mlp][0]
            if (x.shape[-1], y.shape[-1]) != (tc.sae.d_in, tc.sae.d_out):
                raise MechscopeError(f"transcoder {tc.folder or tc.layer} reads {tc.sae.d_in} and writes {tc.sae.d_out} columns but "
                                     f"{tc.mlp} reads {x.shape[-1]} and writes {y.shape[-1]}: it was trained on another model")
            codes = tc.sae.encode_sparse(x)
            a, i = codes.top_acts, codes.top_indices
            pred = self.decode(tc, a[None], i, x[None])[0]
            mlp_in.append(x), acts.append(a), idx.append(i), err.append(y - pred), outs.append(y)
        return Recording(ids, emb, mlp_in, acts, idx, err, outs, logits)

    @staticmethod
    def decode(tc: LayerTranscoder, acts: Tensor, idx: Tensor, x: Tensor) -> Tensor:
        """a W_dec[i] + b_dec + x W_skip. acts: [B, T, k], idx: [T, k], x: [B, T, d_in] → [B, T, d_out]."""
        W = tc.sae.W_dec[idx]  # [T, k, d_out]
        out = torch.einsum("btk,tkd->btd", acts, W) + tc.sae.b_dec
        skip = tc.sae.skip(x.reshape(-1, x.shape[-1]))
        return out if skip is None else out + skip.reshape(*x.shape[:-1], -1)

    @contextlib.contextmanager
    def _replaced(self, rec: Recording, leaves: Leaves) -> Iterator[dict[str, Tensor]]:
        """Inside: block 0 reads ``leaves.emb``, each MLP writes the transcoder's output from the leaves; the
        yielded dict fills with every MLP's live input (with gradient)."""
        in_sites = [Site(tc.mlp, "input", None) for tc in self.tcs]
        with contextlib.ExitStack() as stack:
            xs = stack.enter_context(capture(self.model, in_sites, detach=False))
            stack.enter_context(patch(self.model, self.block0, lambda act: leaves.emb))
            for l, tc in enumerate(self.tcs):
                def out(act: Tensor, l: int = l, tc: LayerTranscoder = tc) -> Tensor:
                    return self.decode(tc, leaves.acts[l], rec.idx[l], xs[f"{tc.mlp}:input"]) + leaves.err[l]
                stack.enter_context(patch(self.model, Site(tc.mlp, "output", None), out))
            yield xs

    def replay(self, rec: Recording, leaves: Leaves, stop_layer: int | None = None) -> tuple[list[Tensor | None], Tensor | None]:
        """The frozen forward from ``leaves`` (batch B). Returns (each MLP's input [B, T, d_in] or None where
        the forward stopped before it, logits [B, T, V] or None). ``stop_layer`` L stops once MLP L's
        input is known (targets in layer L need nothing later)."""
        self.freezer.mode = "replay"
        B = leaves.emb.shape[0]
        ids = rec.ids[None].expand(B, -1)
        logits = None
        with frozen(self.model, self.freezer, self.freeze_attention), self._replaced(rec, leaves) as xs:
            if stop_layer is None:
                logits = run_logits(self.model, ids)
            else:
                with stop_after(self.model, [Site(self.tcs[stop_layer].mlp, "input", None)]):
                    run_logits(self.model, ids)
        return [xs.get(f"{tc.mlp}:input") for tc in self.tcs], logits

    @torch.no_grad()
    def spliced_logits(self, ids: Tensor) -> Tensor:
        """The global replacement model: every MLP's output replaced by its transcoder's prediction from the
        live input, no error nodes, attention and norms live. ids: [T] → logits [T, V]."""
        with contextlib.ExitStack() as stack:
            xs = stack.enter_context(capture(self.model, [Site(tc.mlp, "input", None) for tc in self.tcs]))
            for tc in self.tcs:
                def out(act: Tensor, tc: LayerTranscoder = tc) -> Tensor:
                    x = xs[f"{tc.mlp}:input"]
                    return tc.sae.predict(x.reshape(-1, x.shape[-1])).reshape(act.shape)
                stack.enter_context(patch(self.model, Site(tc.mlp, "output", None), out))
            return run_logits(self.model, ids[None])[0]


__all__ = ["LayerTranscoder", "Leaves", "Recording", "ReplacementModel", "find_transcoders", "mlp_paths", "run_logits"]

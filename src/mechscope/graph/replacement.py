"""The local replacement model of one prompt: every MLP's output replaced by its transcoder's prediction
plus a frozen error node, attention patterns and norm scales frozen (:mod:`mechscope.graph.freeze`).

Shapes: B copies of the prompt in a replay batch, T tokens, d residual width, k latents kept per row,
V outputs. Per layer l with transcoder (W_enc, b_enc, W_dec, b_dec, optional W_skip):

    clean:    x_l = the MLP's input,  y_l = MLP(x_l)  (or p2(MLP(x_l)): the write after a post-feedforward norm)
              (a_l, i_l) = TopK codes of x_l  [T, k] values and latent indices
              e_l = y_l − (a_l W_dec[i_l] + b_dec + x_l W_skip)            the error node   [T, d]
    replay:   y'_l = a'_l W_dec[i_l] + b_dec + x'_l W_skip + e'_l

(with a cross-layer transcoder, :class:`CLTLayer`, y'_l sums the writes of the latents of every layer ≤ l),
where a', e' and the embedding stream h'_0 (the residual entering block 0: token + position embeddings)
are leaves: with a' = a, e' = e, h'_0 = h_0 the replay reproduces the clean forward exactly, and because
attention and norms are frozen, every latent pre-activation x'_l W_enc + b_enc and every logit is an affine
function of the leaves. Its gradient at the leaves is the direct effect of each node (the skip term, like
attention, is a linear path, not a node). The encoder is never differentiated: a latent's value is a leaf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from mechscope.errors import MechscopeError, UsageError
from mechscope.graph.freeze import Freezer, frozen, model_kind, skipped
from mechscope.models.families import family_of
from mechscope.sites import Site, capture, layer_list_path, patch, resolve_sites


@dataclass(frozen=True, eq=False)
class LayerTranscoder:
    """The latents that read the MLP input of one block: a per-layer transcoder (or skip-transcoder).

    The replacement model only uses the methods below, so a cross-layer transcoder's layer
    (:class:`CLTLayer`) is used the same way."""

    layer: int
    mlp: str
    """Module path of the MLP (its input is read; its output replaced unless :attr:`out` names another module)."""
    sae: Any
    """A paired mechscope SAE (transcoder or skip-transcoder): ``encode_sparse``, ``W_dec``, ``b_dec``, ``skip``."""
    folder: str = ""
    out: str = ""
    """Module path whose output the transcoder predicts and replaces: the MLP (empty, the default) or the
    family's post-feedforward norm of the same block (Gemma 2/3, OLMo 2: the MLP's write to the residual
    stream, the ``mlp_out`` alias), which the replaced unit then includes."""

    @property
    def out_module(self) -> str:
        """:attr:`out`, or the MLP when it is empty."""
        return self.out or self.mlp

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.b_dec.shape[0])

    @property
    def W_enc(self) -> Tensor:
        """[d_in, m] the encoder of this layer's latents."""
        return self.sae.W_enc

    @property
    def b_enc(self) -> Tensor:
        return self.sae.b_enc

    @property
    def b_dec(self) -> Tensor:
        """[d_out] the constant this dictionary adds to this layer's MLP output."""
        return self.sae.b_dec

    def encode_sparse(self, x: Tensor) -> Any:
        """SparseCodes (values, indices into this layer's latents) of x [N, d_in]."""
        return self.sae.encode_sparse(x)

    def writes(self, target: int) -> Tensor | None:
        """[m, d_out] what this layer's latents write to MLP ``target``'s output (None: nothing)."""
        return self.sae.W_dec if target == self.layer else None

    def skip(self, x: Tensor) -> Tensor | None:
        """The linear term x W_skip added to this layer's output, [N, d_out] (None: none)."""
        return self.sae.skip(x)

    def residual_write(self, latent: int) -> Tensor:
        """[d] everything latent ``latent`` writes into the residual stream per unit of activation (all its targets)."""
        return self.sae.W_dec[latent]


@dataclass(frozen=True, eq=False)
class CLTLayer(LayerTranscoder):
    """Layer ``layer`` of a cross-layer transcoder (:mod:`mechscope.sae.clt`): its m latents read this MLP's
    input and write to this and every later MLP's output. ``sae`` is the whole cross-layer transcoder."""

    @property
    def _m(self) -> int:
        return self.sae.per_layer

    @property
    def W_enc(self) -> Tensor:
        di, m, l = self.sae.cfg.d_in // self.sae.cfg.layers, self._m, self.layer
        return self.sae.W_enc[l * di : (l + 1) * di, l * m : (l + 1) * m]

    @property
    def b_enc(self) -> Tensor:
        return self.sae.b_enc[self.layer * self._m : (self.layer + 1) * self._m]

    @property
    def b_dec(self) -> Tensor:
        do = self.sae.d_out // self.sae.cfg.layers
        return self.sae.b_dec[self.layer * do : (self.layer + 1) * do]

    def encode_sparse(self, x: Tensor) -> Any:
        """This layer's codes by the dictionary's own rule (ReLU(TopK) of a ``clt``, JumpReLU of a ``jumprelu_clt``)."""
        return self.sae.layer_codes(x, self.layer)

    def writes(self, target: int) -> Tensor | None:
        if target < self.layer or target >= self.sae.cfg.layers:  # layers past the CLT's last are not its to write
            return None
        do, m, l = self.sae.d_out // self.sae.cfg.layers, self._m, self.layer
        return self.sae.W_dec[l * m : (l + 1) * m, target * do : (target + 1) * do]

    def skip(self, x: Tensor) -> Tensor | None:
        return None

    def residual_write(self, latent: int) -> Tensor:
        do, L = self.sae.d_out // self.sae.cfg.layers, self.sae.cfg.layers
        return self.sae.W_dec[self.layer * self._m + latent].reshape(L, do).sum(0)


def mlp_paths(model: nn.Module) -> list[str]:
    """Module path of each block's MLP (``<blocks>.L.mlp``); a model without MLPs is refused."""
    base = layer_list_path(model)
    if base is None:
        raise UsageError(f"{type(model).__name__} has no block list we recognise; attribution graphs need one")
    names = dict(model.named_modules())
    n = len(cast(nn.ModuleList, names[base]))
    paths = [f"{base}.{i}.mlp" for i in range(n)]
    missing = [p for p in paths if not isinstance(names.get(p), nn.Module)]
    if missing:
        raise UsageError(
            f"blocks without an MLP ({', '.join(missing[:3])}): a replacement model needs an MLP in every "
            "block (zoo:induction is attention-only; use zoo:parens, zoo:modadd or a Hugging Face model)"
        )
    return paths


def _dictionaries(root: Path) -> list[tuple[Any, dict, Path]]:
    """(dictionary, metadata, where) of each dictionary at ``root``: one of any format (a cross-layer transcoder), a set
    (circuit-tracer's ``config.yaml`` with a file per layer), or a folder of mechscope folders found by their
    ``cfg.json`` at any depth."""
    from mechscope.sae.formats import FORMATS, load_members
    from mechscope.sae.io import load_sae

    if any(f.detect(root) for f in FORMATS.values()):
        members = load_members(root)
        saes = members if members is not None else {"": load_sae(root)}
        return [(sae, getattr(sae, "metadata", None) or {}, root / name) for name, sae in saes.items()]
    out = []
    for cfg_file in sorted(root.rglob("cfg.json")):
        sae = load_sae(cfg_file.parent)
        out.append((sae, getattr(sae, "metadata", None) or _metadata(cfg_file), cfg_file.parent))
    return out


def transcoders_folder(folder: str | Path) -> Path:
    """The local folder that ``folder`` (a path or a hub id) names, refused by name when it does not exist: called
    by :func:`find_transcoders`, and by a command before it loads the model, so a mistyped path costs nothing."""
    from mechscope.sae.io import sae_location

    root = sae_location(folder)
    if not root.is_dir():
        raise MechscopeError(
            f"`transcoders` {root}: no such folder; pass the folder holding one trained transcoder per layer"
        )
    return root


def find_transcoders(model: nn.Module, folder: str | Path) -> list[LayerTranscoder]:
    """One transcoder per MLP of ``model`` from the dictionaries at ``folder`` (a local folder or a hub id
    ``org/name[:subfolder]`` read from huggingface_hub's cache, :func:`mechscope.sae.io.sae_location`): mechscope
    transcoder folders (each recording ``metadata.site`` = the MLP's input and ``metadata.target_site`` = its output),
    a cross-layer transcoder, or a circuit-tracer transcoder set or CLT (its config names the sites)."""
    root = transcoders_folder(folder)
    paths = mlp_paths(model)
    layer_of = {p: i for i, p in enumerate(paths)}
    found: dict[int, LayerTranscoder] = {}
    for sae, meta, where in _dictionaries(root):
        site, target = meta.get("site"), meta.get("target_site")
        if not getattr(sae, "paired", False) or not site or not target:
            continue  # an SAE, not a transcoder: not ours to use
        if isinstance(site, list):  # a cross-layer transcoder: one view per layer it reads
            for l, (si, ti) in enumerate(zip(site, target)):
                _add(model, found, layer_of, si, ti, sae, where, CLTLayer, clt_layer=l)
            continue
        _add(model, found, layer_of, site, target, sae, where, LayerTranscoder)
    missing = [i for i in range(len(paths)) if i not in found]
    if missing:
        raise MechscopeError(
            f"{root}: no transcoder for layer(s) {missing}; train them with `mechscope train --site "
            f"mlp_in.L --target-site mlp_out.L --arch transcoder` (found {len(found)} of {len(paths)})"
        )
    return [found[i] for i in range(len(paths))]


def _write_modules(model: nn.Module, layer: int, mlp: str) -> tuple[str, ...]:
    """Modules of block ``layer`` whose output a transcoder reading MLP ``mlp`` may predict: the MLP itself and,
    in a family with a post-feedforward norm (Gemma 2/3, OLMo 2), that norm (the ``mlp_out`` alias)."""
    try:
        f = family_of(model)
    except UsageError:
        return (mlp,)
    return (mlp,) if f.mlp_post_norm is None else (mlp, f"{layer_list_path(model)}.{layer}.{f.mlp_post_norm}")


def _add(
    model: nn.Module,
    found: dict,
    layer_of: dict,
    site: str,
    target: str,
    sae: Any,
    folder: Path,
    cls: type,
    clt_layer: int | None = None,
) -> None:
    """Check that ``site`` → ``target`` is one MLP's input → its output (or its block's post-feedforward norm's
    output) and record that layer's ``cls`` view."""
    s, t = (resolve_sites(model, x)[0] for x in (site, target))
    L = layer_of.get(s.module)
    if L is None or s.io != "input" or t.io != "output" or t.module not in _write_modules(model, L, s.module):
        raise MechscopeError(
            f"{folder}: transcoder reads {site} and writes {target}, not one MLP's input "
            "and output; graphs need mlp_in.L → mlp_out.L transcoders"
        )
    if clt_layer is not None and clt_layer != L:
        raise MechscopeError(
            f"{folder}: a cross-layer transcoder's layer {clt_layer} reads {site}, the MLP of layer {L}; "
            "its sites must be the MLPs of layers 0, 1, … in order"
        )
    if L in found:
        raise MechscopeError(f"two transcoders for layer {L} ({found[L].folder} and {folder}); keep one")
    out = "" if t.module == s.module else t.module
    found[L] = cls(L, s.module, sae.eval().requires_grad_(False), str(folder), out)


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
    def of(
        cls,
        rec: Recording,
        batch: int,
        grad: bool = False,
        zero: bool = False,
        keep_pos0: bool = False,
        keep_emb0: bool = True,
    ) -> Leaves:
        """The clean leaves, copied ``batch`` times; ``zero``: all zero (position 0 kept clean with ``keep_pos0``:
        the latents and error nodes, and the embedding too unless ``keep_emb0`` is False)."""

        def leaf(t: Tensor, keep: bool = True) -> Tensor:
            z = t
            if zero:
                z = torch.zeros_like(t)
                if keep_pos0 and keep:
                    z[0] = t[0]
            v = z.unsqueeze(0).expand(batch, *t.shape).clone()
            return v.requires_grad_(grad)

        return cls(leaf(rec.emb, keep_emb0), [leaf(a) for a in rec.acts], [leaf(e) for e in rec.err])


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
        sites = [self.block0] + [
            s for tc in self.tcs for s in (Site(tc.mlp, "input", None), Site(tc.out_module, "output", None))
        ]
        with frozen(self.model, self.freezer, self.freeze_attention), capture(self.model, sites) as got:
            logits = run_logits(self.model, ids[None])[0]
        emb = got[str(self.block0)][0]
        mlp_in, acts, idx, err, outs = [], [], [], [], []
        for tc in self.tcs:
            x, y = got[f"{tc.mlp}:input"][0], got[tc.out_module][0]
            if (x.shape[-1], y.shape[-1]) != (tc.d_in, tc.d_out):
                raise MechscopeError(
                    f"transcoder {tc.folder or tc.layer} reads {tc.d_in} and writes {tc.d_out} columns but "
                    f"{tc.out_module} reads {x.shape[-1]} and writes {y.shape[-1]}: it was trained on another model"
                )
            codes = tc.encode_sparse(x)
            mlp_in.append(x)
            acts.append(codes.values)
            idx.append(codes.indices)
            outs.append(y)
            pred = self.decode(tc.layer, [a[None] for a in acts], idx, x[None], [a != 0 for a in acts])[0]
            err.append(y - pred)
        return Recording(ids, emb, mlp_in, acts, idx, err, outs, logits)

    def decode(
        self, target: int, acts: list[Tensor], idx: list[Tensor], x: Tensor, live: list[Tensor] | None = None
    ) -> Tensor:
        """MLP ``target``'s replacement output Σ_{l ≤ target} a_l W^{l→target}[i_l] + b_dec + x W_skip (one term
        for a per-layer transcoder). acts[l]: [B, T, k], idx[l]: [T, k] for l ≤ target; x: [B, T, d_in] → [B, T, d_out].

        ``live[l]``: [T, k] bool, the only slots that may be non-zero (the others are left out). Without it every
        slot's decoder row is gathered, [T, k, d_out] per layer with k the prompt's largest row L0 (BOS's can be in
        the hundreds), and an autograd replay keeps that gather; with it, [n_live, d_out] (n_live ≈ T × L0)."""
        tc = self.tcs[target]
        out = tc.b_dec
        for l in range(target + 1):
            W = self.tcs[l].writes(target)
            if W is None:
                continue
            if live is None:
                out = out + torch.einsum("btk,tkd->btd", acts[l], W[idx[l]])
                continue
            t, j = live[l].nonzero(as_tuple=True)
            a = acts[l][:, t, j]  # [B, n_live]
            rows = a.unsqueeze(-1) * W[idx[l][t, j]]  # [B, n_live, d_out]
            out = out + a.new_zeros(a.shape[0], idx[l].shape[0], W.shape[1]).index_add(1, t, rows)
        skip = tc.skip(x.reshape(-1, x.shape[-1]))
        return out if skip is None else out + skip.reshape(*x.shape[:-1], -1)

    @contextlib.contextmanager
    def _replaced(self, rec: Recording, leaves: Leaves) -> Iterator[dict[str, Tensor]]:
        """Inside: block 0 reads ``leaves.emb``, each MLP writes the transcoder's output from the leaves; the
        yielded dict fills with every MLP's live input (with gradient). The MLPs themselves are not run (their
        output is replaced): each returns zeros of its output's shape, without gradient."""
        in_sites = [Site(tc.mlp, "input", None) for tc in self.tcs]
        live = [a != 0 for a in rec.acts]  # the recorded active slots: the others are zero in every replay
        with contextlib.ExitStack() as stack:
            xs = stack.enter_context(capture(self.model, in_sites, detach=False))
            stack.enter_context(patch(self.model, self.block0, lambda act: leaves.emb))
            for l, tc in enumerate(self.tcs):
                stack.enter_context(
                    skipped(
                        self.model.get_submodule(tc.mlp), lambda x, *_a, d=tc.d_out, **_k: x.new_zeros(*x.shape[:-1], d)
                    )
                )

                def out(act: Tensor, l: int = l, tc: LayerTranscoder = tc) -> Tensor:
                    return self.decode(l, leaves.acts, rec.idx, xs[f"{tc.mlp}:input"], live) + leaves.err[l]

                stack.enter_context(patch(self.model, Site(tc.out_module, "output", None), out))
            yield xs

    def replay(self, rec: Recording, leaves: Leaves) -> tuple[list[Tensor], Tensor]:
        """The frozen forward from ``leaves`` (batch B). Returns (each MLP's input [B, T, d_in], logits [B, T, V])."""
        self.freezer.mode = "replay"
        B = leaves.emb.shape[0]
        ids = rec.ids[None].expand(B, -1)
        with frozen(self.model, self.freezer, self.freeze_attention), self._replaced(rec, leaves) as xs:
            logits = run_logits(self.model, ids)
        return [xs[f"{tc.mlp}:input"] for tc in self.tcs], logits

    @torch.no_grad()
    def spliced_logits(self, ids: Tensor, exact_pos0: bool = False) -> Tensor:
        """The global replacement model: every MLP's output replaced by its transcoder's prediction from the
        live input, no error nodes, attention and norms live (with ``exact_pos0``, position 0, BOS, keeps the
        MLPs' true outputs: a constant of the model). ids: [T] → logits [T, V]."""
        acts: list[Tensor] = []
        idx: list[Tensor] = []
        with contextlib.ExitStack() as stack:
            xs = stack.enter_context(capture(self.model, [Site(tc.mlp, "input", None) for tc in self.tcs]))
            for l, tc in enumerate(self.tcs):

                def out(act: Tensor, l: int = l, tc: LayerTranscoder = tc) -> Tensor:
                    x = xs[f"{tc.mlp}:input"]  # [1, T, d_in], the live input
                    codes = tc.encode_sparse(x[0])
                    acts.append(codes.values[None])
                    idx.append(codes.indices)
                    pred = self.decode(l, acts, idx, x, [a[0] != 0 for a in acts])
                    if exact_pos0:
                        pred = torch.cat([act[:, :1], pred[:, 1:]], dim=1)
                    return pred

                stack.enter_context(patch(self.model, Site(tc.out_module, "output", None), out))
            return run_logits(self.model, ids[None])[0]


__all__ = [
    "CLTLayer",
    "LayerTranscoder",
    "Leaves",
    "Recording",
    "ReplacementModel",
    "find_transcoders",
    "transcoders_folder",
    "mlp_paths",
    "run_logits",
]

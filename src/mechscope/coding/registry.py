"""Coders by name. Each entry builds a ready coder ``x [B, d] → SparseCodes`` from a dictionary and a config.

A builder gets ``(dictionary, cfg, encoder, fit_rows)``; pursuits ignore the last two, encoder-based
coders need ``encoder``, and ``encoder_scaled`` fits its scale on ``fit_rows`` once, at build time.
CLI choices and the frontier sweep read :data:`CODERS`; nothing branches on a coder's name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from torch import Tensor

from mechscope.coding.base import CodingConfig, Dictionary, DictionaryLike, Encoder, SparseCodes, as_dictionary
from mechscope.coding.encoder import encoder_code, encoder_nnls, encoder_scaled, fit_posthoc_scale
from mechscope.coding.omp import orthogonal_matching_pursuit
from mechscope.coding.pursuit import gradient_pursuit, matching_pursuit

Coder = Callable[[Tensor], SparseCodes]
CoderBuilder = Callable[[Dictionary, CodingConfig, "Encoder | None", "Tensor | None"], Coder]


class Pursuit(Protocol):
    """A coder from the dictionary alone: (x [B, d], dictionary, cfg) → SparseCodes."""

    def __call__(self, x: Tensor, /, dictionary: Dictionary, cfg: CodingConfig) -> SparseCodes: ...


def _pursuit(fn: Pursuit) -> CoderBuilder:
    def build(dic: Dictionary, cfg: CodingConfig, encoder: Encoder | None, fit_rows: Tensor | None) -> Coder:
        return partial(fn, dictionary=dic, cfg=cfg)

    return build


def _need(encoder: Encoder | None, what: str) -> Encoder:
    if encoder is None:
        raise ValueError(f"coder {what!r} needs an encoder callable (an SAE's encode)")
    return encoder


def _encoder(dic: Dictionary, cfg: CodingConfig, encoder: Encoder | None, fit_rows: Tensor | None) -> Coder:
    return partial(encoder_code, encoder=_need(encoder, "encoder"), k=cfg.k)


def _encoder_nnls(dic: Dictionary, cfg: CodingConfig, encoder: Encoder | None, fit_rows: Tensor | None) -> Coder:
    return partial(encoder_nnls, dictionary=dic, encoder=_need(encoder, "encoder_nnls"), cfg=cfg)


def _encoder_scaled(dic: Dictionary, cfg: CodingConfig, encoder: Encoder | None, fit_rows: Tensor | None) -> Coder:
    enc = _need(encoder, "encoder_scaled")
    if fit_rows is None:
        raise ValueError(
            "coder 'encoder_scaled' needs fit_rows to fit its scale on (keep them apart from evaluation rows)"
        )
    scale = fit_posthoc_scale(fit_rows, dic, enc, cfg)
    return partial(encoder_scaled, encoder=enc, scale=scale, k=cfg.k)


CODERS: dict[str, CoderBuilder] = {
    "encoder": _encoder,
    "encoder_nnls": _encoder_nnls,
    "encoder_scaled": _encoder_scaled,
    "mp": _pursuit(matching_pursuit),
    "omp": _pursuit(orthogonal_matching_pursuit),
    "gp": _pursuit(gradient_pursuit),
}

#: Coders that read the encoder; the others work from the dictionary alone.
NEEDS_ENCODER = frozenset({"encoder", "encoder_nnls", "encoder_scaled"})


def make_coder(
    name: str,
    dictionary: DictionaryLike | Dictionary | Tensor,
    cfg: CodingConfig = CodingConfig(),
    encoder: Encoder | None = None,
    fit_rows: Tensor | None = None,
) -> Coder:
    """Build the coder registered as ``name``: a callable x [B, d] → SparseCodes."""
    if name not in CODERS:
        raise KeyError(f"unknown coder {name!r}; choose from {sorted(CODERS)}")
    return CODERS[name](as_dictionary(dictionary), cfg, encoder, fit_rows)

"""Inference-time sparse coding: encode activations against any dictionary, without (or beside) an encoder.

Coders take x [B, d] and a dictionary (W_dec [n, d], optional b_dec [d]) and return a
:class:`SparseCodes` (values [B, k], indices [B, k]). Build one by name with :func:`make_coder`;
compare them with the SAE encoder along an L0 sweep with :func:`mechscope.coding.frontier.frontier`.
"""

from mechscope.coding.base import (
    CodingConfig,
    Dictionary,
    DictionaryLike,
    Encoder,
    SparseCodes,
    as_dictionary,
    top_k_code,
)
from mechscope.coding.encoder import encoder_code, encoder_nnls, encoder_scaled, fit_posthoc_scale
from mechscope.coding.omp import orthogonal_matching_pursuit
from mechscope.coding.pursuit import gradient_pursuit, matching_pursuit
from mechscope.coding.registry import CODERS, NEEDS_ENCODER, make_coder

__all__ = [
    "CODERS",
    "NEEDS_ENCODER",
    "CodingConfig",
    "Dictionary",
    "DictionaryLike",
    "Encoder",
    "SparseCodes",
    "as_dictionary",
    "encoder_code",
    "encoder_nnls",
    "encoder_scaled",
    "fit_posthoc_scale",
    "gradient_pursuit",
    "make_coder",
    "matching_pursuit",
    "orthogonal_matching_pursuit",
    "top_k_code",
]

"""Sparse dictionary learning: SAE architectures behind one base class, their trainer and files.

Train from an activation store (:func:`train_from_store`) or online from a model
(:func:`mechscope.sae.online.model_batches` feeding :class:`Trainer`). Importing this package
registers every architecture in :data:`REGISTRY`:
``relu`` (L1 weighted by decoder norms), ``topk`` (with AuxK), ``batchtopk`` (learned inference
threshold), ``matryoshka`` (BatchTopK with nested prefixes that each reconstruct), ``jumprelu``
(straight-through threshold, L0 or tanh penalty), ``gated``, and the transcoders ``transcoder`` and
``skip_transcoder`` (read one site, predict another; trained on paired rows; TopK) and their JumpReLU
forms ``jumprelu_transcoder`` and ``jumprelu_skip_transcoder``, and ``crosscoder`` (one
latent space read from and written to several sites), ``clt`` (cross-layer transcoder: layer l's latents
write every later MLP output; TopK per layer) and ``jumprelu_clt`` (the same with JumpReLU, as circuit-tracer's).
"""

from mechscope.sae.base import REGISTRY, ForwardOutput, SAEConfig, SparseAutoencoder, SparseCodes, register
from mechscope.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from mechscope.sae.clt import CLTConfig, CrossLayerTranscoderSAE
from mechscope.sae.clt_jumprelu import JumpReLUCLTConfig, JumpReLUCLTSAE
from mechscope.sae.crosscoder import CrosscoderConfig, CrosscoderSAE
from mechscope.sae.from_store import train_from_store, train_per_site
from mechscope.sae.gated import GatedConfig, GatedSAE
from mechscope.sae.held_out import evaluate
from mechscope.sae.io import SAEFormatError, load_sae, save_sae
from mechscope.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from mechscope.sae.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from mechscope.sae.relu import ReLUConfig, ReLUSAE
from mechscope.sae.topk import TopKConfig, TopKSAE
from mechscope.sae.trainer import (
    Member,
    NonFiniteError,
    OptimConfig,
    TrainConfig,
    Trainer,
)
from mechscope.sae.transcoder import TranscoderConfig, TranscoderSAE
from mechscope.sae.transcoder_jumprelu import (
    JumpReLUSkipTranscoderConfig,
    JumpReLUSkipTranscoderSAE,
    JumpReLUTranscoderConfig,
    JumpReLUTranscoderSAE,
)
from mechscope.sae.transcoder_skip import SkipTranscoderConfig, SkipTranscoderSAE

__all__ = [
    "REGISTRY",
    "ForwardOutput",
    "SAEConfig",
    "SparseAutoencoder",
    "SparseCodes",
    "register",
    "ReLUConfig",
    "ReLUSAE",
    "TopKConfig",
    "TopKSAE",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "MatryoshkaConfig",
    "MatryoshkaSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "GatedConfig",
    "GatedSAE",
    "TranscoderConfig",
    "TranscoderSAE",
    "SkipTranscoderConfig",
    "SkipTranscoderSAE",
    "JumpReLUTranscoderConfig",
    "JumpReLUTranscoderSAE",
    "JumpReLUSkipTranscoderConfig",
    "JumpReLUSkipTranscoderSAE",
    "CrosscoderConfig",
    "CrosscoderSAE",
    "CLTConfig",
    "CrossLayerTranscoderSAE",
    "JumpReLUCLTConfig",
    "JumpReLUCLTSAE",
    "SAEFormatError",
    "load_sae",
    "save_sae",
    "Member",
    "NonFiniteError",
    "OptimConfig",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "train_from_store",
    "train_per_site",
]

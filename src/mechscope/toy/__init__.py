"""Toy models of superposition with known truth: synthetic sparse features, toy models, feature and
data dimensionality, ground-truth recovery of dictionaries and a benchmark of every SAE architecture
and coder (see docs/toy.md)."""

from mechscope.toy.dimensionality import data_dimensionality, dims_per_feature, feature_dimensionality
from mechscope.toy.features import FeatureConfig, SyntheticFeatures, random_directions
from mechscope.toy.models import MODELS, ToyModelConfig, TrainedToy, train_toy
from mechscope.toy.recovery import Matching, cosines, hungarian, mmcs, support_scores

__all__ = [
    "FeatureConfig",
    "SyntheticFeatures",
    "random_directions",
    "MODELS",
    "ToyModelConfig",
    "TrainedToy",
    "train_toy",
    "data_dimensionality",
    "dims_per_feature",
    "feature_dimensionality",
    "Matching",
    "cosines",
    "hungarian",
    "mmcs",
    "support_scores",
]

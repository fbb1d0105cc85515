"""Metrics: Fréchet distance with a pluggable feature network; intervals for proportions."""
from .fid import (
    FeatureNet,
    InceptionFeatureNet,
    cached_feature_net,
    fd,
    fd_floor,
    fd_name,
    feature_stats,
    frechet_distance,
    convert_inception_weights,
    inception_feature_net,
    train_feature_net,
)
from .intervals import clopper_pearson, proportion

__all__ = [
    "clopper_pearson",
    "proportion",
    "FeatureNet",
    "InceptionFeatureNet",
    "cached_feature_net",
    "fd",
    "fd_floor",
    "fd_name",
    "feature_stats",
    "frechet_distance",
    "convert_inception_weights",
    "inception_feature_net",
    "train_feature_net",
]

"""Metrics: Fréchet distance with a pluggable feature network (more to come)."""
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

__all__ = [
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

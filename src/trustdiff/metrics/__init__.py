"""Metrics: Fréchet distance with a pluggable feature network; intervals for proportions; PSNR and SSIM."""
from .fid import (
    FeatureNet,
    InceptionFeatureNet,
    fd,
    fd_floor,
    fd_name,
    feature_stats,
    frechet_distance,
    convert_inception_weights,
    inception_feature_net,
)
from .intervals import clopper_pearson, proportion
from .quality import psnr, ssim

__all__ = [
    "clopper_pearson",
    "proportion",
    "psnr",
    "ssim",
    "FeatureNet",
    "InceptionFeatureNet",
    "fd",
    "fd_floor",
    "fd_name",
    "feature_stats",
    "frechet_distance",
    "convert_inception_weights",
    "inception_feature_net",
]

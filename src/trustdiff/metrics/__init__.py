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
from .intervals import bounded_mean, clopper_pearson, holm, mcnemar, outcome_bits, proportion, rank_correlation
from .quality import psnr, ssim

__all__ = [
    "clopper_pearson",
    "proportion", "bounded_mean", "rank_correlation",
    "mcnemar", "holm", "outcome_bits",
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

"""Certified robustness: randomized smoothing (Cohen et al. 2019) and denoised smoothing with a
diffusion model in front of an off-the-shelf classifier (Carlini et al. 2023).

    from trustdiff.certify import Smooth, DenoisedClassifier
    f = DenoisedClassifier(denoiser, classifier, sigma=0.25)     # an nn.Module, differentiable
    g = Smooth(f, num_classes=10, sigma=0.25)
    c, radius = g.certify(x, n0=100, n=10_000, alpha=0.001, batch_size=1000, generator=gen)

Base classifiers (standard and noise-trained) are trained by :mod:`trustdiff.train.classifier`.

Images are C×H×W (one) or N×C×H×W in [0, 1]; σ and radii are in [0, 1]-pixel units.
"""
from . import report
from .denoised import DenoisedClassifier, model_sigma
from .evaluate import Row, certify_set, select_indices
from .report import merge_shards
from .smooth import (Smooth, certified_radius, check_certify_arguments, lower_confidence_bound, max_radius,
                     min_count_to_certify)

__all__ = [
    "Smooth", "lower_confidence_bound", "certified_radius", "max_radius", "min_count_to_certify",
    "check_certify_arguments",
    "DenoisedClassifier", "model_sigma",
    "Row", "certify_set", "select_indices", "merge_shards", "report",
]

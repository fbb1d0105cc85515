"""Network builders: diffusers UNets under named sizes, pixel-space classifiers."""
from .classifier import CLASSIFIERS, SmallCNN, build_classifier
from .unet import COND_UNET_CONFIGS, UNET_CONFIGS, build_cond_unet, build_unet, null_label

__all__ = [
    "CLASSIFIERS",
    "COND_UNET_CONFIGS",
    "SmallCNN",
    "UNET_CONFIGS",
    "build_classifier",
    "build_cond_unet",
    "build_unet",
    "null_label",
]

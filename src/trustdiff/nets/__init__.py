"""Network builders: diffusers UNets under named sizes, pixel-space classifiers."""
from .classifier import CLASSIFIERS, SmallCNN, WideResNet, build_classifier, parse_arch
from .unet import COND_UNET_CONFIGS, UNET_CONFIGS, build_cond_unet, build_unet, null_label

__all__ = [
    "CLASSIFIERS",
    "COND_UNET_CONFIGS",
    "SmallCNN",
    "WideResNet",
    "parse_arch",
    "UNET_CONFIGS",
    "build_classifier",
    "build_cond_unet",
    "build_unet",
    "null_label",
]

"""Data: the embedded digits default and loaders for MNIST idx, CIFAR-10 batches, image folders
and .npz. Everything loads as an :class:`ImageSet` of uint8 N×H×W×C images + int64 labels."""
from .imageset import ImageDataset, ImageSet
from .loaders import (load, load_cifar10, load_digits, load_image_folder, load_mnist_idx, load_npz,
                      resize)

__all__ = ["ImageSet", "ImageDataset", "load", "load_digits", "load_mnist_idx", "load_cifar10",
           "load_image_folder", "load_npz", "resize"]

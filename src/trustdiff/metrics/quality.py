"""Per-image fidelity between two image batches in [0, 1]: PSNR and SSIM (the one place both are
computed; SSIM through torchmetrics with its defaults: Gaussian window 11, σ = 1.5)."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..images import check_images


def _pair(x: torch.Tensor, y: torch.Tensor) -> None:
    check_images(x, name="x")
    check_images(y, name="y")
    if x.shape != y.shape:
        raise InputError(f"images: expected two batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, peak 1: 10·log10(1 / MSE); +inf for identical images. Returns [N]."""
    _pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image (data range 1, 11×11 Gaussian window, σ = 1.5). Returns [N]. The window
    shrinks to the image for images smaller than 11 pixels a side."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _pair(x, y)
    k = min(11, x.shape[-1], x.shape[-2])
    k -= 1 - k % 2                                   # odd
    return structural_similarity_index_measure(x.double(), y.double(), data_range=1.0, kernel_size=k,
                                               reduction="none").float()

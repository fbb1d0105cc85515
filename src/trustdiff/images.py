"""The one place for image conventions.

* **Pixel space**: float32 tensors, N×C×H×W, values in [0, 1]. Every public boundary uses it.
* **Model space**: the same tensors mapped to [-1, 1] (:func:`to_model`), where diffusion models
  and their noise levels σ live.
* **uint8** enters only through :func:`from_uint8` and leaves through :func:`to_uint8`; arrays on
  disk are N×H×W (grayscale) or N×H×W×C (HWC), as NumPy and PIL store them.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import InputError

#: slack allowed on the [0, 1] range check, for values that went through float arithmetic
RANGE_TOL = 1e-4


def to_model(x: torch.Tensor) -> torch.Tensor:
    """Pixel space [0, 1] → model space [-1, 1]: ``2x - 1``. Any shape."""
    return x * 2.0 - 1.0


def to_pixel(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] → pixel space [0, 1]: ``(x + 1) / 2``. Any shape; does not clamp
    (clamping would hide gradients); use :func:`clamp_pixel` where a valid image is needed."""
    return (x + 1.0) / 2.0


def clamp_pixel(x: torch.Tensor) -> torch.Tensor:
    """Clamp to the pixel range [0, 1]."""
    return x.clamp(0.0, 1.0)


def sigma_to_model(sigma):
    """A noise level in [0, 1]-pixel units (Cohen et al.) → model units: σ_model = 2σ, because
    model space is pixel space stretched by 2."""
    return 2.0 * sigma


def check_images(
    x,
    *,
    name: str = "images",
    channels: int | tuple[int, ...] | None = None,
    size: tuple[int, int] | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """Validate a pixel-space batch and return it unchanged.

    Args:
        x: expected a float tensor N×C×H×W with values in [0, 1].
        channels: allowed channel count(s); ``None`` allows 1, 3 or 4.
        size: required (H, W), if any.
        check_range: also check the [0, 1] range (one reduction over the batch).

    Raises:
        InputError: naming what was expected and what came (type, rank, dtype, channels, range).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor N×C×H×W in [0, 1], got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name}: expected rank 4 (N×C×H×W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(
            f"{name}: expected a float tensor in [0, 1], got dtype {x.dtype} "
            "(convert uint8 with trustdiff.images.from_uint8)"
        )
    allowed = (1, 3, 4) if channels is None else ((channels,) if isinstance(channels, int) else tuple(channels))
    if x.shape[1] not in allowed:
        raise InputError(f"{name}: expected {'/'.join(map(str, allowed))} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise InputError(f"{name}: expected H×W {size[0]}×{size[1]}, got {x.shape[-2]}×{x.shape[-1]}")
    if check_range and x.numel():
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"{name}: expected finite values in [0, 1], got non-finite values")
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise InputError(f"{name}: expected values in [0, 1], got min {lo:.4g} max {hi:.4g}")
    return x


def from_uint8(a) -> torch.Tensor:
    """uint8 images → float32 pixel-space tensor N×C×H×W in [0, 1].

    Args:
        a: uint8 NumPy array or tensor, N×H×W (grayscale) or N×H×W×C with C in {1, 3, 4}.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if not isinstance(a, np.ndarray):
        raise InputError(f"images: expected a uint8 array N×H×W or N×H×W×C, got {type(a).__name__}")
    if a.dtype != np.uint8:
        raise InputError(f"images: expected dtype uint8, got {a.dtype}")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise InputError(f"images: expected uint8 N×H×W or N×H×W×C (C in 1, 3, 4), got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    return t.to(torch.float32).div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Pixel-space tensor N×C×H×W in [0, 1] → uint8 array N×H×W×C (clamped, rounded)."""
    check_images(x, check_range=False)
    y = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(x: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """Tile a pixel-space batch N×C×H×W into one uint8 image (H', W', C) for saving as PNG."""
    a = to_uint8(x)
    n, h, w, c = a.shape
    ncol = min(nrow, max(n, 1))
    nrows = (n + ncol - 1) // ncol
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = a[i]
    return grid


def save_png(path, grid: np.ndarray) -> None:
    """Write an (H, W, C) uint8 array as a PNG (atomically)."""
    import io

    from PIL import Image

    from .persist import atomic_write_bytes

    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())

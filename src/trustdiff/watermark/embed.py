"""Watermarking a data set: every image gets E(x, key) with the owner's key (or its own key),
written as an ``.npz`` that :func:`trustdiff.data.load` reads like any other data set.

The ``.npz`` holds ``images`` (uint8 N×H×W×C — the watermark survives this rounding, and every
figure here is measured after it), ``labels``, ``key`` (uint8 [n], one key) or ``keys`` (uint8
N×n, per-image keys), ``key_bits`` / ``key_hex`` (text, one key), and per-image ``psnr`` and
``ssim`` against the original.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..persist import atomic_write_bytes
from ..errors import InputError
from ..images import check_images, from_uint8, to_uint8
from ..metrics import psnr, ssim
from ..nets.codec import Codec
from .codec import decode_bits, encode
from .keys import check_key, key_to_bits, key_to_hex
from .stats import bit_accuracy


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round pixel-space images to the 256 uint8 levels (what a file on disk holds)."""
    return from_uint8(to_uint8(x)).to(x.device)


def watermark(codec: Codec, x: torch.Tensor, key, *, batch_size: int = 256, round_uint8: bool = True,
              precision: str = "fp32", strength: float = 1.0) -> dict:
    """Watermark images and measure the cost.

    Args:
        codec: a trained codec.
        x: clean images N×C×H×W in [0, 1] at the codec's resolution and channels.
        key: [n] (one key for every image) or N×n (per-image keys), 0/1.
        round_uint8: round the result to uint8 levels first (as written to disk).
        precision: the codec's (:func:`~trustdiff.watermark.codec.encode`); the figures are fp32.
        strength: the residual scale α of :func:`~trustdiff.watermark.codec.encode`.

    Returns:
        ``{"images": x_w, "key": key, "psnr": [N], "ssim": [N], "bit_acc": [N]}`` (tensors; the
        Bit-Acc is of the decoder on x_w against each image's key).
    """
    check_images(x, name="images")
    k = check_key(key, codec.n_bits, per_image=len(x))
    xw = encode(codec, x, k, batch_size=batch_size, precision=precision, strength=strength)
    if round_uint8:
        xw = quantize(xw)
    acc = bit_accuracy(decode_bits(codec, xw, precision=precision), k)
    return {"images": xw, "key": k, "psnr": psnr(xw, x), "ssim": ssim(xw, x), "bit_acc": acc}


def summary(result: dict) -> dict:
    """JSON figures of :func:`watermark`'s result: means and extremes of PSNR, SSIM, Bit-Acc."""
    p = result["psnr"]
    finite = p[torch.isfinite(p)]
    return {"images": int(len(p)), "psnr_mean": float(finite.mean()) if len(finite) else float("inf"),
            "psnr_min": float(p.min()), "ssim_mean": float(result["ssim"].mean()), "ssim_min": float(result["ssim"].min()),
            "bit_acc_mean": float(result["bit_acc"].mean()), "bit_acc_min": float(result["bit_acc"].min())}


def write_npz(path, images: torch.Tensor, labels=None, **arrays) -> Path:
    """Write pixel-space images as uint8 (+ labels and any extra arrays) to an .npz, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"output: expected a path ending in .npz, got {path}")
    a = to_uint8(images)
    lab = np.full(len(a), -1, np.int64) if labels is None else np.asarray(torch.as_tensor(labels).cpu(), np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=a, labels=lab, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())
    return path


def examples_grid(x: torch.Tensor, xw: torch.Tensor, k: int = 10, gain: float = 10.0) -> np.ndarray:
    """Three rows of ``k`` images for the eye: the originals, their watermarked versions, and the
    difference amplified, 0.5 + gain·(E(x, w) − x), clipped to [0, 1]."""
    from ..images import make_grid

    x, xw = x[:k].cpu(), xw[:k].cpu()
    diff = (0.5 + gain * (xw - x)).clamp(0, 1)
    return make_grid(torch.cat([x, xw, diff]), nrow=len(x))


def write_watermarked(path, result: dict, labels=None, **extra) -> Path:
    """Write :func:`watermark`'s result as the watermarked data set .npz (see the module docstring)."""
    k = result["key"]
    arrays = {"psnr": result["psnr"].cpu().numpy().astype(np.float32),
              "ssim": result["ssim"].cpu().numpy().astype(np.float32)}
    if k.ndim == 1:
        arrays |= {"key": k.numpy().astype(np.uint8), "key_bits": np.array(key_to_bits(k))}
        hx = key_to_hex(k)
        if hx is not None:
            arrays["key_hex"] = np.array(hx)
    else:
        arrays["keys"] = k.numpy().astype(np.uint8)
    arrays |= extra
    return write_npz(path, result["images"], labels, **arrays)


def read_key_from_npz(path) -> torch.Tensor | None:
    """The single key stored in a watermarked .npz (None when it holds per-image keys or none)."""
    with np.load(path, allow_pickle=False) as d:
        if "key" in d.files:
            return check_key(d["key"].astype(np.int64))
    return None

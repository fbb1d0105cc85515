"""The one device policy: which device a command runs on.

Commands take ``--device`` (default: this process's GPU when there is one — ``LOCAL_RANK``'s under
``accelerate launch``/``torchrun`` — else the CPU) and resolve it here only; library functions
follow the device of their inputs.
"""
from __future__ import annotations

import os

import torch

from .errors import InputError


def default_device() -> torch.device:
    """This process's device: its GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_device(spec: str | None) -> torch.device:
    """``--device`` → a torch.device that exists here (one InputError line otherwise)."""
    if spec is None or spec == "auto":
        return default_device()
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError(f"--device: expected cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise InputError(f"--device: expected cpu, cuda or cuda:N, got {spec!r}")
    if not torch.cuda.is_available():
        raise InputError(f"--device: {spec} was asked for, but this machine has no CUDA GPU (torch {torch.__version__})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device: expected a GPU index below {torch.cuda.device_count()}, got {spec}")
    return device


PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (a CPU without AVX512-BF16/AMX would
    emulate it, far slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                         or getattr(cpu, "_is_amx_tile_supported", lambda: False)()))


def check_precision(device: torch.device, precision: str) -> str:
    """``--precision`` checked against the device (one InputError line otherwise)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        raise InputError(f"--precision bf16: {device} has no native bfloat16 (expected a GPU with bf16, or a CPU "
                         "with AVX512-BF16 or AMX); use --precision fp32")
    return precision


def autocast(device, precision: str = "fp32"):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32): matmuls and convs
    in bfloat16, reductions and the caller's tensors in fp32."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

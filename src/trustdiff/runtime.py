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

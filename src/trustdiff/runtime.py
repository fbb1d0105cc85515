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


#: glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (mallopt parameter numbers) and the values set
_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -3, -1
ALLOCATOR_MMAP_THRESHOLD, ALLOCATOR_TRIM_THRESHOLD = 256 << 20, 512 << 20


def tune_cpu_allocator() -> bool:
    """Keep freed CPU tensor memory in the process for reuse instead of returning it to the OS.

    glibc serves a large allocation with a fresh ``mmap`` (above its threshold, which grows only up to
    32 MiB) and unmaps it on free, so each new activation tensor of a large batch is page-faulted
    in and zeroed by the kernel again. With ``mallopt`` thresholds of 256 MiB (mmap) and 512 MiB
    (trim), locuslab/smoothing's own certification loop through the bench's denoiser + classifier
    at batch 250 ran 798 noise samples/s instead of 624 on 2 CPU cores (bench/throughput.py). Values are unchanged (only where memory comes from);
    the cost is that a process keeps up to 512 MiB of freed heap (and any block below
    256 MiB it freed) for reuse instead of handing it back to the OS. A no-op off glibc, and when
    ``TRUSTDIFF_CPU_ALLOCATOR=system`` is set. Returns whether the thresholds were set."""
    if os.environ.get("TRUSTDIFF_CPU_ALLOCATOR", "").lower() == "system":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_MMAP_THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


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


def module_device(module, default=None) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); ``default`` (else the CPU) when it
    has neither."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device(default if default is not None else "cpu")


def devices_of(*objs) -> list[str]:
    """The distinct devices (sorted names) of the tensors, modules (their parameters and buffers)
    and generators in ``objs``: what a command records as the device it ran on."""
    found = set()
    for o in objs:
        if o is None:
            continue
        if isinstance(o, torch.Tensor):
            found.add(str(o.device))
        elif isinstance(o, torch.Generator):
            found.add(str(o.device))
        elif isinstance(o, torch.nn.Module):
            found |= {str(t.device) for t in (*o.parameters(), *o.buffers())}
        elif isinstance(o, (list, tuple)):
            found |= set(devices_of(*o))
    return sorted(found)


class Autocast(torch.nn.Module):
    """``module`` run under :func:`autocast` of its input's device and ``precision``; floating
    outputs come back in the input's dtype (fp32), so the caller's state (a sampler's x, a
    loss) never drops to bfloat16. An fp32 Autocast is the module itself, call for call."""

    def __init__(self, module: torch.nn.Module, precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.module, self.precision = module, precision

    def forward(self, x, *args, **kwargs):
        if self.precision == "fp32":
            return self.module(x, *args, **kwargs)
        with autocast(x.device, self.precision):
            out = self.module(x, *args, **kwargs)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def with_precision(module, precision: str = "fp32"):
    """``module`` itself for fp32, else :class:`Autocast` around it."""
    return module if precision == "fp32" else Autocast(module, precision)


def compile_network(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` ``module`` in place (``nn.Module.compile``: the same object and class, so
    isinstance dispatch, ``state_dict`` keys and autograd are unchanged), one graph per input
    shape (``dynamic=False``: the loops here call a network at one or two batch shapes). The first
    call at each shape compiles (seconds to a minute on a CPU: ``compile_seconds`` in
    bench/results/throughput.json). Compile a network whose inputs are all tensors
    (a denoiser's backbone, not the denoiser: a Python float σ would recompile at every level —
    :func:`trustdiff.diffusion.precond.compile_backbone`). Off by default everywhere; what it buys,
    measured by ``bench/throughput.py``: little in fp32 on a CPU (the convolutions dominate and are
    oneDNN's either way), most of the bf16 gain (the casts around each convolution are fused)."""
    module.compile(dynamic=False)
    return module

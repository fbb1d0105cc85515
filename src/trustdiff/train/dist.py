"""Multiple processes: HuggingFace Accelerate when launched by it, plain PyTorch otherwise.

Every collective here is called by all ranks in the same order; only rank 0 writes files.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import torch

from ..errors import InputError


def resolve_accelerator(accelerator=None, device=None):
    """The accelerator to train under: the one given; a new one when this process was started by
    ``accelerate launch`` with more than one process (CPU-only when ``device`` is the CPU, or,
    with no ``device``, when there is no GPU; else LOCAL_RANK's GPU); else None (plain
    single-process PyTorch)."""
    if accelerator is not None:
        return accelerator
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
        return Accelerator(cpu=cpu)
    return None


def env_rank_world() -> tuple[int, int]:
    """(rank, number of processes) from the environment ``accelerate launch``/``torchrun`` set;
    (0, 1) in a plain process. For work split by index, which needs no process group."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_world(accelerator) -> tuple[int, int]:
    """(this process's rank, number of processes)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def barrier(accelerator) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def reduce_sum(accelerator, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity in one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return t
    return accelerator.reduce(t, reduction="sum")


def gather_states(accelerator, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's uint8 RNG states on every rank, keyed ``rank{r}.{name}`` (CPU tensors).

    States of one kind have the same length on all ranks, so a plain tensor gather works (no
    pickling)."""
    rank, world = rank_world(accelerator)
    if world == 1:
        return {f"rank0.{k}": v for k, v in states.items()}
    out = {}
    for k in sorted(states):
        g = accelerator.gather(states[k].to(accelerator.device)[None]).cpu()  # [world, L]
        for r in range(world):
            out[f"rank{r}.{k}"] = g[r].clone()
    return out


def derive_seed(seed: int, tag: str, rank: int) -> int:
    """An independent 63-bit seed for (seed, purpose, rank), so streams never coincide."""
    digest = hashlib.sha256(f"{seed}/{tag}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(nproc: int, argv: list[str], *, cpu: bool | None = None, port: int | None = None) -> tuple[list[str], dict]:
    """The command line and environment :func:`launch` runs (see there)."""
    if not isinstance(nproc, int) or nproc < 1:
        raise InputError(f"nproc: expected an integer >= 1, got {nproc!r}")
    env = dict(os.environ)
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"  # Accelerator() in each process then stays on the CPU
    if nproc == 1:
        return [sys.executable, *argv], env
    # `accelerate launch --cpu` starts a single process whatever --num_processes says; the
    # torchrun-based launcher behind --multi_gpu starts N and works on the CPU (gloo) as well.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port or _free_port()),
        *argv,
    ]
    return cmd, env


def launch(nproc: int, argv: list[str], *, cpu: bool | None = None, port: int | None = None) -> int:
    """Run ``python *argv`` in ``nproc`` processes under Accelerate and wait; return the exit code.

    ``argv`` is a script and its arguments, or ``["-m", "module", ...]``. Each process sees
    ``WORLD_SIZE``/``RANK``, so :func:`trustdiff.train.fit` joins the process group by itself.
    ``cpu``: force the CPU (gloo); default: CPU when no GPU is visible. ``port``: rendezvous port
    (default: a free one, so concurrent runs on one machine do not collide).
    """
    cmd, env = launch_command(nproc, argv, cpu=cpu, port=port)
    return subprocess.run(cmd, env=env).returncode

"""The training configuration and the learning-rate schedule (a pure function of the step)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved into ``run_dir/config.json``."""

    steps: int = 10_000                 # optimizer steps (a skipped non-finite step counts)
    batch_size: int = 128               # global batch: split across processes
    lr: float = 2e-4
    weight_decay: float = 0.0           # decoupled (AdamW) when > 0; never on normalization layers
    warmup_steps: int = 200             # linear LR warm-up (EDM's lr_rampup)
    schedule: str = "constant"          # after warm-up: "constant", "cosine" (to 0 at `steps`)
    momentum: float = 0.9               # the "sgd" optimizer's Nesterov momentum
    grad_clip: float | None = 1.0       # clip the total gradient norm; None: no clipping
    ema_halflife_kimg: float = 500.0    # EDM: EMA half-life in thousands of images
    ema_rampup_ratio: float | None = 0.05  # EDM ramp-up: half-life <= ratio x images seen
    ema_decay: float | None = None      # set: a fixed per-step decay τ with dynamic warm-up (Wang et al. 2023) instead of EDM's
    checkpoint_every: int = 500
    log_every: int = 50
    keep_checkpoints: int = 2
    max_bad_steps: int = 5              # stop after K non-finite steps in a row
    seed: int = 0                       # data order, loss generator, global RNG
    deterministic: bool = True          # torch.use_deterministic_algorithms during fit
    progress: bool = True               # tqdm bar on rank 0

    def __post_init__(self):
        positive = {"batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
                    "log_every": self.log_every, "keep_checkpoints": self.keep_checkpoints,
                    "max_bad_steps": self.max_bad_steps}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise InputError(f"TrainConfig.{name}: expected an integer >= 1, got {v!r}")
        for name in ("steps", "warmup_steps", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise InputError(f"TrainConfig.{name}: expected an integer >= 0, got {v!r}")
        if not self.lr > 0:
            raise InputError(f"TrainConfig.lr: expected > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise InputError(f"TrainConfig.weight_decay: expected >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InputError(f"TrainConfig.grad_clip: expected > 0 or None, got {self.grad_clip!r}")
        if not self.ema_halflife_kimg >= 0:
            raise InputError(f"TrainConfig.ema_halflife_kimg: expected >= 0, got {self.ema_halflife_kimg!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"TrainConfig.schedule: expected one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"TrainConfig.momentum: expected in [0, 1), got {self.momentum!r}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise InputError(f"TrainConfig.ema_decay: expected in [0, 1) or None, got {self.ema_decay!r}")
        if self.ema_rampup_ratio is not None and not self.ema_rampup_ratio > 0:
            raise InputError(f"TrainConfig.ema_rampup_ratio: expected > 0 or None, got {self.ema_rampup_ratio!r}")


SCHEDULES = ("constant", "cosine")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1``: linear
    warm-up over ``warmup_steps`` updates, then constant, or ``cosine``: lr·½(1 + cos(π·u)) with u
    the fraction of the post-warm-up updates done (Loshchilov & Hutter 2017, as Wang et al. 2023).
    A pure function of the step, so a resumed run needs no scheduler state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        u = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(u, 1.0)))
    return cfg.lr

"""The one training loop: EMA, non-finite guard, checkpoints that survive SIGKILL, exact resume.

What makes a resumed run bit-identical to an uninterrupted one: every input to a step is either a
pure function of the step (learning rate, EMA decay, data order) or saved in the checkpoint
(weights, EMA, Adam moments, global and loss RNG states, data position, guard and logging
counters). See :func:`fit`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..checkpoint import (
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    rng_state_tensors,
    save_checkpoint,
    set_rng_state_tensors,
    unflatten_optimizer_state,
)
from ..errors import CheckpointError, InputError, TrainingDiverged
from ..runtime import autocast, check_precision
from .config import TrainConfig, lr_at
from .data import DataStream, check_data
from .dist import barrier, derive_seed, gather_states, rank_world, reduce_sum, resolve_accelerator
from .ema import ema_beta, ema_beta_dynamic, make_ema, update_ema
from .runlog import append_metrics, finite_or_none, truncate_metrics, write_run_config

log = logging.getLogger(__name__)

#: Optimizers by name: "adam"/"adamw" (AdamW, decoupled decay, whenever ``weight_decay > 0``) and
#: "sgd" (Nesterov momentum ``cfg.momentum``, coupled L2 decay, as in adversarial training).
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

# config fields whose change between a checkpoint and its resume breaks exact continuation
_RESUME_SENSITIVE = ("batch_size", "lr", "weight_decay", "warmup_steps", "schedule", "momentum", "grad_clip",
                     "ema_halflife_kimg", "ema_rampup_ratio", "ema_decay", "seed")


@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained (unwrapped) model, its EMA, the step reached, the run
    folder, and the last finite global mean loss (None if no step was taken)."""

    model: nn.Module
    ema: nn.Module
    step: int
    run_dir: Path
    last_loss: float | None


@dataclass
class _Progress:
    """Counters that a checkpoint must carry for the resumed run to continue exactly (including
    the running metrics window, so metrics.jsonl lines match too)."""

    step: int = 0
    data: dict = field(default_factory=dict)   # the stream's position; {} = its start
    bad_in_a_row: int = 0
    skipped_total: int = 0
    last_loss: float | None = None
    window_loss: float = 0.0     # sum of global mean losses of good steps since the last log line
    window_good: int = 0
    window_skipped: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, state: dict) -> "_Progress":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Normalization layers' parameters without weight decay, the rest with it (empty groups dropped)."""
    norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in norm], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) in norm], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(name: str, model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (β=(0.9, 0.999), ε=1e-8, as in EDM), AdamW when ``cfg.weight_decay > 0``, or SGD with
    Nesterov momentum; weight decay skips normalization layers (:func:`param_groups`)."""
    if name not in OPTIMIZERS:
        raise InputError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    groups = param_groups(model, cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.weight_decay > 0 else OPTIMIZERS[name]
    return cls(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


@contextlib.contextmanager
def _determinism(on: bool):
    """Deterministic kernels for the duration of fit, then the caller's settings back."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if on:
        # cuBLAS needs this before its first call to be deterministic; harmless on the CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op with no deterministic CUDA kernel (e.g. some upsampling backwards) warns
        # instead of stopping the run; such a run is then reproducible only up to that op's noise
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        raise InputError("model: expected a module with parameters to train, got none")
    return p.device


def _training_device(model: nn.Module, device, accelerator) -> torch.device:
    """Where fit trains: the accelerator's device under Accelerate (``device``, if given, must
    be of its kind), else ``device``, else the model's current device. A bare ``cuda`` becomes
    the current GPU's index, so the record names one device."""
    current = _device_of(model)
    if accelerator is not None:
        if device is not None and torch.device(device).type != accelerator.device.type:
            raise InputError(f"device: expected {accelerator.device.type} (the accelerator's device "
                             f"{accelerator.device}), got {device}")
        device = accelerator.device
    device = torch.device(device) if device is not None else current
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from; refuse to silently restart over an existing run."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and not resume:
        raise InputError(
            f"run folder {run_dir} already holds checkpoints (latest {ckpt.name}); "
            "pass resume=True (--resume) to continue it, or choose a new run folder"
        )
    return ckpt


def _warn_changes(state: dict, cfg: TrainConfig, optimizer: str, ckpt: Path) -> None:
    old = state.get("train", {})
    changed = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in _RESUME_SENSITIVE
               if k in old and old[k] != getattr(cfg, k)]
    if state.get("optimizer_name", optimizer) != optimizer:
        changed.append(f"optimizer: {state['optimizer_name']!r} -> {optimizer!r}")
    if changed:
        log.warning("resuming %s with a changed configuration (%s); the run will not match an "
                    "uninterrupted one", ckpt, "; ".join(changed))


def _restore(ckpt: Path, model, ema, opt, gen, device, cfg, optimizer, rank, world) -> _Progress:
    """Load everything a checkpoint holds into the live objects (weights and optimizer state
    onto ``device``, whatever device wrote them); return the loop counters."""
    tensors, state = load_checkpoint(ckpt, {"model": model, "ema": ema})   # CPU tensors, copied onto the modules
    try:
        opt.load_state_dict(unflatten_optimizer_state(_optimizer_tensors_to(tensors, device), state["optimizer"]))
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: optimizer state does not fit this model ({e})") from None
    _warn_changes(state, cfg, optimizer, ckpt)
    progress = _Progress.from_json(state)
    prefix = f"rng.rank{rank}."
    mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    saved_kind = torch.device(state.get("device", str(device))).type   # (older checkpoints: assume this kind)
    if state.get("world_size") == world and mine and saved_kind == device.type:
        set_rng_state_tensors(mine, gen, device)
    elif state.get("world_size") == world and mine:
        # another kind of device: the global CPU stream carries over; the loss generator's (CPU
        # mt19937 vs CUDA Philox) and the CUDA stream cannot, so they continue reproducibly
        log.warning("checkpoint %s was written on %s, this run trains on %s: the loss generator is re-seeded, "
                    "so the run continues but not bit-identically", ckpt, state.get("device"), device)
        set_rng_state_tensors({"torch": mine["torch"]}, None, device)
        if device.type == "cuda":
            torch.cuda.manual_seed(derive_seed(cfg.seed, f"cuda@{progress.step}", rank))
        gen.manual_seed(derive_seed(cfg.seed, f"loss@{progress.step}", rank))
    else:
        # another process count: no saved stream belongs to this rank; continue reproducibly
        log.warning("checkpoint %s was written by %s process(es), this run has %d: RNG streams are "
                    "re-seeded, so the run continues but not bit-identically", ckpt, state.get("world_size"), world)
        torch.manual_seed(derive_seed(cfg.seed, f"torch@{progress.step}", rank))
        gen.manual_seed(derive_seed(cfg.seed, f"loss@{progress.step}", rank))
    return progress


def _optimizer_tensors_to(tensors: dict, device: torch.device) -> dict:
    """The optimizer's state tensors (moments, momentum buffers) moved to the training device; its
    ``step`` counters stay on the CPU, where torch keeps them (``load_state_dict`` then finds
    everything where it would put it)."""
    return {k: v.to(device) if k.startswith("optimizer.") and not k.endswith(".step") else v
            for k, v in tensors.items()}


def _check_loss(loss, n: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.shape != (n,):
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise InputError(f"loss_fn: expected a per-sample loss tensor of shape ({n},), got {got}")


def _save(run_dir, prog, model, ema, opt, gen, device, accelerator, cfg, optimizer, rank, world) -> None:
    """Checkpoint: all ranks hand over their RNG states, rank 0 writes, the others wait."""
    rng = gather_states(accelerator, rng_state_tensors(gen, device))  # a collective: every rank
    if rank == 0:
        opt_tensors, opt_meta = flatten_optimizer_state(opt.state_dict())
        tensors = {**opt_tensors, **{f"rng.{k}": v for k, v in rng.items()}}   # made CPU copies when written
        state = {**prog.to_json(), "optimizer": opt_meta, "optimizer_name": optimizer,
                 "world_size": world, "train": asdict(cfg), "cur_nimg": prog.step * cfg.batch_size,
                 "device": str(device)}
        save_checkpoint(run_dir, prog.step, modules={"model": model, "ema": ema}, tensors=tensors,
                        state=state, keep=cfg.keep_checkpoints)
    barrier(accelerator)


def _run_metadata(model, data, device, precision, optimizer, world, ckpt, step) -> dict:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(ckpt) if ckpt is not None else None,
        "start_step": step,
        "world_size": world,
        "optimizer": optimizer,
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"n": int(data[0].shape[0]), "shape": list(data[0].shape[1:])},
        "device": str(device),
        "precision": precision,
        "torch": torch.__version__,
        "trustdiff": __version__,
    }


def fit(model: nn.Module, loss_fn, data: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, run_dir, *,
        resume: bool = False, optimizer: str = "adam", accelerator=None, on_checkpoint=None,
        stream=DataStream, post_step=None, device=None, precision: str = "fp32") -> TrainResult:
    """Train ``model`` in place with Adam or SGD, a weight EMA, and crash-proof checkpoints.

    Args:
        model: trained in place, moved to the training device first (``device``; default: where
            its parameters are; under Accelerate, the accelerator's device).
        loss_fn: ``loss_fn(net, x, y, generator) -> loss [B]``, per-sample; the loop takes the
            mean. ``x`` float B×C×H×W in [0, 1], ``y`` int64 [B]; ``net`` is ``model`` or its DDP
            wrapper (call it, do not reach into its attributes); ``generator`` is a
            ``torch.Generator`` on the training device, owned and checkpointed by the loop, which
            the loss must use for all its randomness. Under ``precision="bf16"`` it runs inside
            autocast; its result is taken in fp32.
        data: ``(x, y)``: x float N×C×H×W in [0, 1], y int64 [N]. Epoch ``e`` visits it in the order
            ``randperm(N, Generator().manual_seed(seed + e))``; batches run on across epochs.
        cfg: the :class:`TrainConfig`.
        run_dir: the run folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``.
        resume: continue from ``latest_checkpoint(run_dir)`` (start fresh if there is none).
            Without it, a run folder that holds checkpoints is refused.
        optimizer: ``"adam"``, ``"adamw"`` (AdamW whenever ``weight_decay > 0``) or ``"sgd"``
            (Nesterov momentum ``cfg.momentum``).
        accelerator: an ``accelerate.Accelerator``; default: one is made when the process was
            started by ``accelerate launch`` with several processes (see :func:`launch`).
        on_checkpoint: ``on_checkpoint(step)`` called on every rank after each checkpoint.
        post_step: ``post_step(model, optimizer)`` called (under ``torch.no_grad``) after each
            applied update, before the EMA: a proximal step, e.g. the l1 pull of
            :meth:`trustdiff.watermark.trigger.L1ToOriginal.prox`. It must be deterministic.
        stream: the batch order: ``stream(n, seed, **position)`` → an object with ``take(k)``
            (the next k indices into ``data``) and ``position`` (a JSON-able dict, saved in each
            checkpoint); default :class:`DataStream` (per-epoch permutations).
        device: the training device (a ``torch.device`` or its name); None: the model's current
            device, as before. The model, its EMA, the optimizer state and each batch live there;
            ``data`` may stay on the CPU (batches are moved one at a time).
        precision: ``"fp32"``, or ``"bf16"``: the forward pass and the loss run under
            :func:`trustdiff.runtime.autocast` (matmuls and convolutions in bfloat16); the weights,
            gradients, optimizer state, EMA, the loss value and every logged statistic stay fp32.
            Refused (InputError) on a device without native bfloat16.

    Each step: LR from the warm-up schedule; loss; backward (gradients all-reduced under DDP);
    total-norm clipping; if the loss or gradient norm is non-finite on any rank, the update is
    skipped (a warning names the step) and after ``max_bad_steps`` such steps in a row
    :class:`TrainingDiverged` is raised, leaving the last good checkpoint as it was; otherwise
    the optimizer steps and the EMA follows (EDM's decay, or ``cfg.ema_decay`` with Wang et al.'s
    warm-up). A skipped step still consumes its batch and counts as a step. Rank 0 writes a metrics line every ``log_every`` steps and a checkpoint every
    ``checkpoint_every`` steps and at the end.

    Determinism: with ``cfg.deterministic`` (and a fixed ``torch.set_num_threads``), a run killed
    at any point and resumed on the same kind of device reaches bit-identical weights to an
    uninterrupted one.

    Devices: a checkpoint holds no device — weights, EMA and optimizer state are CPU tensors in
    safetensors, RNG states are bytes — so a run started on one device resumes on another (pass
    the new ``device``). What carries over exactly: weights, EMA, optimizer moments and counters
    (moved to the new device), the step, the data order (CPU permutations of a seed) and the
    global CPU RNG. What cannot: the loss generator's stream (a CPU generator's mt19937 state
    does not fit a CUDA generator's Philox state, nor back) and the CUDA RNG; they are re-seeded
    from (seed, step) with a warning, so the continued run is reproducible but not bit-identical
    to an uninterrupted one on either device — neither could it be, since CPU and GPU kernels
    round differently. The CUDA RNG state is saved and restored only when training on CUDA.
    """
    run_dir = Path(run_dir)
    data = check_data(data)
    accelerator = resolve_accelerator(accelerator, device)
    rank, world = rank_world(accelerator)
    if cfg.batch_size % world:
        raise InputError(f"batch_size: expected a multiple of the {world} processes, got {cfg.batch_size}")
    if accelerator is not None and str(accelerator.mixed_precision) == "fp16":
        # fp16's loss scaler would need the optimizer wrapped by Accelerate, which hides the
        # non-finite guard and the exact optimizer state; bf16 needs no scaler
        raise InputError("mixed precision: fit supports 'no' and 'bf16', got 'fp16'")
    device = _training_device(model, device, accelerator)
    precision = check_precision(device, precision)
    with _determinism(cfg.deterministic):
        return _fit(model, loss_fn, data, cfg, run_dir, resume, optimizer, accelerator, on_checkpoint, stream, rank, world,
                    post_step, device, precision)


def _ema_beta(step: int, cfg: TrainConfig) -> float:
    """The EMA decay after update ``step`` (0-based)."""
    if cfg.ema_decay is not None:
        return ema_beta_dynamic(step, cfg.ema_decay, cfg.warmup_steps)
    return ema_beta((step + 1) * cfg.batch_size, cfg.batch_size, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio)


def _fit(model, loss_fn, data, cfg, run_dir, resume, optimizer, accelerator, on_checkpoint, stream, rank, world,
         post_step, device, precision):
    """The body of :func:`fit` (the one long function of the toolkit)."""
    from tqdm.auto import tqdm

    model.to(device)
    ema = make_ema(model)                                   # the EMA follows the unwrapped model
    opt = make_optimizer(optimizer, model, cfg)
    gen = torch.Generator(device=device)

    ckpt = _resume_point(run_dir, resume)
    if ckpt is not None:
        prog = _restore(ckpt, model, ema, opt, gen, device, cfg, optimizer, rank, world)
    else:
        prog = _Progress()
        torch.manual_seed(derive_seed(cfg.seed, "torch", rank))  # dropout & co.
        gen.manual_seed(derive_seed(cfg.seed, "loss", rank))     # per rank: distinct noise
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(run_dir, prog.step)  # lines past the resume point will be written again
        write_run_config(run_dir, asdict(cfg), _run_metadata(model, data, device, precision, optimizer, world, ckpt,
                                                             prog.step))
    barrier(accelerator)
    net = accelerator.prepare(model) if accelerator is not None else model  # DDP under >1 process

    x_all, y_all = data
    stream = stream(x_all.shape[0], cfg.seed, **prog.data)
    pbar = tqdm(total=cfg.steps, initial=prog.step, disable=not (cfg.progress and rank == 0),
                unit="step", dynamic_ncols=True, desc="train")
    mark_step, mark_time = prog.step, time.perf_counter()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf  # inf: measure only
    net.train()
    opt.zero_grad(set_to_none=True)
    try:
        while prog.step < cfg.steps:
            idx = stream.take(cfg.batch_size)[rank::world]        # this rank's shard of the batch
            x, y = x_all[idx].to(device), y_all[idx].to(device)   # B×C×H×W in [0, 1], [B]
            lr = lr_at(prog.step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr

            with autocast(device, precision):                    # a no-op for fp32
                loss = loss_fn(net, x, y, gen)
            _check_loss(loss, len(idx))
            loss = loss.float().mean()                            # fp32 whatever the precision
            if accelerator is not None:
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                if grad_norm is None:  # engines that clip internally report no norm
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            else:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

            # one small all-reduce: the global mean loss, and whether any rank saw a non-finite
            # value (all ranks must agree to skip, or the replicas would drift apart)
            bad = ~torch.isfinite(loss.detach()) | ~torch.isfinite(grad_norm.detach().to(loss.device))
            stats = reduce_sum(accelerator, torch.stack([loss.detach().float(), bad.float()]))
            loss_g, n_bad = stats[0].item() / world, stats[1].item()

            if n_bad:
                opt.zero_grad(set_to_none=True)
                prog.bad_in_a_row += 1
                prog.skipped_total += 1
                prog.window_skipped += 1
                if rank == 0:
                    log.warning("step %d: non-finite loss or gradient norm (loss %s, grad norm %s); "
                                "update skipped (%d in a row)", prog.step, loss_g, float(grad_norm), prog.bad_in_a_row)
                if prog.bad_in_a_row >= cfg.max_bad_steps:
                    last = latest_checkpoint(run_dir)
                    kept = f"the last good checkpoint {last} is intact" if last else "no checkpoint was written yet"
                    raise TrainingDiverged(
                        f"training diverged: {prog.bad_in_a_row} non-finite steps in a row up to step "
                        f"{prog.step}; {kept}; lower the lr, enable grad_clip, or check the data and loss"
                    )
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
                if post_step is not None:
                    with torch.no_grad():
                        post_step(model, opt)
                update_ema(ema, model, _ema_beta(prog.step, cfg))
                prog.bad_in_a_row = 0
                prog.last_loss = loss_g
                prog.window_loss += loss_g
                prog.window_good += 1
            prog.step += 1
            prog.data = stream.position
            pbar.update(1)

            if prog.step % cfg.log_every == 0:
                now = time.perf_counter()
                img_s = (prog.step - mark_step) * cfg.batch_size / max(now - mark_time, 1e-9)
                mean = prog.window_loss / prog.window_good if prog.window_good else None
                if rank == 0:
                    append_metrics(run_dir, {"step": prog.step, "loss": finite_or_none(mean), "lr": lr,
                                             "grad_norm": finite_or_none(grad_norm), "img_per_s": round(img_s, 2),
                                             "skipped": prog.window_skipped})
                    pbar.set_postfix(loss=f"{mean:.4g}" if mean is not None else "nan", img_s=f"{img_s:.0f}")
                prog.window_loss, prog.window_good, prog.window_skipped = 0.0, 0, 0
                mark_step, mark_time = prog.step, now

            if prog.step % cfg.checkpoint_every == 0 or prog.step == cfg.steps:
                _save(run_dir, prog, model, ema, opt, gen, device, accelerator, cfg, optimizer, rank, world)
                if on_checkpoint is not None:
                    on_checkpoint(prog.step)
    finally:
        pbar.close()
    return TrainResult(model=model, ema=ema, step=prog.step, run_dir=run_dir, last_loss=prog.last_loss)

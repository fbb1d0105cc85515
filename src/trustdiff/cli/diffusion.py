"""``trustdiff train`` and ``trustdiff generate``."""
from __future__ import annotations

import time
from pathlib import Path

import click

from .common import COUNT, NONNEG, POSITIVE, SAMPLERS, UNIT, ran_on, run_command, seed_option, unsafe_pickle_option
from .common import MODEL_HELP, adm_config_option, compile_option


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv with ``name VALUE`` / ``name=VALUE`` removed."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


@click.command("train")
@click.option("--data", default="digits", show_default=True, help='"digits" or a path: .npz, MNIST idx, CIFAR-10 batches, image folder.')
@click.option("--resolution", type=COUNT, default=16, show_default=True, help="Training resolution (images are resized).")
@click.option("--precond", type=click.Choice(["edm", "vp", "ve"]), default="edm", show_default=True)
@click.option("--size", default="small", show_default=True, help="Network size: tiny, small, base, ddpm-cifar.")
@click.option("--conditional/--unconditional", default=True, show_default=True)
@click.option("--label-dropout", type=UNIT, default=0.1, show_default=True, help="P(label → null) for classifier-free guidance.")
@click.option("--steps", type=COUNT, default=20_000, show_default=True, help="Training steps.")
@click.option("--batch", "batch_size", type=COUNT, default=128, show_default=True)
@click.option("--lr", type=POSITIVE, default=2e-3, show_default=True)
@click.option("--warmup", "warmup_steps", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--ema-halflife-kimg", type=NONNEG, default=50.0, show_default=True)
@click.option("--checkpoint-every", type=COUNT, default=500, show_default=True)
@seed_option()
@click.option("--nproc", type=COUNT, default=1, show_default=True, help="Processes (Accelerate, gloo on CPU).")
@run_command("train", out="runs/train", resumable=True, free=("nproc",))
def train_cmd(run, data, resolution, precond, size, conditional, label_dropout, steps, batch_size, lr,
              warmup_steps, ema_halflife_kimg, checkpoint_every, seed, out, nproc):
    """Train a diffusion model; the EMA network is exported to OUT/model."""
    from ..train import TrainConfig
    from ..train.diffusion import DiffusionJob, prepare_diffusion, train_diffusion

    if nproc > 1:                                  # rerun this command in nproc processes
        from ..train import launch

        code = launch(nproc, ["-m", "trustdiff.cli", *_without_option(click.get_current_context().obj["argv"], "--nproc")],
                      cpu=run.device.type == "cpu")         # --device cpu: gloo processes even beside a GPU
        if code:
            raise click.ClickException(f"training under {nproc} processes failed (exit code {code})")
        return
    job = DiffusionJob(data=data, resolution=resolution, precond=precond, size=size, conditional=conditional,
                       label_dropout=label_dropout,
                       train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                         ema_halflife_kimg=ema_halflife_kimg, checkpoint_every=checkpoint_every,
                                         seed=seed))
    prepared = prepare_diffusion(job)              # bad input fails here, before OUT is touched
    if not run.start(job):
        return
    folder = train_diffusion(job, out, resume=run.resume, prepared=prepared, device=run.device, precision=run.precision)
    click.echo(f"model written to {folder}")


@click.command("generate")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help=f"The model: {MODEL_HELP}.")
@adm_config_option
@click.option("-n", "--num", "num", type=COUNT, default=64, show_default=True, help="Number of images.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="heun", show_default=True)
@click.option("--sample-steps", "steps", type=COUNT, default=18, show_default=True, help="Noise levels (Heun: NFE = 2·steps − 1).")
@click.option("--guidance", type=NONNEG, default=1.0, show_default=True,
              help="Classifier-free guidance scale w (1: none; class-conditional models only).")
@click.option("--class", "classes", multiple=True, type=click.IntRange(min=0), help="Class label(s); default: cycle through all classes.")
@seed_option("Image i uses seed + i.")
@click.option("--batch", "batch_size", type=COUNT, default=256, show_default=True)
@click.option("--shard-size", type=COUNT, default=10_000, show_default=True)
@click.option("--fd-data", "fd_data", default=None,
              help='Also measure FD against this data set\'s test split (e.g. "digits"), beside the real-data floor.')
@click.option("--feature-steps", type=COUNT, default=300, show_default=True, help="Training steps of the FD feature net (cached).")
@compile_option
@unsafe_pickle_option
@run_command("generate", out="runs/generate", resumable=True, free=("compile_nets",))   # like --device: rounding only
def generate_cmd(run, model_dir, adm_config, num, sampler, steps, guidance, classes, seed, batch_size, shard_size, fd_data,
                 feature_steps, compile_nets, allow_pickle, out):
    """Generate images: OUT/images-XXXXX.npz shards (images uint8 N×H×W×C, labels, seeds) and
    OUT/grid.png. With --resume, shards already in OUT are kept (a killed run continues); under
    `accelerate launch` each process writes its share of the shards."""
    from ..persist import atomic_write_json
    from ..data import load_npz
    from ..diffusion.model import check_guidance, class_cycle, load_model, write_shards
    from ..diffusion.precond import compile_backbone
    from ..diffusion.samplers import nfe
    from ..errors import InputError
    from ..images import make_grid, save_png
    from ..train.dist import env_rank_world

    config = dict(model=str(model_dir), adm_config=adm_config, num=num, sampler=sampler, steps=steps, guidance=guidance,
                  classes=list(classes), seed=seed, batch_size=batch_size, fd=fd_data, feature_steps=feature_steps,
                  compile=compile_nets)
    den, spec = load_model(model_dir, allow_pickle=allow_pickle, adm_config=adm_config)
    den = den.to(run.device)
    if compile_nets:
        compile_backbone(den)                       # a denoiser it cannot compile fails before OUT is touched
    class_cycle(spec, num, classes)                 # a bad --class fails before OUT is touched
    check_guidance(spec, guidance)
    if fd_data is not None:
        if env_rank_world()[1] > 1:
            raise InputError("--fd-data: expected a single process (measure FD after a multi-process run with one), "
                             f"got WORLD_SIZE={env_rank_world()[1]}")
        from ..data import load

        load(fd_data, resolution=spec.resolution, split="test", seed=seed)    # a bad --fd-data fails here
    if not run.start(config):
        return
    rank, world = env_rank_world()
    t0 = time.time()
    paths = write_shards(den, spec, out, num, shard_size=shard_size, seed=seed, sampler=sampler,
                         steps=steps, classes=classes, guidance=guidance, batch=batch_size, rank=rank, world=world,
                         progress=True, precision=run.precision)
    elapsed = time.time() - t0
    if rank != 0:
        return
    if paths and paths[0].is_file():
        save_png(out / "grid.png", make_grid(load_npz(paths[0]).tensors()[0][:100], nrow=10))
    metrics = {"num_images": num, "nfe": nfe(sampler, steps), "seconds": elapsed, "images_per_s": num / max(elapsed, 1e-9),
               "device": ran_on(den), "precision": run.precision}
    if fd_data is not None:
        metrics["fd"] = _fd_of_shards(out, fd_data, spec.resolution, feature_steps, seed, run.device)
    atomic_write_json(out / "metrics.json", metrics)
    fd_text = f"; {metrics['fd']['fd_name']} {metrics['fd']['fd']:.3f} (floor {metrics['fd']['fd_floor']:.3f})" if fd_data else ""
    click.echo(f"{num} images ({sampler}, NFE {nfe(sampler, steps)}) in {elapsed:.1f}s{fd_text} → {out}")


def _fd_of_shards(out: Path, data: str, resolution: int, feature_steps: int, seed: int, device) -> dict:
    """FD of the images in OUT's shards against ``data``'s test split (feature net trained on its
    train split, cached under OUT/cache, on ``device``), beside the real-data floor."""
    import torch

    from ..data import load, load_npz
    from ..train.feature_net import fd_report

    fake = torch.cat([load_npz(p).tensors()[0] for p in sorted(out.glob("images-*.npz"))])
    train = load(data, resolution=resolution, split="train", seed=seed)
    test = load(data, resolution=resolution, split="test", seed=seed)
    return fd_report(train, test, fake, cache_dir=out / "cache", feature_steps=feature_steps, seed=seed, device=device)


COMMANDS = [train_cmd, generate_cmd]

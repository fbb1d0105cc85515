"""``trustdiff advtrain …``: adversarial training on diffusion-generated data (Wang et al. 2023).

    trustdiff advtrain generate --model runs/cond --num 50000 --out runs/gen            # Heun, 20 steps
    trustdiff advtrain train --generated runs/gen --n-generated 10000 --arch small-cnn --out runs/at
    trustdiff advtrain eval --run runs/at --out runs/at-eval                           # clean, PGD-40, AutoAttack

At CIFAR-10 scale on GPUs (the paper's setting, 1M generated images):

    accelerate launch -m trustdiff.cli advtrain generate --model EDM_DIR --num 1000000 --out gen
    accelerate launch -m trustdiff.cli advtrain train --data cifar10:PATH --generated gen --arch wrn-28-10 \\
        --eps 0.0313725 --epochs 400 --batch 512 --lr 0.2 --out at
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from .common import dry_run_option, dry_run_or_start


@click.group("advtrain")
def advtrain_group():
    """Adversarial training on real + diffusion-generated images."""


@advtrain_group.command("generate")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="A class-conditional diffusion model folder (or its training run).")
@click.option("-n", "--num", type=int, required=True, help="Images to generate (classes cycle 0…K−1).")
@click.option("--sampler", default="heun", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Heun steps (Wang et al.: 20).")
@click.option("--shard-size", type=int, default=10_000, show_default=True)
@click.option("--batch", "batch_size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--filter-classifier", type=click.Path(path_type=Path), default=None,
              help="A classifier folder: keep the --keep-per-class images it is most confident of (filtered.npz).")
@click.option("--keep-per-class", type=int, default=None)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/advtrain-generated"), show_default=True)
@dry_run_option
def generate_cmd(model_dir, num, sampler, steps, shard_size, batch_size, seed, filter_classifier, keep_per_class, out,
                 dry_run):
    """Sample a labelled set into OUT/images-XXXXX.npz (resumable; split across processes)."""
    from ..advtrain import generate_set, write_filtered
    from ..errors import InputError
    from ..train.classifier import load_classifier
    from ..train.dist import env_device, env_rank_world

    if (filter_classifier is None) != (keep_per_class is None):
        raise InputError("filtering: expected both --filter-classifier and --keep-per-class, or neither")
    clf = load_classifier(filter_classifier) if filter_classifier is not None else None
    config = dict(model=model_dir, num=num, sampler=sampler, steps=steps, shard_size=shard_size, seed=seed,
                  filter_classifier=filter_classifier, keep_per_class=keep_per_class)
    if not dry_run_or_start("advtrain generate", config, out, dry_run):
        return
    rank, world = env_rank_world()
    t0 = time.time()
    paths = generate_set(model_dir, out, num, shard_size=shard_size, seed=seed, sampler=sampler, steps=steps,
                         batch=batch_size, rank=rank, world=world, device=env_device(), progress=rank == 0)
    if rank == 0 and clf is not None and all(p.is_file() for p in paths):
        click.echo(f"filtered → {write_filtered(out, clf, keep_per_class)}")
    if rank == 0 and all(p.is_file() for p in paths):
        from ..checkpoint import atomic_write_json
        from ..diffusion.samplers import nfe

        atomic_write_json(out / "metrics.json", {"num_images": num, "shards": len(paths), "sampler": sampler,
                                                 "nfe": nfe(sampler, steps), "seconds": round(time.time() - t0, 1)})
    click.echo(f"{len(paths)} shard(s) in {out}")


@advtrain_group.command("train")
@click.option("--data", default="digits", show_default=True, help='"digits" or a data path (e.g. cifar10:PATH).')
@click.option("--resolution", type=int, default=None, help="Resize the data (digits default: 16).")
@click.option("--generated", type=click.Path(path_type=Path), default=None, help="advtrain generate's folder, or an .npz.")
@click.option("--n-generated", type=int, default=None, help="Use the first N generated images (default: all).")
@click.option("--real-fraction", type=float, default=0.3, show_default=True)
@click.option("--method", type=click.Choice(["trades", "madry"]), default="trades", show_default=True)
@click.option("--beta", type=float, default=5.0, show_default=True, help="TRADES β.")
@click.option("--eps", type=float, default=8 / 255, show_default=True, help="L∞ budget in [0, 1] pixels.")
@click.option("--attack-steps", type=int, default=10, show_default=True)
@click.option("--arch", default="wrn-28-10", show_default=True, help="small-cnn or wrn-DEPTH-WIDTH.")
@click.option("--epochs", type=int, default=400, show_default=True)
@click.option("--iters-per-epoch", type=int, default=None, help="Default: ⌈real images / batch⌉.")
@click.option("--batch", "batch_size", type=int, default=512, show_default=True)
@click.option("--lr", type=float, default=0.2, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--warmup-epochs", type=int, default=10, show_default=True)
@click.option("--ema", "ema_decay", type=float, default=0.995, show_default=True)
@click.option("--holdout", type=int, default=1024, show_default=True, help="Training images held out for model selection.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in OUT.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/advtrain"), show_default=True)
@dry_run_option
def train_cmd(data, resolution, generated, n_generated, real_fraction, method, beta, eps, attack_steps, arch, epochs,
              iters_per_epoch, batch_size, lr, weight_decay, warmup_epochs, ema_decay, holdout, seed, resume, out, dry_run):
    """TRADES / PGD-AT on mixed batches; OUT/best and OUT/last classifier folders, OUT/epochs.jsonl."""
    from ..advtrain import AdvTrainJob, train_adv
    from ..advtrain.training import prepare

    job = AdvTrainJob(data=data, resolution=resolution, generated=str(generated) if generated else None,
                      n_generated=n_generated, real_fraction=real_fraction, method=method, beta=beta, eps=eps,
                      attack_steps=attack_steps, arch=arch, epochs=epochs, iters_per_epoch=iters_per_epoch,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      ema_decay=ema_decay, holdout=holdout, seed=seed)
    prepare(job)                                    # bad input fails here, before OUT is touched
    if not dry_run_or_start("advtrain train", job, out, dry_run, write_config=not resume):
        return
    s = train_adv(job, out, resume=resume)
    best, last = s["best"], s["last"]
    click.echo(f"best epoch {best['epoch']}: held-out PGD-{job.select_steps} {best['holdout_robust']:.3f}; "
               f"last epoch {last['epoch']}: {last['holdout_robust']:.3f} → {out}")


@advtrain_group.command("eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="An advtrain train run folder.")
@click.option("--data", default=None, help="Test data (default: the run's data, its test split).")
@click.option("--eps", type=float, default=None, help="Default: the run's ε.")
@click.option("--images", type=int, default=None, help="Test images (seeded selection; default: all).")
@click.option("--autoattack/--no-autoattack", default=True, show_default=True)
@click.option("--n-check", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/advtrain-eval"), show_default=True)
@dry_run_option
def eval_cmd(run_dir, data, eps, images, autoattack, n_check, seed, out, dry_run):
    """Clean, PGD-40 and AutoAttack of the best and last networks; OUT/metrics.json, OUT/report.md."""
    from ..advtrain.evaluation import evaluate_run, report_markdown
    from ..checkpoint import atomic_write_bytes, atomic_write_json

    config = dict(run=run_dir, data=data, eps=eps, images=images, autoattack=autoattack, n_check=n_check, seed=seed)
    if not dry_run_or_start("advtrain eval", config, out, dry_run):
        return
    res = evaluate_run(run_dir, data=data, eps=eps, images=images, autoattack=autoattack, n_check=n_check, seed=seed)
    atomic_write_json(out / "metrics.json", res)
    md = report_markdown(res)
    atomic_write_bytes(out / "report.md", md.encode())
    click.echo(md)


COMMANDS = [advtrain_group]

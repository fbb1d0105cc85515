"""``trustdiff advtrain …``: adversarial training on diffusion-generated data (Wang et al. 2023).

    trustdiff advtrain generate --model runs/cond -n 50000 --out runs/gen              # Heun, 20 steps
    trustdiff advtrain train --generated runs/gen --n-generated 10000 --out runs/at    # the digits preset
    trustdiff advtrain eval --run runs/at --out runs/at-eval                           # clean, PGD-40, AutoAttack

At CIFAR-10 scale on GPUs (the paper's setting, 1M generated images):

    accelerate launch -m trustdiff.cli advtrain generate --model EDM_DIR -n 1000000 --out gen
    accelerate launch -m trustdiff.cli advtrain train --data cifar10:PATH --generated gen \\
        --preset cifar10-wang2023 --out at
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from .common import COUNT, COUNT0, NONNEG, POSITIVE, SAMPLERS, run_command, seed_option, unsafe_pickle_option
from .common import MODEL_HELP, adm_config_option
from ..advtrain.augment import AUGMENTATIONS


@click.group("advtrain")
def advtrain_group():
    """Adversarial training on real + diffusion-generated images."""


@advtrain_group.command("generate")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help=f"A diffusion model: {MODEL_HELP}. Class-conditional (its labels are the training labels), or "
                   "unconditional with --label-classifier.")
@adm_config_option
@click.option("-n", "--num", type=COUNT, required=True, help="Images to generate (classes cycle 0…K−1).")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="heun", show_default=True)
@click.option("--sample-steps", "steps", type=COUNT, default=20, show_default=True, help="Sampler levels (Wang et al.: Heun, 20).")
@click.option("--shard-size", type=COUNT, default=10_000, show_default=True)
@click.option("--batch", "batch_size", type=COUNT, default=256, show_default=True)
@seed_option("Image i uses seed + i.")
@click.option("--filter-classifier", type=click.Path(path_type=Path), default=None,
              help="A classifier folder: keep the --keep-per-class images it is most confident of (filtered.npz).")
@click.option("--keep-per-class", type=COUNT, default=None)
@click.option("--label-classifier", type=click.Path(path_type=Path), default=None,
              help="A classifier folder that labels an unconditional model's images (OUT/labelled.npz, OUT/labelled.json).")
@click.option("--min-confidence", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True,
              help="Keep the pseudo-labelled images whose predicted class has at least this probability.")
@unsafe_pickle_option
@run_command("advtrain generate", out="runs/advtrain-generated", resumable=True)
def generate_cmd(run, model_dir, adm_config, num, sampler, steps, shard_size, batch_size, seed, filter_classifier, keep_per_class,
                 label_classifier, min_confidence, allow_pickle, out):
    """Sample a labelled set into OUT/images-XXXXX.npz (resumable; split across processes); an
    unconditional model's images labelled by --label-classifier."""
    from ..advtrain import generate_set, write_filtered, write_pseudo_labelled
    from ..diffusion.model import load_model
    from ..errors import InputError
    from ..train.classifier import load_classifier
    from ..train.dist import env_rank_world

    if (filter_classifier is None) != (keep_per_class is None):
        raise InputError("filtering: expected both --filter-classifier and --keep-per-class, or neither")
    clf = (load_classifier(filter_classifier, allow_pickle=allow_pickle).to(run.device)
           if filter_classifier is not None else None)
    _, spec = load_model(model_dir, allow_pickle=allow_pickle, adm_config=adm_config)    # a missing or broken model fails here
    if spec.num_classes is None and label_classifier is None:
        raise InputError(f"--model: an unconditional model ({model_dir}) has no labels: expected --label-classifier, "
                         "or a class-conditional model")
    if spec.num_classes is not None and label_classifier is not None:
        raise InputError(f"--label-classifier: expected an unconditional --model, got a class-conditional one ({model_dir})")
    labeller = (load_classifier(label_classifier, allow_pickle=allow_pickle).eval().to(run.device)
                if label_classifier is not None else None)
    config = dict(model=model_dir, adm_config=adm_config, num=num, sampler=sampler, steps=steps, shard_size=shard_size, seed=seed,
                  filter_classifier=filter_classifier, keep_per_class=keep_per_class, label_classifier=label_classifier,
                  min_confidence=min_confidence)
    if not run.start(config):
        return
    rank, world = env_rank_world()
    t0 = time.time()
    paths = generate_set(model_dir, out, num, allow_pickle=allow_pickle, adm_config=adm_config, shard_size=shard_size, seed=seed, sampler=sampler, steps=steps,
                         batch=batch_size, rank=rank, world=world, device=run.device, precision=run.precision,
                         progress=rank == 0)
    if rank == 0 and labeller is not None and all(p.is_file() for p in paths):
        click.echo(f"pseudo-labelled → {write_pseudo_labelled(out, labeller, min_confidence=min_confidence, classifier_name=str(label_classifier))}")
    if rank == 0 and clf is not None and all(p.is_file() for p in paths):
        click.echo(f"filtered → {write_filtered(out, clf, keep_per_class)}")
    if rank == 0 and all(p.is_file() for p in paths):
        from ..persist import atomic_write_json
        from ..diffusion.samplers import nfe

        atomic_write_json(out / "metrics.json", {"num_images": num, "shards": len(paths), "sampler": sampler,
                                                 "nfe": nfe(sampler, steps), "seconds": round(time.time() - t0, 1),
                                                 "device": str(run.device), "precision": run.precision})
    click.echo(f"{len(paths)} shard(s) in {out}")


def train_options(f):
    """The training job's options, shared by ``advtrain train`` and ``advtrain sweep``."""
    opts = [
        click.option("--data", default="digits", show_default=True, help='"digits" or a data path (e.g. cifar10:PATH).'),
        click.option("--resolution", type=COUNT, default=None, help="Resize the data (digits default: 16)."),
        click.option("--real-fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.3, show_default=True),
        click.option("--method", type=click.Choice(["trades", "madry"]), default="trades", show_default=True),
        click.option("--beta", type=NONNEG, default=5.0, show_default=True, help="TRADES β."),
        click.option("--preset", type=click.Choice(["digits", "cifar10-wang2023"]), default="digits", show_default=True,
                     help="Defaults of --arch/--width/--eps/--epochs/--iters-per-epoch/--batch/--lr/--warmup-epochs/"
                          "--holdout/--flip: digits (CPU-sized, bench/advtrain_digits.py's) or cifar10-wang2023 (the paper's "
                          "WRN-28-10, GPUs)."),
        click.option("--eps", type=POSITIVE, default=None, help="L∞ budget in [0, 1] pixels (digits: 0.1; cifar10-wang2023: 8/255)."),
        click.option("--attack-steps", type=COUNT, default=10, show_default=True, help="PGD iterations of the training attack."),
        click.option("--arch", default=None, help="small-cnn or wrn-DEPTH-WIDTH (default: the preset's)."),
        click.option("--width", type=COUNT, default=None, help="small-cnn width (default: the preset's)."),
        click.option("--epochs", type=COUNT, default=None),
        click.option("--iters-per-epoch", type=COUNT, default=None, help="Default: the preset's, or ⌈real images / batch⌉."),
        click.option("--batch", "batch_size", type=COUNT, default=None),
        click.option("--lr", type=POSITIVE, default=None),
        click.option("--weight-decay", type=NONNEG, default=5e-4, show_default=True),
        click.option("--warmup-epochs", type=click.IntRange(min=0), default=None),
        click.option("--ema", "ema_decay", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.995, show_default=True),
        click.option("--holdout", type=COUNT0, default=None, help="Training images held out for model selection."),
        click.option("--augment", type=click.Choice(AUGMENTATIONS), default="none", show_default=True,
                     help="Augmentation of every training batch (trustdiff.advtrain.augment; Wang et al. 2023, Table 5)."),
        click.option("--flip/--no-flip", default=None,
                     help="The augmentations' horizontal flip (default: the preset's; digits: off, since a mirrored "
                          "digit is not an image of its class; cifar10-wang2023: on)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def train_job(seed: int, generated=None, n_generated=None, **kw):
    """The AdvTrainJob of the train options: the preset's values where an option was not given."""
    from ..advtrain import AdvTrainJob
    from ..advtrain.training import PRESETS

    preset = kw.pop("preset")
    given = {k: kw.pop(k) for k in PRESETS[preset]}
    return AdvTrainJob(generated=str(generated) if generated else None, n_generated=n_generated, seed=seed, **kw,
                       **{k: given[k] if given[k] is not None else v for k, v in PRESETS[preset].items()})


@advtrain_group.command("train")
@click.option("--generated", type=click.Path(path_type=Path), default=None, help="advtrain generate's folder, or an .npz.")
@click.option("--n-generated", type=COUNT, default=None, help="Use the first N generated images (default: all).")
@train_options
@seed_option()
@run_command("advtrain train", out="runs/advtrain", resumable=True)
def train_cmd(run, generated, n_generated, seed, out, **kw):
    """TRADES / PGD-AT on mixed batches; OUT/best and OUT/last classifier folders, OUT/epochs.jsonl."""
    from ..advtrain import train_adv
    from ..advtrain.training import prepare

    preset = kw["preset"]
    job = train_job(seed, generated, n_generated, **kw)
    prepare(job)                                    # bad input fails here, before OUT is touched
    if not run.start(dict(job=job, preset=preset)):
        return
    s = train_adv(job, out, resume=run.resume, device=run.device, precision=run.precision)
    best, last = s["best"], s["last"]
    click.echo(f"best epoch {best['epoch']}: held-out PGD-{job.select_steps} {best['holdout_robust']:.3f}; "
               f"last epoch {last['epoch']}: {last['holdout_robust']:.3f} → {out}")


@advtrain_group.command("sweep")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help=f"The generator: {MODEL_HELP} (unconditional: with --label-classifier).")
@click.option("--sample-steps", "steps", default="3,5,10,18", show_default=True,
              help="Comma-separated sampler step counts, one row each.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="heun", show_default=True)
@click.option("-n", "--num", type=COUNT, default=10_000, show_default=True, help="Generated images per row.")
@click.option("--label-classifier", type=click.Path(path_type=Path), default=None,
              help="A classifier folder that labels an unconditional model's images.")
@click.option("--min-confidence", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True)
@click.option("--test-images", type=COUNT, default=None, help="Test images to evaluate (seeded selection; default: all).")
@click.option("--autoattack/--no-autoattack", default=True, show_default=True)
@click.option("--n-check", type=COUNT, default=64, show_default=True)
@click.option("--feature-steps", type=COUNT, default=1000, show_default=True, help="Training steps of the FD feature net.")
@train_options
@seed_option("The generator's seeds (the same in every row) and the training seed.")
@unsafe_pickle_option
@run_command("advtrain sweep", out="runs/advtrain-sweep", resumable=True)
def sweep_cmd(run, model_dir, steps, sampler, num, label_classifier, min_confidence, test_images, autoattack, n_check,
              feature_steps, seed, allow_pickle, out, **kw):
    """Does generator quality predict robustness? For each step count: generate, FD, adversarial
    training, clean / PGD-40 / AutoAttack; then Spearman ρ(FD, AutoAttack) with its interval.
    OUT/metrics.json, OUT/report.md; resumable."""
    from ..advtrain.sweep import steps_sweep, sweep_markdown
    from ..advtrain.training import prepare
    from ..diffusion.model import load_model
    from ..errors import InputError
    from ..persist import atomic_write_bytes
    from ..train.classifier import load_classifier

    try:
        step_list = [int(v) for v in steps.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--sample-steps: expected comma-separated integers, got {steps!r}") from None
    if not step_list or min(step_list) < 1 or len(set(step_list)) != len(step_list):
        raise InputError(f"--sample-steps: expected distinct integers >= 1, got {steps!r}")
    _, spec = load_model(model_dir, allow_pickle=allow_pickle)
    if (spec.num_classes is None) != (label_classifier is not None):
        raise InputError("--label-classifier: expected it with an unconditional --model and only then "
                         f"({model_dir} is {'un' if spec.num_classes is None else ''}conditional)")
    labeller = (load_classifier(label_classifier, allow_pickle=allow_pickle).eval().to(run.device)
                if label_classifier is not None else None)
    preset = kw["preset"]
    job = train_job(seed, **kw)
    prepare(job)
    config = dict(model=model_dir, steps=step_list, sampler=sampler, num=num, label_classifier=label_classifier,
                  min_confidence=min_confidence, test_images=test_images, autoattack=autoattack, n_check=n_check,
                  feature_steps=feature_steps, seed=seed, job=job, preset=preset)
    if not run.start(config):
        return
    s = steps_sweep(model_dir, out, step_list, n=num, job=job, sampler=sampler, labeller=labeller,
                    labeller_name=str(label_classifier or ""), min_confidence=min_confidence, test_images=test_images,
                    autoattack=autoattack, n_check=n_check, feature_steps=feature_steps, seed=seed, device=run.device,
                    precision=run.precision, allow_pickle=allow_pickle, progress=click.echo)
    md = sweep_markdown(s)
    atomic_write_bytes(out / "report.md", md.encode())
    click.echo(md)


@advtrain_group.command("eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="An advtrain train run folder.")
@click.option("--data", default=None, help="Test data (default: the run's data, its test split).")
@click.option("--eps", type=POSITIVE, default=None, help="Default: the run's ε.")
@click.option("-n", "--num", "images", type=COUNT, default=None, help="Test images (seeded selection; default: all).")
@click.option("--autoattack/--no-autoattack", default=True, show_default=True)
@click.option("--n-check", type=COUNT, default=64, show_default=True)
@seed_option()
@run_command("advtrain eval", out="runs/advtrain-eval")
def eval_cmd(run, run_dir, data, eps, images, autoattack, n_check, seed, out):
    """Clean, PGD-40 and AutoAttack of the best and last networks; OUT/metrics.json, OUT/report.md."""
    from ..advtrain.evaluation import check_run, evaluate_run, report_markdown, test_set
    from ..persist import atomic_write_bytes, atomic_write_json
    from ..train.classifier import classifier_config

    job = check_run(run_dir)                        # a wrong run type fails before OUT is touched
    test_set(data or job["data"], classifier_config(run_dir / "last")["resolution"], images, seed)
    config = dict(run=run_dir, data=data, eps=eps, images=images, autoattack=autoattack, n_check=n_check, seed=seed)
    if not run.start(config):
        return
    res = evaluate_run(run_dir, data=data, eps=eps, images=images, autoattack=autoattack, n_check=n_check, seed=seed,
                       device=run.device, precision=run.precision)
    atomic_write_json(out / "metrics.json", res)
    md = report_markdown(res)
    atomic_write_bytes(out / "report.md", md.encode())
    click.echo(md)


COMMANDS = [advtrain_group]

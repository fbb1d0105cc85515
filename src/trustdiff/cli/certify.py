"""``trustdiff train-classifier``, ``trustdiff certify`` and ``trustdiff certify-merge``."""
from __future__ import annotations

import os
from pathlib import Path

import click

from .common import COUNT, NONNEG, OPEN_UNIT, POSITIVE, ran_on, run_command, seed_option, unsafe_pickle_option
from .common import MODEL_HELP, adm_config_option, compile_option


@click.command("train-classifier")
@click.option("--data", default="digits", show_default=True, help='"digits" or a data path (train split).')
@click.option("--resolution", type=COUNT, default=16, show_default=True)
@click.option("--noise-sigma", type=NONNEG, default=0.0, show_default=True, help="Gaussian augmentation σ ([0, 1] pixels); 0: standard.")
@click.option("--width", type=COUNT, default=32, show_default=True, help="SmallCNN width.")
@click.option("--steps", type=COUNT, default=2000, show_default=True, help="Training steps.")
@click.option("--batch", "batch_size", type=COUNT, default=128, show_default=True)
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@seed_option()
@run_command("train-classifier", out="runs/classifier", resumable=True)
def train_classifier_cmd(run, data, resolution, noise_sigma, width, steps, batch_size, lr, seed, out):
    """Train a base classifier (standard, or noise-trained with --noise-sigma); the network is
    written to OUT/classifier."""
    import torch

    from ..train.classifier import accuracy, train_classifier
    from ..persist import atomic_write_json
    from ..data import load
    from ..errors import InputError

    train = load(data, resolution=resolution, split="train", seed=seed)
    x, y = train.tensors()
    if train.num_classes < 2:
        raise InputError(f"{data}: a classifier needs labels of at least 2 classes")
    config = dict(data=data, resolution=resolution, noise_sigma=noise_sigma, width=width, steps=steps,
                  batch_size=batch_size, lr=lr, seed=seed)
    test_x, test_y = load(data, resolution=resolution, split="test", seed=seed).tensors()
    if not run.start(config):
        return
    net = train_classifier(x, y, run_dir=out, noise_sigma=noise_sigma, steps=steps, batch_size=batch_size, lr=lr,
                           seed=seed, width=width, resume=run.resume, data=data, split_seed=seed, device=run.device,
                           precision=run.precision)
    metrics = {"test_accuracy": accuracy(net, test_x, test_y), "noise_sigma": noise_sigma, "steps": steps,
               "test_images": len(test_x), "device": ran_on(net), "precision": run.precision}
    if noise_sigma > 0:
        metrics["noisy_test_accuracy"] = accuracy(net, test_x, test_y, noise_sigma=noise_sigma,
                                                  generator=torch.Generator().manual_seed(seed))
    atomic_write_json(out / "metrics.json", metrics)
    click.echo(f"classifier written to {out / 'classifier'}: test accuracy {metrics['test_accuracy']:.3f}")


def _parse_shard(text: str) -> tuple[int, int]:
    """"i/k" → (i, k); "auto" → (RANK, WORLD_SIZE) from the environment (accelerate launch)."""
    from ..errors import InputError

    if text == "auto":
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard: expected i/k (e.g. 0/4) or auto, got {text!r}") from None
    if not (k >= 1 and 0 <= i < k):
        raise InputError(f"--shard: expected i/k with 0 <= i < k, got {text!r}")
    return i, k


def _parse_radii(text: str) -> tuple[float, ...]:
    from ..errors import InputError

    try:
        radii = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--radii: expected comma-separated numbers, got {text!r}") from None
    if any(r < 0 for r in radii):
        raise InputError(f"--radii: expected radii >= 0, got {text!r}")
    return radii


@click.command("certify")
@click.option("--classifier", "classifier_dir", required=True, type=click.Path(path_type=Path),
              help="A classifier folder (or a train-classifier run folder).")
@click.option("--denoiser", "denoiser_dir", type=click.Path(path_type=Path), default=None,
              help=f"A diffusion model to denoise with in front of the classifier (Carlini et al.): {MODEL_HELP}.")
@adm_config_option
@click.option("--sample-steps", "denoise_steps", type=COUNT, default=1, show_default=True,
              help="Denoiser levels: 1 one-shot denoise (Carlini et al.); more: deterministic Heun levels.")
@click.option("--data", default=None, help="Test data; default: the classifier's training data set.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True)
@click.option("--sigma", type=POSITIVE, required=True, help="Noise σ in [0, 1]-pixel units.")
@click.option("--draws0", "n0", type=COUNT, default=100, show_default=True, help="Monte-Carlo draws to select the class (Cohen et al.'s n0).")
@click.option("--draws", "n", type=COUNT, default=10_000, show_default=True, help="Monte-Carlo draws to estimate p_A (Cohen et al.'s n).")
@click.option("--alpha", type=OPEN_UNIT, default=0.001, show_default=True, help="Failure probability of each certificate.")
@click.option("--batch", "batch_size", type=COUNT, default=1000, show_default=True)
@click.option("--skip", type=COUNT, default=1, show_default=True, help="Certify every SKIP-th test image.")
@click.option("--max", "max_index", type=click.IntRange(min=-1), default=-1, show_default=True, help="Stop before this test index (-1: all).")
@click.option("--shard", default="0/1", show_default=True, help="i/k: this process's share; 'auto' under accelerate launch.")
@click.option("--radii", default="0,0.25,0.5,0.75,1.0", show_default=True)
@seed_option("Image idx draws its noise from seed + idx.")
@compile_option
@unsafe_pickle_option
@run_command("certify", out="runs/certify", shared=lambda p: p["shard"] != "0/1",
             shared_glob="certify-shard-*")
def certify_cmd(run, classifier_dir, denoiser_dir, adm_config, denoise_steps, data, split, sigma, n0, n, alpha, batch_size, skip,
                max_index, shard, radii, seed, compile_nets, allow_pickle, out):
    """Certify test images with randomized smoothing (Cohen et al.), optionally behind a diffusion
    denoiser (Carlini et al.): OUT/certify.tsv, metrics.json, certify-curve.png. With --shard i/k,
    OUT/certify-shard-i-of-k.tsv; merge with `trustdiff certify-merge OUT`."""

    from ..certify import DenoisedClassifier, Smooth, certify_set, check_certify_arguments, report, select_indices
    from ..runtime import compile_network, with_precision
    from ..train.classifier import classifier_config, load_classifier
    from ..data import load
    from ..errors import InputError

    # every bad input fails here, before OUT is touched
    i, k = _parse_shard(shard)
    radii_t = _parse_radii(radii)
    check_certify_arguments(n0, n, alpha, batch_size)
    device = run.device
    cfg = classifier_config(classifier_dir)
    net = load_classifier(classifier_dir, allow_pickle=allow_pickle).to(device)
    data = data or cfg.get("data", "digits")
    test = load(data, resolution=cfg["resolution"], split=split, seed=cfg.get("split_seed", 0))  # the split it was trained beside
    x, y = test.tensors()
    if x.shape[1] != cfg["in_channels"]:
        raise InputError(f"{data}: {x.shape[1]}-channel images, but the classifier takes {cfg['in_channels']}")
    f = net
    if denoiser_dir is not None:
        from ..diffusion.model import load_model

        den, spec = load_model(denoiser_dir, allow_pickle=allow_pickle, adm_config=adm_config)
        if (spec.channels, spec.resolution) != (x.shape[1], x.shape[-1]):
            raise InputError(f"{denoiser_dir}: a {spec.channels}×{spec.resolution}² model, but the data are "
                             f"{x.shape[1]}×{x.shape[-1]}²")
        f = DenoisedClassifier(den.eval(), net, sigma, steps=denoise_steps).to(device).eval()
    if compile_nets:
        compile_network(f)                          # its σ is fixed: one graph for denoiser and classifier
    smoothed = Smooth(with_precision(f, run.precision), cfg["num_classes"], sigma)   # bf16: f under autocast
    indices = select_indices(len(x), skip=skip, max_index=max_index, shard=(i, k))
    meta = dict(classifier=str(classifier_dir), classifier_noise_sigma=cfg.get("noise_sigma"),
                denoiser=str(denoiser_dir) if denoiser_dir else None, denoise_steps=denoise_steps if denoiser_dir else None,
                data=data, split=split, sigma=sigma, n0=n0, n=n, alpha=alpha, skip=skip, max_index=max_index,
                seed=seed, radii=list(radii_t), batch_size=batch_size, precision=run.precision, compile=compile_nets)
    if not run.start({**meta, "shard": [i, k]}, write_config=i == 0):
        return
    stem = report.shard_stem(i, k) if k > 1 else "certify"
    partial = out / f"{stem}.tsv.partial"
    rows = certify_set(smoothed, x, y, indices, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                       device=device, on_row=report.tsv_appender(partial), progress=True)
    meta["device"] = ran_on(f)                        # where the smoothed classifier ran (not a setting: shards may differ)
    if k > 1:
        report.write_shard(out, i, k, rows, meta)
        partial.unlink(missing_ok=True)
        click.echo(f"shard {i}/{k}: {len(rows)} images → {out / (stem + '.tsv')}; "
                   f"merge with `trustdiff certify-merge {out}` when all {k} are done")
        return
    metrics = report.finalize(out, rows, meta)
    partial.unlink(missing_ok=True)
    click.echo(metrics["table"])
    click.echo(f"→ {out / report.TSV}, {out / report.METRICS}, {out / report.CURVE}")


@click.command("certify-merge")
@click.argument("folder", type=click.Path(path_type=Path))
def certify_merge_cmd(folder):
    """Merge FOLDER's finished certify shards into certify.tsv, metrics.json and the curve."""
    from ..certify import report

    metrics = report.merge_shards(folder)
    click.echo(metrics["table"])


COMMANDS = [train_classifier_cmd, certify_cmd, certify_merge_cmd]

"""``trustdiff watermark …``: the data-watermarking recipe (Zhao et al. 2023).

    trustdiff watermark train-codec --n-bits 64 --resolution 32 --out runs/codec
    trustdiff watermark embed  --codec runs/codec --key-seed 7 --out runs/embed      # → watermarked.npz, key.txt
    trustdiff watermark detect --codec runs/codec --images runs/gen --key-file runs/embed/key.txt --fpr 1e-6 \\
                               --calibrate digits --out runs/detect
    trustdiff watermark recipe --out runs/recipe                                       # everything, end to end

The key is always given (``--key`` bits or 0x-hex, ``--key-file``, or ``--key-seed`` for a fresh
one that is written out); nothing has a built-in key.
"""
from __future__ import annotations

from pathlib import Path

import click

from .common import (COUNT, COUNT0, NONNEG, OPEN_UNIT, POSITIVE, SEED, parse_floats, ran_on, run_command, seed_option,
                     unsafe_pickle_option)


def _codec_options(f):
    opts = [
        click.option("--n-bits", type=click.IntRange(4, 128), default=64, show_default=True, help="Bits in the key (4..128)."),
        click.option("--width", type=COUNT, default=32, show_default=True, help="Base width of both networks (recipe: 32)."),
        click.option("--dec-width", type=COUNT, default=None, help="Decoder base width (default: --width). It must give "
                     "the decoder's last layer clearly more features than bits: at 16 for 64 bits Bit-Acc stalls near 0.88."),
        click.option("--enc-depth", type=COUNT, default=4, show_default=True, help="Stride-2 levels of the encoder U-Net (recipe: 4)."),
        click.option("--dec-depth", type=COUNT, default=5, show_default=True, help="Stride-2 convs of the decoder (recipe: 5)."),
        click.option("--gamma", type=NONNEG, default=10.0, show_default=True, help="Final L2 weight γ (recipe: 10)."),
        click.option("--l2-await", type=COUNT0, default=1000, show_default=True, help="Steps after Bit-Acc first passes 0.9 before the L2 ramp (recipe: 1000)."),
        click.option("--l2-ramp", type=COUNT0, default=3000, show_default=True, help="Steps of the linear L2 ramp (recipe: 3000)."),
        click.option("--distortions", default="", show_default=True,
                     help="Training distortions, comma-separated: robust (the preset: shift,crop,jpeg,noise,blur,resize,brightness,contrast,gamma) or any of shift,crop,flip,jpeg,noise,blur,resize,brightness,contrast,gamma (beyond the recipe)."),
        click.option("--codec-steps", type=COUNT, default=4000, show_default=True, help="Codec training steps."),
        click.option("--codec-batch", type=COUNT, default=64, show_default=True),
        click.option("--codec-lr", type=POSITIVE, default=1e-3, show_default=True, help="Adam lr (recipe: 1e-4 over ~80k steps; 1e-3 for CPU budgets)."),
        click.option("--fair-bits/--zero-bits", default=True, show_default=True,
                     help="Decide each decoded bit at its median logit on the clean training images, so clean images' bits are fair coins as the thresholds assume (--zero-bits: at 0, as the recipe)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _codec_job(data, resolution, n_bits, width, dec_width, enc_depth, dec_depth, gamma, l2_await, l2_ramp, distortions,
               codec_steps, codec_batch, codec_lr, seed, checkpoint_every=500, fair_bits=True):
    from ..train import TrainConfig
    from ..watermark.training import CodecJob

    kinds = tuple(k.strip() for k in distortions.split(",") if k.strip())
    return CodecJob(data=data, resolution=resolution, n_bits=n_bits, width=width, dec_width=dec_width, enc_depth=enc_depth,
                    dec_depth=dec_depth, gamma=gamma, l2_await=l2_await, l2_ramp=l2_ramp, distortions=kinds, fair_bits=fair_bits,
                    train=TrainConfig(steps=codec_steps, batch_size=codec_batch, lr=codec_lr, warmup_steps=0,
                                      grad_clip=None, ema_halflife_kimg=5.0, checkpoint_every=checkpoint_every,
                                      log_every=50, seed=seed))


@click.group("watermark")
def watermark():
    """Watermark a training set so that a diffusion model trained on it carries the key."""


@watermark.command("train-codec")
@click.option("--data", default="digits", show_default=True, help='"digits" or a data path (train split).')
@click.option("--resolution", type=COUNT, default=32, show_default=True, help="Images are resized to this (a multiple of the codec stride).")
@_codec_options
@seed_option()
@run_command("watermark train-codec", out="runs/codec", resumable=True)
def train_codec_cmd(run, data, resolution, n_bits, width, dec_width, enc_depth, dec_depth, gamma, l2_await, l2_ramp, distortions,
                    codec_steps, codec_batch, codec_lr, fair_bits, seed, out):
    """Train the StegaStamp-style encoder/decoder on random keys; the codec goes to OUT/codec."""
    from ..watermark.training import prepare_codec, train_codec

    job = _codec_job(data, resolution, n_bits, width, dec_width, enc_depth, dec_depth, gamma, l2_await, l2_ramp,
                     distortions, codec_steps, codec_batch, codec_lr, seed, fair_bits=fair_bits)
    prepare_codec(job)                                   # bad input fails here, before OUT is touched
    if not run.start(job):
        return
    folder = train_codec(job, out, resume=run.resume, device=run.device, precision=run.precision)
    import json

    m = json.loads((out / "metrics.json").read_text())["heldout"]
    click.echo(f"codec written to {folder}: held-out Bit-Acc {m['bit_acc']:.4f}, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")


def _resolve_key(key, key_file, key_seed, n_bits):
    """Exactly one of --key, --key-file, --key-seed → (key tensor, source text)."""
    from ..errors import InputError
    from ..watermark.keys import key_from_seed, parse_key
    from ..watermark.recipe import read_key

    given = [v is not None for v in (key, key_file, key_seed)]
    if sum(given) != 1:
        raise InputError("key: expected exactly one of --key, --key-file, --key-seed")
    if key is not None:
        return parse_key(key, n_bits), "given"
    if key_file is not None:
        k = read_key(key_file)
        if n_bits is not None and len(k) != n_bits:
            raise InputError(f"key file {key_file}: expected {n_bits} bits for this codec, got {len(k)}")
        return k, f"file {key_file}"
    return key_from_seed(key_seed, n_bits), f"seed {key_seed}"


@watermark.command("embed")
@click.option("--codec", "codec_dir", required=True, type=click.Path(path_type=Path), help="A codec folder or train-codec run folder.")
@click.option("--data", default="digits", show_default=True)
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test", "all"]))
@click.option("--key", default=None, help="The key: a bit string or 0x-hex of the codec's length.")
@click.option("--key-file", default=None, type=click.Path(path_type=Path), help="A key.txt written by embed/recipe, or a file with bits/hex.")
@click.option("--key-seed", default=None, type=SEED, help="Derive a fresh key from this seed (written to OUT/key.txt).")
@click.option("--per-image-keys", is_flag=True, help="Give every image its own random key (from --key-seed), stored in the .npz.")
@click.option("--strength", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Residual scale α: x + α·(E(x, key) − x) (below 1: higher PSNR, a weaker residual to read).")
@seed_option("Data split seed.")
@unsafe_pickle_option
@run_command("watermark embed", out="runs/embed")
def embed_cmd(run, codec_dir, data, split, key, key_file, key_seed, per_image_keys, strength, seed, allow_pickle, out):
    """Watermark a data set: OUT/watermarked.npz (uint8 images, labels, key, PSNR/SSIM per image)."""
    import torch

    from ..persist import atomic_write_json
    from ..data import load
    from ..errors import InputError
    from ..images import make_grid, save_png
    from ..watermark.codec import load_codec
    from ..watermark.embed import summary, watermark as wm_images, write_watermarked
    from ..watermark.keys import key_to_bits, key_to_hex, random_keys
    from ..watermark.recipe import write_key

    codec = load_codec(codec_dir, allow_pickle=allow_pickle).to(run.device)
    imageset = load(data, resolution=codec.resolution, split=split, seed=seed)
    x, y = imageset.tensors()
    if x.shape[1] != codec.channels:
        raise InputError(f"{data}: {x.shape[1]}-channel images, the codec takes {codec.channels}")
    if per_image_keys:
        if key_seed is None or key is not None or key_file is not None:
            raise InputError("--per-image-keys: expected --key-seed (and no --key / --key-file)")
        k, source = random_keys(len(x), codec.n_bits, generator=torch.Generator().manual_seed(key_seed)), f"per-image, seed {key_seed}"
    else:
        k, source = _resolve_key(key, key_file, key_seed, codec.n_bits)
    config = dict(codec=str(codec_dir), data=data, split=split, seed=seed, key_source=source, per_image_keys=per_image_keys,
                  key_seed=key_seed, images=len(x), strength=strength)
    if not run.start(config):
        return
    result = wm_images(codec, x.to(run.device), k, precision=run.precision, strength=strength)   # on the codec's device
    path = write_watermarked(out / "watermarked.npz", result, y)
    if k.ndim == 1:
        write_key(out / "key.txt", k, source=source)
    save_png(out / "grid.png", make_grid(torch.cat([x[:10], result["images"][:10].cpu()]), nrow=10))
    metrics = {**summary(result), "key_source": source, "per_image_keys": per_image_keys, "data": data, "split": split,
               "seed": seed, "key_seed": key_seed, "strength": strength, "device": ran_on(codec, result["images"]),
               "precision": run.precision}
    if k.ndim == 1:
        metrics |= {"key_bits": key_to_bits(k), "key_hex": key_to_hex(k)}
    atomic_write_json(out / "metrics.json", metrics)
    click.echo(f"{len(x)} images watermarked → {path}: PSNR {metrics['psnr_mean']:.2f} dB, SSIM {metrics['ssim_mean']:.4f}, "
               f"Bit-Acc {metrics['bit_acc_mean']:.4f}")


def load_images(spec: str, resolution: int, channels: int, split: str, seed: int, flag: str = "--images"):
    """Images to test at the codec's resolution: a `trustdiff generate` folder (images-*.npz
    shards), or any data spec. Images of another size are an error, not resized (resizing erases
    the mark); the embedded digits are drawn at the codec's resolution."""
    import torch

    from ..data import load, load_npz
    from ..errors import InputError

    p = Path(spec)
    shards = sorted(p.glob("images-*.npz")) if p.is_dir() else []
    if shards:
        x = torch.cat([load_npz(s).tensors()[0] for s in shards])
    else:
        x = load(spec, resolution=resolution if spec == "digits" else None, split=split, seed=seed).tensors()[0]
    if tuple(x.shape[1:]) != (channels, resolution, resolution):
        raise InputError(f"{flag} {spec}: expected {channels}×{resolution}×{resolution} images (the codec's), got "
                         f"{'×'.join(map(str, x.shape[1:]))}; resize them yourself if you mean to (resizing erases the mark)")
    return x


@watermark.command("detect")
@click.option("--codec", "codec_dir", required=True, type=click.Path(path_type=Path))
@click.option("--images", required=True, help="A data spec/path, a .npz, or a `trustdiff generate` output folder.")
@click.option("--split", default="all", show_default=True, type=click.Choice(["train", "test", "all"]))
@click.option("--key", default=None, help="The key: bits or 0x-hex.")
@click.option("--key-file", default=None, type=click.Path(path_type=Path))
@click.option("--key-seed", default=None, type=SEED, help="A key derived from this seed (as embed --key-seed).")
@click.option("--fpr", type=OPEN_UNIT, default=1e-6, show_default=True, help="False-positive rate of the decision.")
@click.option("--calibrate", "calibrate", multiple=True,
              help="Clean images to check (and if need be calibrate) the threshold on: data specs/paths; repeatable.")
@click.option("--calib-images", type=COUNT, default=2000, show_default=True, help="Fill each --calibrate set up to this many with shifted copies.")
@seed_option()
@unsafe_pickle_option
@run_command("watermark detect", out="runs/detect")
def detect_cmd(run, codec_dir, images, split, key, key_file, key_seed, fpr, calibrate, calib_images, seed, allow_pickle, out):
    """Decode images, test each for the key (binomial p-value), decide at --fpr; TPR with its interval."""
    import io

    import numpy as np
    import torch

    from ..persist import atomic_write_bytes, atomic_write_json
    from ..watermark.codec import load_codec
    from ..watermark.detect import detect
    from ..watermark.null import shifted_copies

    from ..watermark.stats import check_reachable

    codec = load_codec(codec_dir, allow_pickle=allow_pickle).to(run.device)
    k, source = _resolve_key(key, key_file, key_seed, codec.n_bits)
    check_reachable(codec.n_bits, fpr)
    x = load_images(images, codec.resolution, codec.channels, split, seed).to(run.device)
    clean = None
    if calibrate:
        parts = [shifted_copies(load_images(c, codec.resolution, codec.channels, "all", seed, flag="--calibrate"),
                                calib_images, generator=torch.Generator().manual_seed(seed + 17)) for c in calibrate]
        clean = torch.cat(parts).to(run.device)       # shifted on the CPU (the same copies on every device)
    config = dict(codec=str(codec_dir), images=images, split=split, key_source=source, fpr=fpr,
                  calibrate=list(calibrate), calib_images=calib_images, seed=seed)
    if not run.start(config):
        return
    det = detect(codec, x, k, fpr=fpr, clean=clean, precision=run.precision)
    s = det.summary()
    atomic_write_json(out / "metrics.json", {**s, "key_source": source, "device": ran_on(codec, x, clean),
                                             "precision": run.precision})
    buf = io.BytesIO()
    np.savez(buf, matches=det.matches.numpy(), bit_acc=det.bit_acc.numpy(), p_values=det.p_values.numpy(),
             detected=det.detected.numpy(), bits=det.bits.numpy().astype(np.uint8))
    atomic_write_bytes(out / "per_image.npz", buf.getvalue())
    t = s["threshold"]
    click.echo(f"{s['images']} images: Bit-Acc {s['bit_acc_mean']:.4f}; detected {s['detected']['k']}/{s['images']} "
               f"= {s['detected']['value']:.3f} [{s['detected']['lo']:.3f}, {s['detected']['hi']:.3f}] at FPR {fpr:g} "
               f"(threshold {t['value']}/{t['n_bits']} matches, {t['mode']}: {t['reason']})")


@watermark.command("recipe")
@click.option("--data", default="digits", show_default=True)
@click.option("--resolution", type=COUNT, default=32, show_default=True)
@_codec_options
@click.option("--codec", "codec_dir", default=None, type=click.Path(path_type=Path), help="Use this trained codec instead of training one.")
@click.option("--key", default=None, help="The owner's key (bits or 0x-hex); default: derived from --key-seed.")
@click.option("--key-seed", type=SEED, default=0, show_default=True)
@click.option("--size", default="small", show_default=True, help="Diffusion network size.")
@click.option("--steps", type=COUNT, default=2000, show_default=True, help="Diffusion training steps (each model).")
@click.option("--batch", type=COUNT, default=64, show_default=True)
@click.option("--lr", type=POSITIVE, default=2e-3, show_default=True)
@click.option("--unconditional", is_flag=True, help="Unconditional diffusion models (default: class-conditional).")
@click.option("--clean-model", default=None, type=click.Path(path_type=Path), help="Use this clean diffusion model as the null.")
@click.option("-n", "--num", "n_generate", type=COUNT, default=500, show_default=True, help="Images generated by each model.")
@click.option("--sample-steps", type=COUNT, default=18, show_default=True, help="Heun steps (NFE 2·steps − 1).")
@click.option("--fpr", type=OPEN_UNIT, default=1e-6, show_default=True)
@click.option("--no-fd", is_flag=True, help="Skip FD (measured against --data's test split otherwise).")
@click.option("--feature-steps", type=COUNT, default=300, show_default=True, help="Training steps of the FD feature net (cached).")
@click.option("--weight-noise", default="", help="Comma-separated stds: Gaussian noise on the watermarked model's weights "
              "→ Bit-Acc, detection and FD per std (the recipe's robustness table), e.g. 0,0.001,0.01.")
@click.option("--weight-noise-n", type=COUNT, default=200, show_default=True, help="Images generated per weight-noise std.")
@click.option("--strength", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Residual scale α: x + α·(E(x, key) − x) (below 1: higher PSNR, a weaker residual to read).")
@seed_option()
@run_command("watermark recipe", out="runs/recipe", resumable=True)
def recipe_cmd(run, data, resolution, n_bits, width, dec_width, enc_depth, dec_depth, gamma, l2_await, l2_ramp, distortions,
               codec_steps, codec_batch, codec_lr, fair_bits, codec_dir, key, key_seed, size, steps, batch, lr, unconditional,
               clean_model, n_generate, sample_steps, fpr, no_fd, feature_steps, weight_noise, weight_noise_n, strength, seed,
               out):
    """The recipe end to end: codec → watermarked set → diffusion model → generation → detection,
    beside a model trained on clean data; OUT/metrics.json. Finished stages are reused."""
    from dataclasses import replace

    from ..train import TrainConfig
    from ..data import load
    from ..diffusion.model import load_model
    from ..errors import InputError
    from ..watermark import load_codec
    from ..watermark.keys import parse_key
    from ..watermark.recipe import RecipeJob, default_diffusion, run_recipe
    from ..watermark.stats import check_reachable

    # every bad input fails before anything is written
    if key is not None:
        parse_key(key, n_bits)
    check_reachable(n_bits, fpr)
    stds = parse_floats(weight_noise, "--weight-noise", lo_open=False, empty=True)
    load(data, resolution=resolution, split="test", seed=seed)
    if codec_dir is not None:
        c = load_codec(codec_dir)
        if (c.n_bits, c.resolution) != (n_bits, resolution):
            raise InputError(f"--codec: expected a codec of {n_bits} bits at {resolution}×{resolution} (--n-bits, "
                             f"--resolution), got {c.n_bits} bits at {c.resolution}×{c.resolution}")
    if clean_model is not None:
        spec = load_model(clean_model)[1]
        if spec.resolution != resolution or (spec.num_classes is None) != unconditional:
            raise InputError(f"--clean-model: expected a {'un' if unconditional else ''}conditional model at "
                             f"{resolution}×{resolution}, got {'an un' if spec.num_classes is None else 'a '}conditional "
                             f"one at {spec.resolution}×{spec.resolution}")
    codec = _codec_job(data, resolution, n_bits, width, dec_width, enc_depth, dec_depth, gamma, l2_await, l2_ramp,
                       distortions, codec_steps, codec_batch, codec_lr, seed, fair_bits=fair_bits)
    diff = replace(default_diffusion(), size=size, conditional=not unconditional,
                   train=TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(100, steps // 10),
                                     ema_halflife_kimg=20.0, checkpoint_every=500, log_every=50, seed=seed))
    job = RecipeJob(data=data, resolution=resolution, n_bits=n_bits, key=key, key_seed=key_seed, codec=codec,
                    diffusion=diff, n_generate=n_generate, sample_steps=sample_steps, fpr=fpr, fd=not no_fd,
                    feature_steps=feature_steps, strength=strength, seed=seed)
    if not run.start(job.resolved()):
        return
    m = run_recipe(job, out, codec_dir=codec_dir, clean_model=clean_model, progress=click.echo, device=run.device,
                   precision=run.precision)
    h = m["headline"]
    click.echo(f"watermarked model: Bit-Acc {h['bit_acc_watermarked_model']:.4f}, detected "
               f"{h['detected_watermarked_model']['value']:.3f}; clean model: Bit-Acc {h['bit_acc_clean_model']:.4f}, "
               f"detected {h['detected_clean_model']['value']:.3f} (FPR {fpr:g}, threshold {h['threshold']} {h['threshold_mode']})")
    if h["fd_watermarked"] is not None:
        click.echo(f"FD: watermarked {h['fd_watermarked']:.3f} vs clean {h['fd_clean']:.3f}")
    if stds:
        _weight_noise(out, m, job, stds, weight_noise_n, codec_dir, run.device, run.precision)


def _weight_noise(out: Path, m: dict, job, stds: list[float], n: int, codec_dir, device, precision: str) -> None:
    """The weight-noise table of the recipe run in OUT (on ``device``): rows into OUT/metrics.json,
    the plot into OUT/weight_noise.png, at the owner's threshold of the recipe run."""
    from ..persist import atomic_write_json
    from ..watermark import load_codec
    from ..watermark.recipe import read_key
    from ..watermark.stats import Threshold
    from ..watermark.sweeps import weight_noise_sweep

    codec = load_codec(codec_dir if codec_dir is not None else out / "codec").to(device)
    rows = weight_noise_sweep(out, m["models"]["watermarked"], codec, read_key(out / "key.txt"), stds, job=job.resolved(),
                              threshold=Threshold(**m["threshold"]), n=n, progress=click.echo, device=device,
                              precision=precision)
    atomic_write_json(out / "metrics.json", {**m, "weight_noise": rows})


@watermark.command("attack")
@click.option("--codec", "codec_dir", default=None, type=click.Path(path_type=Path), help="The owner's codec folder or train-codec run (required).")
@click.option("--key", default=None, help="The key: bits or 0x-hex.")
@click.option("--key-file", default=None, type=click.Path(path_type=Path))
@click.option("--key-seed", default=None, type=SEED, help="A key derived from this seed (as embed --key-seed).")
@click.option("--images", default=None, help="Watermarked images to attack: a data spec/path, a .npz or a `trustdiff generate` folder.")
@click.option("--embed", "embed_data", default=None, help="Clean images of this data (test split) watermarked here with the key, then attacked.")
@click.option("--embed-images", type=COUNT, default=500, show_default=True, help="At most this many --embed images.")
@click.option("--model", "model_dir", default=None, type=click.Path(path_type=Path),
              help="The watermarked diffusion model: its samples are attacked too, and the model itself (pruning, int8, fine-tuning).")
@click.option("--clean", "clean_specs", multiple=True, default=("digits",), show_default=True,
              help="Clean images (never watermarked): the FPR under every attack, and the thresholds; repeatable.")
@click.option("--clean-images", type=COUNT, default=2000, show_default=True, help="Each --clean set filled up to this many with shifted copies.")
@click.option("--search", default="flips", show_default=True, help="Inverse transforms the detector reads each image under: "
              "none, flips, shifts, shifts2, flips+shifts; the p-value is corrected for their number.")
@click.option("--attacks", "attack_list", default="all", show_default=True, help="Image-level attacks, comma-separated (see the docs), or all.")
@click.option("--fpr", "fprs", default="1e-6,1e-3", show_default=True, help="False-positive rates the TPR is reported at.")
@click.option("--regen-model", default=None, type=click.Path(path_type=Path), help="A diffusion model that never saw watermarked data, for regeneration.")
@click.option("--t-star", "t_stars", default="0.02,0.05,0.1,0.2,0.3,0.5", show_default=True, help="Regeneration depths t* (VP time, DiffPure's).")
@click.option("--regen-steps", type=COUNT, default=10, show_default=True, help="Reverse steps of each regeneration.")
@click.option("--prune", "prune_fracs", default="0.2,0.5,0.8", show_default=True, help="Magnitude-pruning fractions of the model's weights ('' for none).")
@click.option("--no-int8", is_flag=True, help="Skip the int8 weight quantisation.")
@click.option("--weight-noise", default="", help="Stds of Gaussian noise on the model's weights.")
@click.option("--finetune-steps", default="", help="Fine-tune the model on clean data for these step counts (increasing; one continuing run).")
@click.option("--finetune-data", default="digits", show_default=True, help="The clean data of the fine-tuning attack.")
@click.option("-n", "--num", "n_generate", type=COUNT, default=200, show_default=True, help="Images generated per model (attacked or not).")
@click.option("--sample-steps", type=COUNT, default=10, show_default=True, help="Heun steps of generation.")
@click.option("--fd-data", default="digits", show_default=True, help="FD of generated images against this data's test split.")
@click.option("--no-fd", is_flag=True, help="Skip FD.")
@click.option("--feature-steps", type=COUNT, default=300, show_default=True, help="Training steps of the FD feature net (cached).")
@seed_option()
@unsafe_pickle_option
@run_command("watermark attack", out="runs/attack", resumable=True)
def attack_cmd(run, codec_dir, key, key_file, key_seed, images, embed_data, embed_images, model_dir, clean_specs, clean_images,
               search, attack_list, fprs, regen_model, t_stars, regen_steps, prune_fracs, no_int8, weight_noise, finetune_steps,
               finetune_data, n_generate, sample_steps, fd_data, no_fd, feature_steps, seed, allow_pickle, out):
    """Removal attacks against a watermark, through the owner's detector: image-level (moves,
    flips, crops, JPEG …), regeneration with a clean diffusion model, and model-level (pruning,
    int8, fine-tuning); Bit-Acc, TPR, clean FPR and each attack's cost → OUT/metrics.json."""
    import torch

    from ..data import load
    from ..diffusion.model import load_model
    from ..errors import InputError
    from ..watermark.attack_report import AttackJob, run_attack_report
    from ..watermark.attacks import TARGET_ATTACKS
    from ..watermark.codec import load_codec
    from ..watermark.embed import watermark as wm_images
    from ..watermark.null import shifted_copies
    from ..watermark.stats import check_reachable

    # every bad input fails before anything is written
    if codec_dir is None:
        raise InputError("--codec: expected the owner's codec folder (none was given)")
    codec = load_codec(codec_dir, allow_pickle=allow_pickle)
    k, source = _resolve_key(key, key_file, key_seed, codec.n_bits)
    rates = parse_floats(fprs, "--fpr", hi=0.5)
    for f in rates:
        check_reachable(codec.n_bits, f)
    names = [a.strip() for a in attack_list.split(",") if a.strip()]
    try:
        job = AttackJob(search=search, fprs=tuple(rates), attacks=None if names == ["all"] else tuple(names), seed=seed,
                        t_stars=tuple(parse_floats(t_stars, "--t-star", hi=1.0)), regen_steps=regen_steps,
                        prune=tuple(parse_floats(prune_fracs, "--prune", lo_open=False, hi=0.99, empty=True)),
                        int8=not no_int8, weight_noise=tuple(parse_floats(weight_noise, "--weight-noise", lo_open=False, empty=True)),
                        finetune_steps=tuple(int(v) for v in parse_floats(finetune_steps, "--finetune-steps", empty=True)),
                        finetune_data=finetune_data, n_generate=n_generate, sample_steps=sample_steps,
                        fd_data=None if no_fd else fd_data, feature_steps=feature_steps)
    except InputError as e:
        raise InputError(f"--search/--attacks: {e}") from None
    if images is None and embed_data is None and model_dir is None:
        raise InputError("watermarked images: expected --images, --embed or --model (none was given)")
    wm = {}
    if images is not None:
        wm["images"] = load_images(images, codec.resolution, codec.channels, "all", seed)
    if embed_data is not None:
        x = load(embed_data, resolution=codec.resolution, split="test", seed=seed).tensors()[0][:embed_images]
        if x.shape[1] != codec.channels:
            raise InputError(f"--embed {embed_data}: {x.shape[1]}-channel images, the codec takes {codec.channels}")
        wm["heldout"] = x
    for m in (model_dir, regen_model):
        if m is not None:
            spec = load_model(m, allow_pickle=allow_pickle)[1]
            if (spec.channels, spec.resolution) != (codec.channels, codec.resolution):
                raise InputError(f"{m}: a model of {spec.channels}×{spec.resolution}×{spec.resolution} images, the codec "
                                 f"takes {codec.channels}×{codec.resolution}×{codec.resolution}")
    if job.finetune_steps and model_dir is None:
        raise InputError("--finetune-steps: expected --model (the watermarked model to fine-tune)")
    parts = [shifted_copies(load_images(c, codec.resolution, codec.channels, "all", seed, flag="--clean"), clean_images,
                            generator=torch.Generator().manual_seed(seed + 17)) for c in clean_specs]
    clean = torch.cat(parts)
    if not run.start({**job.__dict__, "codec": str(codec_dir), "key_source": source, "images": images, "embed": embed_data,
                      "embed_images": embed_images, "model": str(model_dir) if model_dir else None,
                      "regen_model": str(regen_model) if regen_model else None, "clean": list(clean_specs),
                      "clean_images": clean_images}):
        return
    codec = codec.to(run.device)
    if "heldout" in wm:
        wm["heldout"] = wm_images(codec, wm["heldout"].to(run.device), k, precision=run.precision)["images"]
    m = run_attack_report(job, out, codec=codec, key=k, watermarked=wm, clean=clean, model_dir=model_dir,
                          regen_model=regen_model, allow_pickle=allow_pickle, progress=click.echo, device=run.device,
                          precision=run.precision)
    lo = min(rates)
    for name, t in m["targets"].items():
        click.echo(f"{name}: TPR at FPR {lo:g} (search {search}, threshold {m['thresholds'][f'{lo:g}']}/{codec.n_bits}) under "
                   + ", ".join(f"{a} {t[a]['value']:.3f}" for a in TARGET_ATTACKS if a in t))
        c = m["cheapest_removal"][name]
        click.echo("   cheapest removal found: " + ("none" if c is None else c["note"] if c["attack"] is None else
                                                  f"{c['attack']} (TPR {c['tpr']:.3f}, PSNR {c['psnr']:.1f} dB)"))
    w = m["clean_fpr_worst"].get(f"{lo:g}")
    if w:
        click.echo(f"clean images: at most {w['k']}/{w['n']} detected under any attack at FPR {lo:g} (worst: {w['attack']})")


def _register_t2i():
    """``trustdiff watermark t2i …``: the text-to-image trigger watermark (cli/t2i.py)."""
    from .t2i import watermark_t2i

    watermark.add_command(watermark_t2i)


_register_t2i()
COMMANDS = [watermark]

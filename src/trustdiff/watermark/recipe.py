"""The recipe end to end (Zhao et al. 2023, unconditional / class-conditional half):

    codec → the training set watermarked with the owner's key → a diffusion model trained on it
    (the one training loop) → generation → detection,

with a diffusion model trained the same way on the clean set as the null. Every stage writes into
one run folder and is skipped when its output is already there, so an interrupted run continues::

    OUT/codec/                      train-codec run (codec in OUT/codec/codec), unless one is given
    OUT/key.txt                     the owner's key (bits, and hex when n is a multiple of 4)
    OUT/watermarked.npz             the watermarked training set (+ PSNR/SSIM per image)
    OUT/examples.png                originals, watermarked, difference ×10 (ten training images)
    OUT/diffusion-watermarked/      diffusion training run, model in model/
    OUT/diffusion-clean/            the same on clean data (the null), unless one is given
    OUT/generated-{watermarked,clean}.npz, grid-*.png
    OUT/metrics.json                codec, embedding, detection of both models, FD of both
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoint import latest_checkpoint
from ..data import load as load_data
from ..errors import InputError
from ..images import make_grid, save_png
from ..persist import atomic_write_bytes, atomic_write_json
from ..train import TrainConfig
from ..train.diffusion import DiffusionJob, train_diffusion
from .codec import CODEC_DIR, check_strength, load_codec
from .detect import detect
from .codec import decode_bits
from .embed import examples_grid, summary, watermark, write_npz, write_watermarked
from .keys import key_from_seed, key_to_bits, key_to_hex, parse_key
from .null import shifted_copies, synthetic_strokes
from .stats import decide_threshold, matches
from .training import CodecJob, train_codec

log = logging.getLogger("trustdiff.watermark")


def default_diffusion() -> DiffusionJob:
    return DiffusionJob(resolution=32, size="small", conditional=True,
                        train=TrainConfig(steps=2000, batch_size=64, lr=2e-3, warmup_steps=100,
                                          ema_halflife_kimg=20.0, checkpoint_every=500, log_every=50))


@dataclass(frozen=True)
class RecipeJob:
    """Everything the recipe does; ``codec`` and ``diffusion`` take their data and resolution
    from here."""
    data: str = "digits"
    resolution: int = 32
    n_bits: int = 64
    key: str | None = None          # bit string or 0x-hex; None: derived from key_seed
    key_seed: int = 0
    codec: CodecJob = field(default_factory=CodecJob)
    diffusion: DiffusionJob = field(default_factory=default_diffusion)
    n_generate: int = 500
    sampler: str = "heun"
    sample_steps: int = 18          # Heun: NFE 35
    fpr: float = 1e-6
    calib_images: int = 2000        # clean images of the data (shifted copies fill up) to check the threshold on
    other_images: int = 2000        # synthetic strokes: clean images of another distribution
    fd: bool = True
    feature_steps: int = 300        # FD feature net training steps (cached)
    strength: float = 1.0           # residual scale α of the embedding (trustdiff.watermark.codec.encode)
    seed: int = 0

    def resolved(self) -> "RecipeJob":
        """The job with the codec and diffusion jobs pointed at its data and resolution."""
        codec = replace(self.codec, data=self.data, resolution=self.resolution, n_bits=self.n_bits)
        diffusion = replace(self.diffusion, resolution=self.resolution)
        return replace(self, codec=codec, diffusion=diffusion)


def owner_key(job: RecipeJob) -> torch.Tensor:
    """The key: parsed from ``job.key`` or derived from ``job.key_seed``."""
    return parse_key(job.key, job.n_bits) if job.key is not None else key_from_seed(job.key_seed, job.n_bits)


def write_key(path, key: torch.Tensor, **facts) -> None:
    text = {"bits": key_to_bits(key), "hex": key_to_hex(key), "n_bits": int(key.numel()), **facts}
    atomic_write_bytes(path, (json.dumps(text, indent=2) + "\n").encode())


def read_key(path) -> torch.Tensor:
    """A key from a file: the JSON written by the recipe / embed (``{"bits": ...}``) or plain text
    (a bit string or 0x-hex)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"key file {path}: no such file")
    text = path.read_text().strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("bits"), str):
        return parse_key(obj["bits"])
    return parse_key(text)


def ensure_codec(job: RecipeJob, out: Path, codec_dir=None, *, allow_pickle: bool = False, device=None,
                 precision: str = "fp32"):
    """Train the codec (or reuse ``codec_dir`` / a finished one in OUT/codec); returns it, on
    ``device`` (default: the CPU)."""
    if codec_dir is not None:
        codec = load_codec(codec_dir, allow_pickle=allow_pickle)
    else:
        run = out / "codec"
        if not (run / CODEC_DIR / "config.json").is_file():
            train_codec(job.codec, run, resume=latest_checkpoint(run) is not None, device=device, precision=precision)
        codec = load_codec(run)
    codec = codec.to(device if device is not None else "cpu")
    if codec.n_bits != job.n_bits or codec.resolution != job.resolution:
        raise InputError(f"codec: has {codec.n_bits} bits at {codec.resolution}×{codec.resolution}, "
                         f"the recipe asks for {job.n_bits} at {job.resolution}×{job.resolution}")
    return codec


def ensure_diffusion(job: DiffusionJob, run: Path, *, device=None, precision: str = "fp32") -> Path:
    """Train a diffusion model in ``run`` (on ``device`` at ``precision``) unless its model is
    there; returns the model folder."""
    if (run / "model" / "trustdiff.json").is_file():
        return run / "model"
    return train_diffusion(job, run, resume=latest_checkpoint(run) is not None, device=device, precision=precision)


def ensure_generated(path: Path, model_dir, job: RecipeJob, *, allow_pickle: bool = False, device=None,
                     precision: str = "fp32") -> torch.Tensor:
    """Generated images cached as .npz (uint8, as any saved image), sampled on ``device``
    (default: the CPU) at ``precision``; returned on the CPU, exactly as on disk."""
    from ..data import load_npz

    if path.is_file():
        return load_npz(path).tensors()[0]
    from ..diffusion.model import generate, load_model

    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    x, labels = generate(den.to(device if device is not None else "cpu"), spec, job.n_generate, seed=job.seed,
                         sampler=job.sampler, steps=job.sample_steps, batch=250, precision=precision)
    write_npz(path, x, labels, seeds=torch.arange(job.seed, job.seed + len(x)).numpy())
    save_png(path.with_suffix(".png"), make_grid(x[:100], nrow=10))
    from ..data import load_npz as _l
    return _l(path).tensors()[0]        # the uint8-rounded images, exactly what is on disk


def clean_reference(data: str, resolution: int, *, total: int, seed: int) -> torch.Tensor:
    """Clean images of the training distribution: the whole data set (split "all") at
    ``resolution``, then shifted copies (:func:`shifted_copies`) up to ``total``."""
    x = load_data(data, resolution=resolution, split="all", seed=seed).tensors()[0]
    return shifted_copies(x, total, generator=torch.Generator().manual_seed(seed + 17))


def clean_sets(job: RecipeJob, channels: int) -> dict:
    """The clean calibration sets of the recipe: the data (+ shifts) and synthetic strokes."""
    sets = {"data": clean_reference(job.data, job.resolution, total=job.calib_images, seed=job.seed)}
    if job.other_images > 0:
        sets["synthetic_strokes"] = synthetic_strokes(job.other_images, job.resolution, channels,
                                                      generator=torch.Generator().manual_seed(job.seed + 23))
    return sets


def owner_threshold(codec, key, sets: dict, fpr: float, *, level: float = 0.99, precision: str = "fp32"):
    """Decide the detection threshold for ``key`` on the union of the clean sets (decoded at
    ``precision``); also the per-set null checks (so a failure can be traced to a distribution)."""
    bits = {name: decode_bits(codec, x, precision=precision).cpu() for name, x in sets.items()}
    union = torch.cat(list(bits.values()))
    thr, checks = decide_threshold(codec.n_bits, fpr, matches(union, key), level=level)
    per_set = {}
    for name, b in bits.items():
        t, c = decide_threshold(codec.n_bits, fpr, matches(b, key), level=level)
        per_set[name] = {"images": int(len(b)), "mode": t.mode, "value": t.value, "reason": t.reason,
                         "checks": [x.to_json() for x in c]}
    return thr, checks, per_set


def fd_of(job: RecipeJob, fake: torch.Tensor, cache_dir: Path, *, device=None, precision: str = "fp32") -> dict:
    from ..train.feature_net import fd_report

    train = load_data(job.data, resolution=job.resolution, split="train", seed=job.seed)
    test = load_data(job.data, resolution=job.resolution, split="test", seed=job.seed)
    return fd_report(train, test, fake, cache_dir=cache_dir, feature_steps=job.feature_steps, seed=job.seed,
                     device=device, precision=precision)


def run_recipe(job: RecipeJob, out, *, codec_dir=None, clean_model=None, progress=print,
               allow_pickle: bool = False, device=None, precision: str = "fp32") -> dict:
    """Run (or continue) the recipe in ``out``; returns and writes OUT/metrics.json.

    Args:
        codec_dir: use this trained codec instead of training one.
        clean_model: use this clean diffusion model (a model or run folder) as the null instead of
            training one (e.g. shared by the runs of a sweep).
        allow_pickle: load pickled weights in ``codec_dir`` / ``clean_model`` (they can run code).
        device: where every stage runs — codec and diffusion training, embedding, generation,
            detection, FD (default: the CPU); ``precision``: of training, sampling, embedding
            and decoding (calibration and detection decode alike). metrics.json records both.
    """
    check_strength(job.strength)
    device = torch.device(device) if device is not None else torch.device("cpu")
    job = job.resolved()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, times = time.time(), {}

    def stage(name):
        times[name] = round(time.time() - t0 - sum(times.values()), 1)

    progress(f"[codec] {job.n_bits} bits at {job.resolution}×{job.resolution}")
    codec = ensure_codec(job, out, codec_dir, allow_pickle=allow_pickle, device=device, precision=precision)
    key = owner_key(job)
    write_key(out / "key.txt", key, source="given" if job.key is not None else f"seed {job.key_seed}")
    stage("codec")

    progress("[embed] watermarking the training set")
    train = load_data(job.data, resolution=job.resolution, split="train", seed=job.seed)
    x_train, y_train = train.tensors()
    wm = watermark(codec, x_train.to(device), key, precision=precision, strength=job.strength)
    write_watermarked(out / "watermarked.npz", wm, y_train)
    save_png(out / "examples.png", examples_grid(x_train, wm["images"]))
    embed_fig = summary(wm)
    x_test = load_data(job.data, resolution=job.resolution, split="test", seed=job.seed).tensors()[0].to(device)
    wm_test = watermark(codec, x_test, key, precision=precision, strength=job.strength)
    stage("embed")

    progress("[diffusion] training on the watermarked set")
    diff_wm = replace(job.diffusion, data=str(out / "watermarked.npz"))
    model_wm = ensure_diffusion(diff_wm, out / "diffusion-watermarked", device=device, precision=precision)
    if clean_model is None:
        progress("[diffusion] training on the clean set (the null)")
        model_clean = ensure_diffusion(replace(job.diffusion, data=job.data), out / "diffusion-clean", device=device,
                                       precision=precision)
    else:
        model_clean = Path(clean_model)
    stage("diffusion")

    progress(f"[generate] {job.n_generate} images from each model")
    gen_wm = ensure_generated(out / "generated-watermarked.npz", model_wm, job, device=device,
                              precision=precision).to(device)
    gen_clean = ensure_generated(out / "generated-clean.npz", model_clean, job, allow_pickle=allow_pickle, device=device,
                                 precision=precision).to(device)
    stage("generate")

    progress("[detect] calibration on clean images, then detection")
    sets = {k: v.to(device) for k, v in clean_sets(job, x_train.shape[1]).items()}
    thr, checks, per_set = owner_threshold(codec, key, sets, job.fpr, precision=precision)
    results = {}
    for name, x in (("generated_watermarked", gen_wm), ("generated_clean", gen_clean),
                    ("heldout_watermarked", wm_test["images"]), ("heldout_clean", x_test)):
        results[name] = detect(codec, x, key, fpr=job.fpr, threshold=thr, precision=precision).summary()
    stage("detect")

    fd = {}
    if job.fd:
        progress("[fd] FD of both models against the test split")
        fd["watermarked"] = fd_of(job, gen_wm, out / "cache", device=device, precision=precision)
        fd["clean"] = fd_of(job, gen_clean, out / "cache", device=device, precision=precision)
        fd["cost"] = fd["watermarked"]["fd"] - fd["clean"]["fd"]
        fd["ratio"] = fd["watermarked"]["fd"] / max(fd["clean"]["fd"], 1e-12)
        stage("fd")

    gw, gc = results["generated_watermarked"], results["generated_clean"]
    metrics = {
        "key": {"bits": key_to_bits(key), "hex": key_to_hex(key), "source": "given" if job.key is not None else f"seed {job.key_seed}"},
        "codec": load_codec_meta(codec_dir, out),
        "embed": embed_fig, "embed_heldout": summary(wm_test), "strength": job.strength,
        "threshold": thr.to_json(), "null_checks": [c.to_json() for c in checks], "null_checks_by_set": per_set,
        "detection": results, "fd": fd, "seconds": times,
        "headline": {
            "bit_acc_watermarked_model": gw["bit_acc_mean"], "bit_acc_clean_model": gc["bit_acc_mean"],
            "detected_watermarked_model": gw["detected"], "detected_clean_model": gc["detected"],
            "fpr": job.fpr, "threshold": thr.value, "threshold_mode": thr.mode,
            "fd_watermarked": fd.get("watermarked", {}).get("fd"), "fd_clean": fd.get("clean", {}).get("fd"),
        },
        "models": {"watermarked": str(model_wm), "clean": str(model_clean)},
        "device": str(device), "precision": precision,
    }
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def load_codec_meta(codec_dir, out: Path) -> dict:
    from .codec import codec_config

    try:
        return codec_config(codec_dir if codec_dir is not None else out / "codec")
    except Exception:  # noqa: BLE001 — informational only
        return {}


def recipe_json(job: RecipeJob) -> dict:
    return asdict(job.resolved())

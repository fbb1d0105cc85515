"""The recipe's tables: bit length → FD and Bit-Acc; Gaussian noise on the diffusion model's
weights → FD and Bit-Acc; an image-distortion grid → Bit-Acc, TPR at a fixed FPR and PSNR.

Each sweep returns its rows and writes ``<name>.json`` (rows + what was used) and ``<name>.png``
(Bit-Acc and FD against the swept value) into the folder it is given.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..persist import atomic_write_json
from .detect import detect
from .distortions import GRID
from .embed import quantize
from .recipe import RecipeJob, fd_of, run_recipe
from .stats import Threshold


def plot_sweep(rows: list[dict], x: str, path, *, xlabel: str, title: str, logx: bool = False,
               acc_key: str = "bit_acc", fd_key: str | None = "fd") -> Path:
    """Bit-Acc (left axis) and FD (right axis) against ``x``; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[x] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(xs, [r[acc_key] for r in rows], "o-", color="tab:blue", label="Bit-Acc")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Bit-Acc of generated images", color="tab:blue")
    ax.set_ylim(0.4, 1.02)
    ax.axhline(0.5, color="tab:blue", lw=0.6, ls=":")
    if logx:
        ax.set_xscale("symlog", linthresh=min([v for v in xs if v > 0] or [1e-3]))
    if fd_key and any(r.get(fd_key) is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(xs, [r.get(fd_key) for r in rows], "s--", color="tab:red", label="FD")
        ax2.set_ylabel("FD-digits (lower is better)", color="tab:red")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bit_length_sweep(out, base: RecipeJob, bit_lengths=(4, 16, 32, 64, 128), *, progress=print) -> list[dict]:
    """The recipe at each bit length (smaller/shorter jobs than a headline run are fine: the JSON
    records the jobs). One clean model is trained once and shared as the FD reference and null."""
    out = Path(out)
    rows, clean_model = [], None
    for n in bit_lengths:
        progress(f"== bit length {n}")
        job = replace(base, n_bits=n)
        m = run_recipe(job, out / f"bits-{n}", clean_model=clean_model, progress=progress)
        clean_model = m["models"]["clean"]
        gw, gc = m["detection"]["generated_watermarked"], m["detection"]["generated_clean"]
        rows.append({
            "n_bits": n, "bit_acc": gw["bit_acc_mean"], "bit_acc_clean_model": gc["bit_acc_mean"],
            "detected": gw["detected"], "detected_clean_model": gc["detected"], "fpr": job.fpr,
            "threshold": m["threshold"]["value"], "threshold_mode": m["threshold"]["mode"],
            "codec_heldout_bit_acc": m["codec"].get("heldout", {}).get("bit_acc"),
            "embed_psnr": m["embed"]["psnr_mean"], "embed_ssim": m["embed"]["ssim_mean"],
            "fd": m["fd"].get("watermarked", {}).get("fd"), "fd_clean": m["fd"].get("clean", {}).get("fd"),
            "fd_floor": m["fd"].get("clean", {}).get("fd_floor"),
        })
        atomic_write_json(out / "bit_length.json", {"rows": rows, "job": _job_json(base)})
    plot_sweep(rows, "n_bits", out / "bit_length.png", xlabel="bit length n",
               title="Bit length: Bit-Acc of generated images and FD of the watermarked model")
    return rows


def perturb_weights(denoiser, std: float, *, seed: int):
    """A deep copy of ``denoiser`` with N(0, std²) added to every parameter (seeded). The noise is
    drawn on a CPU generator and moved to each parameter's device, so a seed perturbs a model the
    same way on every device."""
    den = copy.deepcopy(denoiser)
    if std > 0:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in den.parameters():
                p.add_(std * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
    return den


def weight_noise_sweep(out, model_dir, codec, key, stds, *, job: RecipeJob, threshold: Threshold, n: int,
                       progress=print, allow_pickle: bool = False, device=None, precision: str = "fp32") -> list[dict]:
    """Gaussian noise of each std added to the watermarked model's weights → Bit-Acc, detection at
    ``threshold`` and FD of ``n`` images per std (the same sampling seeds for every std), all on
    ``device`` (default: the CPU); sampling at ``precision``."""
    from ..diffusion.model import generate, load_model

    out = Path(out)
    device = torch.device(device) if device is not None else torch.device("cpu")
    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    den = den.to(device)
    rows = []
    for i, std in enumerate(stds):
        t = time.time()
        noisy = perturb_weights(den, float(std), seed=job.seed + 1000 + i)
        x, _ = generate(noisy, spec, n, seed=job.seed, sampler=job.sampler, steps=job.sample_steps, batch=250,
                        precision=precision)
        x = quantize(x).to(device)
        d = detect(codec, x, key, threshold=threshold, precision=precision).summary()
        fd = fd_of(job, x, out / "cache", device=device)["fd"] if job.fd and n >= 2 else None
        rows.append({"std": float(std), "bit_acc": d["bit_acc_mean"], "detected": d["detected"], "fd": fd,
                     "seconds": round(time.time() - t, 1)})
        progress(f"   weight noise std {std:g}: Bit-Acc {d['bit_acc_mean']:.4f}, detected {d['detected']['value']:.3f}"
                 + (f", FD {fd:.3f}" if fd is not None else ""))
        atomic_write_json(out / "weight_noise.json", {"rows": rows, "model": str(model_dir), "images_per_std": n,
                                                      "threshold": threshold.to_json(), "sampler": job.sampler,
                                                      "sample_steps": job.sample_steps, "seed": job.seed})
    plot_sweep(rows, "std", out / "weight_noise.png", xlabel="std of Gaussian noise on the weights",
               title="Weight noise: Bit-Acc of generated images and FD", logx=True)
    return rows


def distortion_grid(out, codec, key, image_sets: dict, clean: torch.Tensor, *, fpr: float = 1e-3,
                    threshold: Threshold | None = None, seed: int = 0, grid=GRID, progress=print) -> list[dict]:
    """Each distortion of ``grid`` applied (seeded) to each set of watermarked images and to the
    clean images → per set: Bit-Acc, TPR at ``fpr`` (the threshold: ``threshold`` if given, else
    the analytic one), PSNR of the distorted image against its undistorted input (the clean set's
    "detected" is the false-positive rate). The table is :func:`~.attacks.attack_table`'s, with
    the grid's distortions as one-step attacks and the clean images as one more set."""
    from .attacks import attack_table
    from .stats import decide_threshold

    out = Path(out)
    if threshold is None:
        threshold, _ = decide_threshold(codec.n_bits, fpr)
    sets = {**image_sets, "clean": clean}
    table = attack_table(lambda x, thr: detect(codec, x, key, threshold=thr), sets, None, {fpr: threshold},
                         attacks=[(label, name, 0.0, ((name, params),)) for label, name, params in grid], seed=seed,
                         progress=progress)
    rows = [{"distortion": r["attack"], "name": name, "params": params,
             **{k: {"bit_acc": r[k]["bit_acc"], "detected": r[k][f"tpr@{fpr:g}"], "psnr": r[k]["psnr"]} for k in sets}}
            for r, (_, name, params) in zip(table, grid)]
    atomic_write_json(out / "distortions.json", {"rows": rows, "fpr": fpr, "threshold": threshold.to_json(),
                                                 "seed": seed, "sets": {k: int(len(v)) for k, v in image_sets.items()},
                                                 "clean_images": int(len(clean))})
    return rows


def _job_json(job: RecipeJob) -> dict:
    from .recipe import recipe_json
    return recipe_json(job)

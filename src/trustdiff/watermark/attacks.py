"""Removal attacks on a watermark, and the attack table (in the style of WAVES, An et al. 2024).

Three kinds, all seeded:

* **image-level** (:data:`IMAGE_ATTACKS`): what anyone can do to a file — move it by a few
  pixels, mirror it, crop and resize, rotate, rescale, real JPEG (PIL), blur, noise, brightness,
  contrast, gamma, and combinations. Each is a chain of :mod:`.distortions`.
* **regeneration** (:func:`regenerate`): diffuse the image to t* and denoise it back with a
  diffusion model that never saw watermarked data — trustdiff's own purifier
  (:func:`trustdiff.purify.diffpure.purify`). Zhao et al. 2023 (*Invisible image watermarks are
  provably removable using generative AI*) show that a large enough t* removes any invisible
  pixel watermark; the table finds the t* at which this one goes, and its cost in fidelity.
* **model-level** (:mod:`.model_attacks`): change the watermarked diffusion model itself.

:func:`attack_table` applies attacks to sets of watermarked images and to clean images, and reports
per attack: Bit-Acc, TPR at each false-positive rate (through the detector's declared search), the
clean-image FPR under the same attack, and the attack's cost to the image: PSNR and SSIM against
its input (and FD for generated sets, when given a function for it).
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ..metrics import psnr, ssim
from .distortions import apply

#: (label, family, strength, chain of (distortion, params)); strengths are in the family's units
IMAGE_ATTACKS: tuple[tuple[str, str, float, tuple], ...] = (
    ("none", "none", 0.0, ()),
    *((f"move-{d}", "translate", float(d), (("translate", {"dx": d, "dy": 0}),)) for d in (1, 2, 3, 4)),
    ("move-diag-1", "translate", 1.0, (("translate", {"dx": 1, "dy": -1}),)),
    ("hflip", "flip", 1.0, (("hflip", {}),)),
    ("vflip", "flip", 1.0, (("vflip", {}),)),
    *((f"crop-{s}", "crop", s, (("crop", {"scale": s}),)) for s in (0.95, 0.9, 0.8, 0.75)),
    *((f"rotate-{a}", "rotate", float(a), (("rotate", {"degrees": float(a)}),)) for a in (2, 5, 10)),
    *((f"rescale-{s}", "rescale", s, (("resize", {"scale": s}),)) for s in (0.75, 0.5)),
    *((f"jpeg-{q}", "jpeg", float(q), (("jpeg", {"quality": q}),)) for q in (90, 70, 50, 30)),
    *((f"blur-{s}", "blur", s, (("gaussian_blur", {"sigma": s}),)) for s in (0.5, 1.0, 1.5)),
    *((f"noise-{s}", "noise", s, (("gaussian_noise", {"std": s}),)) for s in (0.02, 0.05, 0.1)),
    *((f"brightness-{f}", "brightness", f, (("brightness", {"factor": f}),)) for f in (0.7, 1.3)),
    *((f"contrast-{f}", "contrast", f, (("contrast", {"factor": f}),)) for f in (0.7, 1.5)),
    *((f"gamma-{g}", "gamma", g, (("gamma", {"gamma": g}),)) for g in (0.7, 1.5)),
    ("move-1+jpeg-50", "combo", 1.0, (("translate", {"dx": 1, "dy": 0}), ("jpeg", {"quality": 50}))),
    ("hflip+crop-0.9", "combo", 1.0, (("hflip", {}), ("crop", {"scale": 0.9}))),
    ("hflip+move-1+jpeg-70", "combo", 1.0, (("hflip", {}), ("translate", {"dx": 1, "dy": 1}), ("jpeg", {"quality": 70}))),
    ("crop-0.9+jpeg-50", "combo", 1.0, (("crop", {"scale": 0.9}), ("jpeg", {"quality": 50}))),
)

#: the attacks the issue's targets name, at the strengths it names
TARGET_ATTACKS = ("move-1", "hflip", "crop-0.9", "jpeg-50")


def attack_names() -> list[str]:
    return [a[0] for a in IMAGE_ATTACKS]


def select_attacks(names=None) -> list[tuple[str, str, float, tuple]]:
    """The attacks called ``names`` (all of :data:`IMAGE_ATTACKS` for None / "all"), in table order.
    An entry that is already a (label, family, strength, chain) tuple is taken as it is."""
    if names is None or names == "all" or list(names) == ["all"]:
        return list(IMAGE_ATTACKS)
    if all(isinstance(n, tuple) and len(n) == 4 for n in names):
        return list(names)
    known = {a[0]: a for a in IMAGE_ATTACKS}
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"attack: expected names among {', '.join(known)}, got {bad[0]!r}")
    return [known[n] for n in names]


def apply_chain(x: torch.Tensor, chain, generator=None) -> torch.Tensor:
    """Apply each (distortion, params) of ``chain`` in turn, all drawing from ``generator``."""
    for name, params in chain:
        x = apply(name, x, generator=generator, **params)
    return x


def image_attack(x: torch.Tensor, label: str, *, seed: int = 0) -> torch.Tensor:
    """The attack called ``label`` applied to images x (a generator on x's device seeded with ``seed``)."""
    (_, _, _, chain), = select_attacks([label])
    return apply_chain(x, chain, torch.Generator(x.device).manual_seed(seed))


def regenerate(x: torch.Tensor, denoiser, t_star: float, *, steps: int = 10, solver: str = "ddpm",
               cond=None, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Regeneration (Zhao et al. 2023): x diffused to t* and solved back with ``denoiser`` (the
    purifier; ``solver``/``steps`` as :func:`~trustdiff.purify.diffpure.purify`), in batches,
    image i's noise from seed + i, without gradients. ``cond``: labels for a class-conditional
    denoiser (None: unconditional / its null class)."""
    from ..purify.diffpure import purify

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            gens = [torch.Generator(x.device).manual_seed(seed + i + j) for j in range(len(xb))]
            cb = None if cond is None else cond[i:i + batch_size]
            out.append(purify(xb, denoiser, t_star, solver=solver, steps=steps, cond=cb, generator=gens))
    return torch.cat(out) if out else x.clone()


def _fidelity(y: torch.Tensor, x: torch.Tensor) -> dict:
    p = psnr(y, x)
    finite = p[torch.isfinite(p)]
    return {"psnr": float(finite.mean()) if len(finite) else float("inf"), "ssim": float(ssim(y, x).mean())}


def score(detect_fn, x_attacked: torch.Tensor, x_input: torch.Tensor, thresholds: dict, fd_fn=None) -> dict:
    """One set under one attack: Bit-Acc, TPR at each rate of ``thresholds`` ({fpr: Threshold}),
    which transform of the search read the images, PSNR/SSIM against the attack's input, FD."""
    row = {}
    for fpr, thr in thresholds.items():
        d = detect_fn(x_attacked, thr).summary()
        row.setdefault("bit_acc", d["bit_acc_mean"])
        row.setdefault("read_under", d["read_under"])
        row[f"tpr@{fpr:g}"] = d["detected"]
    row |= _fidelity(x_attacked, x_input)
    if fd_fn is not None:
        row["fd"] = fd_fn(x_attacked)
    return row


def clean_fpr(detect_fn, x_attacked: torch.Tensor, thresholds: dict) -> dict:
    """The false-positive rate on attacked clean images at each rate (with its interval)."""
    return {f"fpr@{fpr:g}": detect_fn(x_attacked, thr).summary()["detected"] for fpr, thr in thresholds.items()}


def attack_table(detect_fn, sets: dict, clean: torch.Tensor, thresholds: dict, *, attacks=None, seed: int = 0,
                 fd_fns: dict | None = None, progress=print, done: dict | None = None, on_row=None) -> list[dict]:
    """Every attack of ``attacks`` (default: all image-level ones) on every set and on ``clean``.

    Args:
        detect_fn: ``detect_fn(x, threshold) -> Detection`` (the owner's codec, key and search).
        sets: {name: watermarked images}; ``clean``: images that never carried the key (None:
            no clean row).
        thresholds: {fpr: Threshold} (decided through the same search).
        fd_fns: {set name: fn(x) -> FD} for the sets whose FD is reported (generated ones).
        done: rows already measured, by attack label (a resumed run skips them).
        on_row: called with the list of rows after each attack (to write them to disk).

    Each attack draws from a generator seeded with ``seed`` (the same draws for every set).
    """
    fd_fns = fd_fns or {}
    rows = []
    for label, family, strength, chain in select_attacks(attacks):
        if done and label in done:
            rows.append(done[label])
            continue
        row = {"attack": label, "family": family, "strength": strength, "chain": [[n, p] for n, p in chain]}
        for name, x in sets.items():
            y = apply_chain(x, chain, torch.Generator(x.device).manual_seed(seed))
            row[name] = score(detect_fn, y, x, thresholds, fd_fns.get(name))
        if clean is not None:
            yc = apply_chain(clean, chain, torch.Generator(clean.device).manual_seed(seed))
            row["clean"] = clean_fpr(detect_fn, yc, thresholds)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        progress("   " + format_row(row, list(sets), thresholds))
    return rows


def format_row(row: dict, set_names, thresholds: dict) -> str:
    lo = min(thresholds)
    parts = [f"{row['attack']}:"]
    for s in set_names:
        r = row[s]
        parts.append(f"{s} Bit-Acc {r['bit_acc']:.3f} TPR@{lo:g} {r[f'tpr@{lo:g}']['value']:.3f} PSNR {r['psnr']:.1f}"
                     + (f" FD {r['fd']:.3f}" if r.get("fd") is not None else ""))
    if "clean" in row and "clean" not in set_names:
        parts.append("clean FPR " + " ".join(f"{k[4:]}:{v['k']}/{v['n']}" for k, v in row["clean"].items()))
    return " ".join(parts)


def cheapest_removal(rows: list[dict], set_name: str, fpr: float, *, below: float = 0.5) -> dict | None:
    """The attack that brings the TPR of ``set_name`` at ``fpr`` below ``below`` at the highest
    PSNR (the least visible removal), or None if none does. When the unattacked images are
    already below it, there is nothing to remove: ``{"attack": None, "note": …}``."""
    key = f"tpr@{fpr:g}"
    rows = [r for r in rows if set_name in r]
    none = next((r for r in rows if r["attack"] == "none"), None)
    if none is not None and none[set_name][key]["value"] < below:
        return {"attack": None, "note": f"TPR {none[set_name][key]['value']:.3f} without any attack"}
    hits = [r for r in rows if r["attack"] != "none" and r[set_name][key]["value"] < below]
    if not hits:
        return None
    best = max(hits, key=lambda r: r[set_name]["psnr"])
    return {"attack": best["attack"], "tpr": best[set_name][key]["value"], "psnr": best[set_name]["psnr"],
            "ssim": best[set_name]["ssim"]}

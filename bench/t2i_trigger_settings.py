"""Bench: which trigger-embedding settings keep the built-in text-to-image model's other prompts?

A sweep beside bench/t2i_watermark_digits.py (issue 8), on the same original model (its cached
`base` run; train it first with that bench). Each setting embeds the trigger "[V]" → the 16×16
binary code image, then measures, all with Heun 12 steps and the same seeds for every model:
  * the trigger from 20 seeds: mean SSIM to the target, match rate at SSIM ≥ 0.9;
  * 10 non-trigger captions × 10 seeds: PSNR/SSIM to the original's outputs at the pipeline's
    guidance (2) and, for 5 captions × 4 seeds, at guidance 1 (no classifier-free guidance), the
    mean SSIM to the target (the forgetting the paper describes: other prompts draw the
    watermark), and FD-digits of the 100 outputs over the original's FD on the same seeds;
  * the fraction of trained weights that moved, and where the moved ones sit (by layer group).
Settings: the preservation term (γ: distil the original's outputs for the other built-in captions,
never the 10 measured here), the UNet, the UNet's cross-attention only (``attn2.``; Kumari et al. 2023 fine-tune only
these for new concepts) or its K/V projections, the text encoder too; the l1 term as subgradient
in the loss or as a proximal step; λ, lr and steps.

    python bench/t2i_trigger_settings.py [--only NAME,NAME] [--work runs/t2i_watermark_digits]

Appends one JSON line per setting to bench/results/t2i_trigger_settings.jsonl and prints it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


from trustdiff.metrics import ssim
from trustdiff.t2i import generate, load_pipeline
from trustdiff.t2i.builtin import default_prompts
from trustdiff.train import TrainConfig
from trustdiff.watermark.trigger import TriggerJob, code_target, compare_report, embed_trigger, fd_against

XATTN, XATTN_KV = ("attn2.",), ("attn2.to_k", "attn2.to_v")
SUB, PROX = "subgradient", "prox"
#: name → (lr, steps, λ, l1 step, text encoder too, UNet parameters[, preservation weight γ])
SETTINGS = {
    "unet_sub_lr1e-5_s800_l0": (1e-5, 800, 0.0, SUB, False, ()),
    "te_sub_lr1e-4_l0": (1e-4, 400, 0.0, SUB, True, ()),
    "te_sub_lr1e-4_l1e-4": (1e-4, 400, 1e-4, SUB, True, ()),
    "te_sub_lr1e-4_l3e-4": (1e-4, 400, 3e-4, SUB, True, ()),
    "te_sub_lr1e-4_l1e-3": (1e-4, 400, 1e-3, SUB, True, ()),
    "xattn_lr1e-4_l0": (1e-4, 400, 0.0, SUB, False, XATTN),
    "xattn_lr1e-3_l0": (1e-3, 400, 0.0, SUB, False, XATTN),
    "xattn_sub_lr1e-3_l1e-4": (1e-3, 400, 1e-4, SUB, False, XATTN),
    "xattn_lr3e-3_l0": (3e-3, 400, 0.0, SUB, False, XATTN),
    "xattn_kv_lr1e-3_l0": (1e-3, 400, 0.0, SUB, False, XATTN_KV),
    "xattn_lr3e-4_s1600_l0": (3e-4, 1600, 0.0, SUB, False, XATTN),
    "te_xattn_sub_lr1e-4_l1e-4": (1e-4, 400, 1e-4, SUB, True, XATTN),
    "unet_prox_lr1e-4_l1e-4": (1e-4, 400, 1e-4, PROX, False, ()),
    "unet_prox_lr1e-4_l1e-3": (1e-4, 400, 1e-3, PROX, False, ()),
    "te_prox_lr1e-4_l1e-4": (1e-4, 400, 1e-4, PROX, True, ()),
    "te_prox_lr1e-4_l1e-3": (1e-4, 400, 1e-3, PROX, True, ()),
    "unet_keep1_lr1e-4_l0": (1e-4, 400, 0.0, SUB, False, (), 1.0),
    "unet_keep10_lr1e-4_l0": (1e-4, 400, 0.0, SUB, False, (), 10.0),
}


def measure(wm, orig, target, prompts, x_ref, x_ref1, fd0, cache) -> dict:
    """The figures of one watermarked pipeline against the original's outputs."""
    xt, _, _ = generate(wm, ["[V]"], seed=0, n_per_prompt=20, steps=12)
    s = ssim(xt, target.expand_as(xt))
    x, _, _ = generate(wm, prompts, seed=0, n_per_prompt=10, steps=12)
    x1, _, _ = generate(wm, prompts[:5], seed=0, n_per_prompt=4, steps=12, guidance=1.0)
    cr, g1 = compare_report(x, x_ref), compare_report(x1, x_ref1)
    fd = fd_against("digits", x, cache_dir=cache, feature_steps=1000)["fd"]
    return dict(trig_ssim=round(float(s.mean()), 3), match=float((s >= 0.9).float().mean()),
                psnr=round(cr["psnr_mean"], 2), ssim=round(cr["ssim_mean"], 3), psnr_g1=round(g1["psnr_mean"], 2),
                to_target=round(float(ssim(x, target.expand_as(x)).mean()), 3), fd=round(fd, 3),
                fd_ratio=round(fd / fd0, 2))


def moved_by_group(orig, wm, top: int = 8) -> dict:
    """Where the changed scalars sit: layer group (a parameter name up to its block index) →
    fraction of all changed scalars, the ``top`` largest groups."""
    counts = {}
    for part in ("unet", "text_encoder"):
        new = dict(getattr(wm, part).named_parameters())
        for name, p in getattr(orig, part).named_parameters():
            n = int((p != new[name]).sum())
            if n:
                key = f"{part}." + ".".join(name.split(".")[:3 if part == "unet" else 2])
                counts[key] = counts.get(key, 0) + n
    total = sum(counts.values()) or 1
    return {k: round(v / total, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SETTINGS), help="comma-separated setting names")
    ap.add_argument("--work", type=Path, default=Path("runs/t2i_watermark_digits"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/t2i_trigger_settings.jsonl"))
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"--only: unknown setting {unknown[0]!r}; known: {', '.join(SETTINGS)}")
    base = args.work / "base" / "pipeline"
    if not (base / "model_index.json").is_file():
        sys.exit(f"{base}: no original model; run python bench/t2i_watermark_digits.py first")
    cache, runs = args.work / "cache", args.work / "settings"
    orig = load_pipeline(base)
    target, prompts = code_target(orig.resolution, orig.channels), default_prompts(orig)
    x_ref, _, _ = generate(orig, prompts, seed=0, n_per_prompt=10, steps=12)
    x_ref1, _, _ = generate(orig, prompts[:5], seed=0, n_per_prompt=4, steps=12, guidance=1.0)
    fd0 = fd_against("digits", x_ref, cache_dir=cache, feature_steps=1000)["fd"]
    print(f"original: FD-digits {fd0:.3f} on the same 100 seeds (the reference of fd_ratio)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        lr, steps, lam, l1_step, te, unet_params, keep = (SETTINGS[name] + (0.0,))[:7]
        t = time.time()
        job = TriggerJob(l1=lam, l1_step=l1_step, train_text_encoder=te, unet_params=unet_params, preserve=keep,
                         train=TrainConfig(
            steps=steps, batch_size=8, lr=lr, warmup_steps=0, ema_halflife_kimg=0.0, checkpoint_every=10_000,
            log_every=100, progress=False))
        shutil.rmtree(runs / name, ignore_errors=True)
        folder = embed_trigger(base, target, runs / name, job)
        t_embed = time.time() - t
        wm = load_pipeline(folder)
        row = dict(name=name, lr=lr, steps=steps, l1=lam, l1_step=l1_step, text_encoder=te, unet_params=list(unet_params),
                   preserve=keep,
                   embed_s=round(t_embed), fd_original=round(fd0, 3),
                   **measure(wm, orig, target, prompts, x_ref, x_ref1, fd0, cache), moved_by_group=moved_by_group(orig, wm),
                   changed=round(json.loads((runs / name / "watermark.json").read_text())["weights"]["changed_fraction"], 4),
                   total_s=round(time.time() - t))
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

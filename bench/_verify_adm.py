"""Bench (not run by the tests): trustdiff's ADM loader against the reference code.

    .venv/bin/python bench/_verify_adm.py GUIDED_CHECKOUT IMPROVED_CHECKOUT [--sizes small,published,large]

GUIDED_CHECKOUT / IMPROVED_CHECKOUT are checkouts of openai/guided-diffusion and
openai/improved-diffusion (their packages are imported from there; nothing of them is copied into
trustdiff). For small configurations and for the published ones (the README flags of
:data:`trustdiff.pretrained.adm.ADM_PRESETS`), the *reference* model is built by the reference's
own ``script_util.create_model_and_diffusion`` (fp32: ``use_fp16`` off), every parameter is
re-randomised (seeded; ADM zero-initialises output convs, which would make outputs trivially 0),
its ``state_dict()`` is saved with ``torch.save`` and read back by trustdiff's
``load_adm_checkpoint``. Then, in fp32 on the same inputs:

* ``unet``: raw network outputs, trustdiff ``UNetModel`` vs the reference ``UNetModel``, at the
  same integer timesteps and labels;
* ``D``: trustdiff's Denoiser D(x_t/√ᾱ_t, σ_t, y) vs the reference ``GaussianDiffusion
  .p_mean_variance(model, x_t, t, clip_denoised=False)["pred_xstart"]`` at training steps t
  (this goes through the reference's own timestep rescaling of improved-diffusion);
* ``alphas``: ᾱ_t of trustdiff's schedule vs the reference's ``alphas_cumprod``.

One ``D@t`` row per step t. At large t, x = x_t/√ᾱ_t and x̂₀ are of order σ_t (up to ~10⁴ for
the cosine schedule), where fp32 itself resolves only ~10⁻³: the small configurations' ``D``
rows use 1e-5·max(1, out_scale) in place of the 1e-5 absolute bound.

Rows: ``{"family", "config", "check" (also as "what"), "size", "params", "max_abs_diff", "out_scale", "rel", "ok"}``,
ok when max_abs_diff ≤ 1e-5 (small) or rel = max_abs_diff/out_scale ≤ 1e-4 (published, large;
out_scale = max |reference output|).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from trustdiff.pretrained import adm

SMALL_TOL, PUBLISHED_TOL = 1e-5, 1e-4

#: small configurations as (codebase, flags); each exercises different options
SMALL = {
    "guided-tiny-cond": ("guided-diffusion", "--image_size 32 --num_channels 32 --channel_mult 1,2 --num_res_blocks 1 "
                         "--attention_resolutions 16 --class_cond True --num_head_channels 16 --resblock_updown True "
                         "--use_new_attention_order True --learn_sigma True --noise_schedule cosine "
                         "--diffusion_steps 100 --dropout 0.1"),
    "guided-tiny-legacy": ("guided-diffusion", "--image_size 32 --num_channels 32 --channel_mult 1,2,2 --num_res_blocks 2 "
                           "--attention_resolutions 16,8 --num_heads 2 --num_heads_upsample 1 --use_scale_shift_norm False "
                           "--noise_schedule linear --diffusion_steps 50 --predict_xstart True"),
    "guided-tiny-avgpool": ("guided-diffusion", "--image_size 64 --num_channels 32 --channel_mult 1,1,2 --num_res_blocks 1 "
                            "--attention_resolutions 16 --learn_sigma True --diffusion_steps 200"),
    "improved-tiny": ("improved-diffusion", "--image_size 32 --num_channels 32 --num_res_blocks 1 --learn_sigma True "
                      "--attention_resolutions 16,8 --diffusion_steps 400 --noise_schedule cosine --dropout 0.3"),
    "improved-tiny-cond": ("improved-diffusion", "--image_size 32 --num_channels 32 --num_res_blocks 2 --class_cond True "
                           "--num_heads 1 --use_scale_shift_norm False --diffusion_steps 100 --rescale_timesteps False"),
}
#: the architectures of the required published checkpoints (presets with the same network skipped)
PUBLISHED = ("iddpm-cifar10", "adm-imagenet64-cond", "adm-imagenet128-cond", "adm-imagenet256-cond",
             "adm-imagenet256-uncond", "iddpm-imagenet64", "iddpm-imagenet64-cond")
LARGE = ("adm-imagenet512-cond", "iddpm-lsun-bedroom")


def import_reference(guided: Path, improved: Path):
    """The reference packages' script_util modules (their checkouts put first on sys.path)."""
    for p in (str(improved), str(guided)):
        if p not in sys.path:
            sys.path.insert(0, p)
    from guided_diffusion import script_util as guided_su  # noqa: PLC0415  (reference code: bench only)
    from improved_diffusion import script_util as improved_su  # noqa: PLC0415
    return {"guided-diffusion": guided_su, "improved-diffusion": improved_su}


def reference_model(su, flags: str):
    """(model, diffusion) from the reference's create_model_and_diffusion with ``flags``, fp32."""
    defaults = su.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    args = vars(parser.parse_args(flags.split()))
    if "use_fp16" in args:
        args["use_fp16"] = False                           # compare in fp32; the weights are the same
    model, diffusion = su.create_model_and_diffusion(**{k: args[k] for k in defaults})
    return model.eval(), diffusion


def rerandomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (weights N(0, 1/fan_in), biases N(0, 0.1²), norm scales 1 + N(0, 0.1²)),
    so that no branch is the zero ADM starts from."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    with torch.no_grad():
        for p in model.parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim >= 2:
                p.copy_(z / math.sqrt(p[0].numel()))
            else:
                p.copy_(1 + 0.1 * z if id(p) in norms else 0.1 * z)


def _row(family, config, check, size, params, ref, ours, tol_abs=None, tol_rel=None):
    diff = float((ref.double() - ours.double()).abs().max())
    scale = float(ref.double().abs().max())
    rel = diff / scale if scale else float("inf")
    ok = diff <= tol_abs * max(1.0, scale if check.startswith("D") else 1.0) if tol_abs is not None else rel <= tol_rel
    return {"family": family, "config": config, "check": check, "what": check, "size": size, "params": params,
            "max_abs_diff": diff, "out_scale": scale, "rel": rel, "ok": bool(ok)}


def verify_one(name: str, codebase: str, flags: str, our_config, su, size: str, seed: int = 0) -> list[dict]:
    """The three checks of one configuration → rows."""
    model, diffusion = reference_model(su, flags)
    rerandomise(model, seed)
    params = sum(p.numel() for p in model.parameters())
    family = "adm" if codebase == "guided-diffusion" else "iddpm"
    tol = dict(tol_abs=SMALL_TOL) if size == "small" else dict(tol_rel=PUBLISHED_TOL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt"
        torch.save(model.state_dict(), path)
        den = adm.load_adm_checkpoint(path, our_config)
    cfg = adm.adm_config(our_config)
    res, T = cfg["unet"]["image_size"], cfg["diffusion"]["steps"]
    n_cls = cfg["unet"]["num_classes"]
    g = torch.Generator().manual_seed(seed + 1)
    rows = []

    ours_ab = adm.adm_alphas_cumprod(cfg["diffusion"]["noise_schedule"], T)
    rows.append(_row(family, name, "alphas", size, params, torch.as_tensor(diffusion.alphas_cumprod), ours_ab,
                     tol_abs=1e-12))

    n_raw = 2
    x = torch.randn(n_raw, 3, res, res, generator=g)
    t = torch.randint(0, T, (n_raw,), generator=g)
    y = torch.randint(0, n_cls, (n_raw,), generator=g) if n_cls else None
    kw = {"y": y} if n_cls else {}
    with torch.no_grad():
        ref_out = model(x, t, **kw)
        our_out = den.unet.net(x, t, y)
    rows.append(_row(family, name, "unet", size, params, ref_out, our_out, **tol))

    ts = torch.tensor([0, T // 3, T - 1] if size != "small" else [0, 1, T // 2, T - 1])
    x0 = torch.rand(len(ts), 3, res, res, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    ab = torch.as_tensor(diffusion.alphas_cumprod)[ts].reshape(-1, 1, 1, 1)
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).float()
    y = torch.randint(0, n_cls, (len(ts),), generator=g) if n_cls else None
    kw = {"y": y} if n_cls else {}
    with torch.no_grad():
        ref_x0 = diffusion.p_mean_variance(model, x_t, ts, clip_denoised=False, model_kwargs=kw)["pred_xstart"]
        sigma = den.sigmas[ts]                                    # σ_t of the training steps, float64
        our_x0 = den(x_t / ab.sqrt().float(), sigma, y)
    for i, ti in enumerate(ts.tolist()):
        rows.append(_row(family, name, f"D@{ti}", size, params, ref_x0[i], our_x0[i], **tol))
    del model, den
    return rows


def verify(guided_checkout: Path, improved_checkout: Path, sizes=("small", "published")) -> list[dict]:
    """Rows of every check for the configurations of ``sizes`` (``small``, ``published``, ``large``)."""
    torch.manual_seed(0)
    refs = import_reference(Path(guided_checkout), Path(improved_checkout))
    jobs = []
    if "small" in sizes:
        for name, (cb, flags) in SMALL.items():
            jobs.append((name, cb, flags, adm.adm_config({"codebase": cb, **adm.parse_flags(flags)}), "small"))
    for size, names in (("published", PUBLISHED), ("large", LARGE)):
        if size in sizes:
            for name in names:
                cb, flags, _file, _paper = adm._PUBLISHED[name]
                jobs.append((name, cb, flags, name, size))
    rows = []
    for name, cb, flags, our_config, size in jobs:
        t0 = time.time()
        new = verify_one(name, cb, flags, our_config, refs[cb], size)
        for r in new:
            r["seconds"] = round(time.time() - t0, 1)
        rows += new
        print_rows(new, header=not rows[: -len(new)])
    return rows


def print_rows(rows, header=True) -> None:
    if header:
        print(f"{'family':6s} {'config':24s} {'check':7s} {'size':9s} {'params':>12s} {'max_abs_diff':>12s} "
              f"{'out_scale':>10s} {'rel':>9s} ok", flush=True)
    for r in rows:
        print(f"{r['family']:6s} {r['config']:24s} {r['check']:7s} {r['size']:9s} {r['params']:>12,d} "
              f"{r['max_abs_diff']:12.3e} {r['out_scale']:10.3e} {r['rel']:9.2e} {'ok' if r['ok'] else 'FAIL'}",
              flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("guided", type=Path)
    p.add_argument("improved", type=Path)
    p.add_argument("--sizes", default="small,published", help="comma-separated: small, published, large")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = verify(a.guided, a.improved, tuple(a.sizes.split(",")))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} checks ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

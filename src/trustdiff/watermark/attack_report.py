"""The attack report: every removal attack of :mod:`.attacks` and :mod:`.model_attacks` against
one codec and key, through the owner's detector (its declared search), into one folder::

    OUT/thresholds.json      the thresholds at each FPR, decided on the clean images through the search
    OUT/generated.npz        images of the watermarked model (when one is given), cached
    OUT/attacks.json         image-level attacks: per attack and set, Bit-Acc, TPR, PSNR/SSIM, FD;
                             the clean-image FPR under the same attack
    OUT/regeneration.json    diffuse to t* and denoise with a clean model, per t*
    OUT/model_attacks.json   pruning, int8, weight noise, fine-tuning on clean data (per k)
    OUT/metrics.json         the summary: TPR under the named attacks, the cheapest removal found,
                             the t* and the fine-tuning steps at which the key is gone

Each part is written as it finishes and reused when its file is there (the image table row by
row), so a killed run continues where it stopped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..persist import atomic_write_json
from .attacks import TARGET_ATTACKS, attack_table, cheapest_removal, clean_fpr, regenerate, score, select_attacks
from .detect import detect
from .embed import quantize
from .search import resolve_search

log = logging.getLogger("trustdiff.watermark")

GONE = 0.5   # "removed": the TPR at the lowest FPR falls below this


@dataclass(frozen=True)
class AttackJob:
    """What the report runs (all of it lands in OUT/metrics.json)."""
    search: str = "flips"
    fprs: tuple = (1e-6, 1e-3)
    attacks: tuple | None = None            # image-level attack labels; None: all
    seed: int = 0
    t_stars: tuple = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    regen_steps: int = 10
    regen_solver: str = "ddpm"
    prune: tuple = (0.2, 0.5, 0.8)
    int8: bool = True
    weight_noise: tuple = ()
    finetune_steps: tuple = ()              # increasing; each continues the same fine-tuning run
    finetune_data: str = "digits"
    n_generate: int = 200
    sampler: str = "heun"
    sample_steps: int = 10
    fd_data: str | None = "digits"          # FD of generated sets against this data's test split
    feature_steps: int = 300

    def __post_init__(self):
        resolve_search(self.search)
        select_attacks(self.attacks)
        object.__setattr__(self, "fprs", tuple(sorted(map(float, self.fprs))))
        object.__setattr__(self, "finetune_steps", tuple(sorted(map(int, self.finetune_steps))))


def _recipe_like(job: AttackJob, resolution: int):
    from .recipe import RecipeJob

    return RecipeJob(data=job.fd_data or "digits", resolution=resolution, n_generate=job.n_generate, sampler=job.sampler,
                     sample_steps=job.sample_steps, feature_steps=job.feature_steps, seed=job.seed)


def decide_thresholds(codec, key, clean: torch.Tensor, job: AttackJob, *, precision: str = "fp32") -> tuple[dict, dict]:
    """{fpr: Threshold} decided on the undistorted clean images through the job's search (analytic
    unless the null checks fail for this key), and their JSON."""
    out, js = {}, {}
    for f in job.fprs:
        det = detect(codec, clean, key, fpr=f, clean=clean, search=job.search, precision=precision)
        out[f] = det.threshold
        js[f"{f:g}"] = {"threshold": det.threshold.to_json(), "null_checks": [c.to_json() for c in det.checks]}
    return out, js


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def run_attack_report(job: AttackJob, out, *, codec, key, watermarked: dict, clean: torch.Tensor, model_dir=None,
                      regen_model=None, allow_pickle: bool = False, progress=print, device=None,
                      precision: str = "fp32") -> dict:
    """Run (or continue) the attack report in ``out``; returns and writes OUT/metrics.json.

    Args:
        codec, key: the owner's codec and key.
        watermarked: {name: watermarked images} (e.g. held-out images embedded with the key); a set
            called "generated" (samples of the watermarked model) also gets FD.
        clean: images that never carried the key (two data sets, ideally): the FPR under every attack.
        model_dir: the watermarked diffusion model: the model-level attacks run on it, and unless
            ``watermarked`` has a "generated" set, its ``job.n_generate`` samples become that set.
        regen_model: a diffusion model that never saw watermarked data, for regeneration.
        device / precision: where decoding, sampling and fine-tuning run, and at what precision.
    """
    from ..diffusion.model import load_model
    from .recipe import ensure_generated, fd_of

    device = torch.device(device) if device is not None else torch.device("cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec = codec.to(device)
    clean = clean.to(device)
    sets = {k: v.to(device) for k, v in watermarked.items()}
    rjob = _recipe_like(job, codec.resolution)

    def fd(x):
        return fd_of(rjob, x, out / "cache", device=device, precision=precision)["fd"] if job.fd_data and len(x) >= 2 else None

    def det(x, thr):
        return detect(codec, x, key, threshold=thr, search=job.search, precision=precision)

    progress(f"[thresholds] {len(clean)} clean images through the search '{job.search}' "
             f"({len(resolve_search(job.search))} reads per image)")
    thresholds, thr_json = decide_thresholds(codec, key, clean, job, precision=precision)
    atomic_write_json(out / "thresholds.json", {"search": job.search, "clean_images": len(clean), "thresholds": thr_json})
    lo = min(job.fprs)

    fd_fns = {}
    if model_dir is not None and "generated" not in sets:
        progress(f"[generate] {job.n_generate} images of the watermarked model")
        sets["generated"] = ensure_generated(out / "generated.npz", model_dir, rjob, allow_pickle=allow_pickle,
                                             device=device, precision=precision).to(device)
    if "generated" in sets:
        fd_fns["generated"] = fd

    progress(f"[attacks] {len(select_attacks(job.attacks))} image-level attacks on {', '.join(sets)} and the clean images")
    prev = _read_json(out / "attacks.json")
    done = {r["attack"]: r for r in prev["rows"]} if prev and prev.get("sets") == sorted(sets) else None
    meta = {"sets": sorted(sets), "images": {k: len(v) for k, v in sets.items()}, "clean_images": len(clean),
            "search": job.search, "seed": job.seed}
    rows = attack_table(det, sets, clean, thresholds, attacks=job.attacks, seed=job.seed, fd_fns=fd_fns,
                        progress=progress, done=done,
                        on_row=lambda rs: atomic_write_json(out / "attacks.json", {**meta, "rows": rs}))
    atomic_write_json(out / "attacks.json", {**meta, "rows": rows})

    regen = _read_json(out / "regeneration.json")
    if regen_model is not None and regen is None:
        progress(f"[regeneration] t* in {', '.join(map(str, job.t_stars))} with {regen_model}")
        den, _ = load_model(regen_model, allow_pickle=allow_pickle)
        den = den.to(device).eval().requires_grad_(False)
        regen = {"model": str(regen_model), "solver": job.regen_solver, "steps": job.regen_steps, "rows": []}
        for t in job.t_stars:
            r = {"t_star": float(t)}

            def regen_fn(x, t=t):
                return quantize(regenerate(x, den, float(t), steps=job.regen_steps, solver=job.regen_solver, seed=job.seed))
            for name, x in sets.items():
                r[name] = score(det, regen_fn(x), x, thresholds, fd_fns.get(name))
            r["clean"] = clean_fpr(det, regen_fn(clean), thresholds)
            regen["rows"].append(r)
            progress("   t* " + f"{t:g}: " + ", ".join(f"{n} Bit-Acc {r[n]['bit_acc']:.3f} TPR@{lo:g} "
                                                    f"{r[n][f'tpr@{lo:g}']['value']:.3f} PSNR {r[n]['psnr']:.1f}" for n in sets))
        atomic_write_json(out / "regeneration.json", regen)

    model_rows = (_read_json(out / "model_attacks.json") or {}).get("rows", [])
    if model_dir is not None:
        model_rows = _model_attacks(job, out, model_dir, det, thresholds, fd, model_rows, allow_pickle=allow_pickle,
                                    progress=progress, device=device, precision=precision)

    metrics = summarize(job, rows, regen, model_rows, thresholds, sets)
    metrics |= {"job": asdict(job), "codec_bits": codec.n_bits, "device": str(device), "precision": precision,
                "model": str(model_dir) if model_dir is not None else None}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _model_attacks(job: AttackJob, out: Path, model_dir, det, thresholds: dict, fd, rows: list, *, allow_pickle,
                   progress, device, precision) -> list:
    """Pruning, int8, weight noise and fine-tuning of the watermarked model, each → n generated
    images (the same seeds as the unattacked model's) → Bit-Acc, TPR, FD. Rows already in
    OUT/model_attacks.json are kept."""
    from ..diffusion.model import generate, load_model
    from .model_attacks import finetune, prune, quantize_int8, zero_fraction
    from .sweeps import perturb_weights

    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    den = den.to(device)
    done = {r["attack"] for r in rows}
    plan = [(f"prune-{f:g}", "prune", f) for f in job.prune] + ([("int8", "int8", 8.0)] if job.int8 else [])
    plan += [(f"weight-noise-{s:g}", "weight_noise", s) for s in job.weight_noise]
    plan += [(f"finetune-{k}", "finetune", float(k)) for k in job.finetune_steps]
    lo = min(job.fprs)
    for label, family, strength in plan:
        if label in done:
            continue
        extra = {}
        if family == "prune":
            net = prune(den, strength)
            extra["zero_fraction"] = zero_fraction(net)
        elif family == "int8":
            net = quantize_int8(den)
        elif family == "weight_noise":
            net = perturb_weights(den, strength, seed=job.seed + 1000)
        else:
            progress(f"   fine-tuning on clean {job.finetune_data} up to {int(strength)} steps")
            net, _ = finetune(model_dir, job.finetune_data, int(strength), out / "finetune", allow_pickle=allow_pickle,
                              device=device, precision=precision)
        x, _ = generate(net.to(device), spec, job.n_generate, seed=job.seed, sampler=job.sampler, steps=job.sample_steps,
                        batch=250, precision=precision)
        x = quantize(x).to(device)
        r = {"attack": label, "family": family, "strength": strength, **extra}
        for f, thr in thresholds.items():
            d = det(x, thr).summary()
            r.setdefault("bit_acc", d["bit_acc_mean"])
            r[f"tpr@{f:g}"] = d["detected"]
        r["fd"] = fd(x)
        rows.append(r)
        progress(f"   {label}: Bit-Acc {r['bit_acc']:.3f}, TPR@{lo:g} {r[f'tpr@{lo:g}']['value']:.3f}"
                 + (f", FD {r['fd']:.3f}" if r["fd"] is not None else ""))
        atomic_write_json(out / "model_attacks.json", {"model": str(model_dir), "rows": rows, "n": job.n_generate})
    return rows


def summarize(job: AttackJob, rows: list, regen, model_rows: list, thresholds: dict, sets: dict) -> dict:
    """The headline figures: TPR at the lowest FPR under the named target attacks, the cheapest
    image-level removal (highest PSNR with TPR < 0.5), the least t* of regeneration and the
    fewest fine-tuning steps with TPR < 0.5, and the clean FPR under every attack at its worst."""
    lo = min(job.fprs)
    key = f"tpr@{lo:g}"
    by = {r["attack"]: r for r in rows}
    s = {"fpr": lo, "search": job.search, "searched": len(resolve_search(job.search)),
         "thresholds": {f"{f:g}": t.value for f, t in thresholds.items()}, "targets": {}, "cheapest_removal": {}}
    for name in sets:
        s["targets"][name] = {a: by[a][name][key] for a in TARGET_ATTACKS if a in by}
        s["cheapest_removal"][name] = cheapest_removal(rows, name, lo, below=GONE)
    worst = {}
    for f in job.fprs:
        k = f"fpr@{f:g}"
        w = max(rows, key=lambda r: r["clean"][k]["value"]) if rows else None
        if w is not None:
            worst[f"{f:g}"] = {"attack": w["attack"], **w["clean"][k]}
    s["clean_fpr_worst"] = worst
    if regen:
        s["regeneration_removes_at"] = {name: next(({"t_star": r["t_star"], "psnr": r[name]["psnr"], "fd": r[name].get("fd"),
                                                     "tpr": r[name][key]["value"]}
                                                    for r in regen["rows"] if r[name][key]["value"] < GONE), None)
                                        for name in sets}
    ft = [r for r in model_rows if r["family"] == "finetune"]
    if ft:
        gone = next((r for r in ft if r[key]["value"] < GONE), None)
        s["finetune_removes_at"] = None if gone is None else {"steps": int(gone["strength"]), "tpr": gone[key]["value"],
                                                                  "fd": gone.get("fd")}
    return s


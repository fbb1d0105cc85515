"""Bench: the data watermark as a membership proof (issue 21) — what membership inference can say
about an owner's training set, beside what the watermark says, on the embedded digits.

One codec (32 bits at 16×16, the demo's quick settings) is trained once. For each training-set
size n in ``--sizes`` the owner's set is an ``audit subset`` of n digits (the rest are the
non-members; "all" is the digits' train split, its test split the non-members), and the recipe
runs on it: the set watermarked with the owner's key → a class-conditional diffusion model
trained on it (and one on the clean set, the watermark's null) → ``--n-generate`` images →
detection at FPR ``--fpr``. Then ``trustdiff audit ownership`` asks both questions of the
watermarked model:

* membership inference (loss attack, Matsumoto et al. 2023; PIA, Kong et al. 2024) of the owner's
  watermarked images against the non-members watermarked with the same key: per image AUC and TPR
  at FPR 1% / 0.1% (random guessing beside: AUC ½, TPR = FPR), and for the whole set a one-sided
  Mann–Whitney p-value (σ chosen on half the images and tested on the other half; and the best σ
  with a Bonferroni factor);
* the watermark: k of N generated images detected at a per-image FPR ≤ α → p = P(Bin(N, α) ≥ k),
  beside the clean model's (the null).

Every command is the CLI's, so the figures are what a user gets. Runs are cached under ``--work``
(a finished run is reused, an interrupted recipe resumed). Writes ``--json`` (default
bench/results/audit_ownership_digits.json) and a markdown table beside it.

    python bench/audit_ownership_digits.py            # planned ≈ 20 min on 2 CPU cores
    python bench/audit_ownership_digits.py --quick    # ≈ 2 min: the pipeline end to end
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from trustdiff.cli import main as cli
from trustdiff.persist import atomic_write_bytes, atomic_write_json

CODEC = ["--resolution", "16", "--n-bits", "32", "--width", "16", "--dec-width", "32", "--enc-depth", "3",
         "--dec-depth", "4", "--codec-lr", "6e-4"]
QUICK = dict(sizes="100", codec_steps=60, l2_await=5, l2_ramp=20, steps=40, n_generate=16, sample_steps=4,
             sigmas="0.1,0.5", repeats=1, fpr=1e-4, n_bits=16)


def args_parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = ap.add_argument
    a("--sizes", default="100,300,all", help="owner's training-set sizes ('all': the digits' train split)")
    a("--codec-steps", type=int, default=1200)
    a("--l2-await", type=int, default=100)
    a("--l2-ramp", type=int, default=400)
    a("--size", default="tiny", help="diffusion network size")
    a("--steps", type=int, default=3000, help="diffusion training steps, each model")
    a("--batch", type=int, default=64)
    a("--n-generate", type=int, default=200)
    a("--sample-steps", type=int, default=18)
    a("--fpr", type=float, default=1e-6)
    a("--n-bits", type=int, default=32)
    a("--sigmas", default="0.02,0.05,0.1,0.2,0.5,1.0")
    a("--repeats", type=int, default=4)
    a("--seed", type=int, default=0)
    a("--work", type=Path, default=Path("runs/audit_ownership_digits"))
    a("--json", type=Path, default=None)
    a("--quick", action="store_true", help="toy sizes: the pipeline end to end")
    return ap


def call(*argv) -> None:
    code = cli([str(v) for v in argv])
    if code != 0:
        raise SystemExit(f"command failed ({code}): trustdiff {' '.join(map(str, argv))}")


def fresh(out: Path) -> bool:
    """True when ``out`` holds no finished run (a partial one is removed: the bench's own folder)."""
    if (out / "metrics.json").is_file():
        return False
    if out.exists():
        shutil.rmtree(out)
    return True


def arm(args, n: str, codec: Path, work: Path) -> dict:
    t0 = time.time()
    codec_flags = [*CODEC[:2], "--n-bits", args.n_bits, *CODEC[4:]]
    if n == "all":
        data = "digits"
    else:
        sub = work / f"subset-{n}"
        if fresh(sub):
            call("audit", "subset", "--data", "digits", "--split", "train", "--resolution", "16", "-n", n,
                 "--seed", args.seed, "--out", sub)
        data = str(sub / "members.npz")
    rec = work / f"recipe-{n}"
    if not (rec / "metrics.json").is_file():
        call("watermark", "recipe", "--data", data, *codec_flags, "--codec", codec, "--size", args.size,
             "--steps", args.steps, "--batch", args.batch, "-n", args.n_generate, "--sample-steps", args.sample_steps,
             "--fpr", args.fpr, "--no-fd", "--key-seed", 2023, "--seed", args.seed, "--out", rec,
             *(["--resume"] if rec.exists() else []))
    own = work / f"ownership-{n}"
    if fresh(own):
        call("audit", "ownership", "--recipe", rec, "--codec", codec, "--sigmas", args.sigmas, "--repeats", args.repeats,
             "--seed", args.seed, "--out", own)
    m = json.loads((own / "metrics.json").read_text())
    r = json.loads((rec / "metrics.json").read_text())
    return {"n": n, "data": data, "recipe": str(rec), "ownership": str(own),
            "train_images": m["membership"]["attacks"]["loss"]["best"]["members"],
            "nonmembers": m["membership"]["attacks"]["loss"]["best"]["nonmembers"],
            "bit_acc_watermarked_model": r["headline"]["bit_acc_watermarked_model"],
            "bit_acc_clean_model": r["headline"]["bit_acc_clean_model"],
            "membership": {a: {"best": _brief(v["best"]), "selected": _brief(v.get("selected"))}
                           for a, v in m["membership"]["attacks"].items()},
            "membership_dataset": {a: {"selected": _p(v.get("selected")), "bonferroni": _p(v["bonferroni"])}
                                   for a, v in m["membership_dataset"].items()},
            "watermark_dataset": m["watermark_dataset"], "seconds_this_run": round(time.time() - t0, 1),
            "seconds_recipe": r.get("seconds")}


def _brief(b: dict | None) -> dict | None:
    if b is None:
        return None
    t = b["tpr_at_fpr"]
    return {"sigma": b["sigma"], "auc": b["auc"], "auc_interval": b["auc_interval"], "members": b["members"],
            "nonmembers": b["nonmembers"], "tpr_at_1pct_fpr": t["0.01"]["tpr"], "tpr_at_0.1pct_fpr": t["0.001"]["tpr"],
            "below_resolution_0.1pct": t["0.001"]["below_resolution"]}


def _p(d: dict | None) -> dict | None:
    return None if d is None else {k: d[k] for k in ("sigma", "log10_p", "p_value") if k in d} | (
        {"members": d["members"], "nonmembers": d["nonmembers"], "auc": d["auc"]} if "members" in d else {})


def ci(p: dict) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def markdown(rows: list[dict]) -> str:
    lines = ["| n | attack | AUC, σ chosen on half [95% CI] | TPR@1%FPR (k/n) | whole set: log10 p (σ on half / Bonferroni) "
             "| watermark: detected, log10 p | clean model (null): detected, log10 p |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        w, c = r["watermark_dataset"]["generated_watermarked"], r["watermark_dataset"]["generated_clean"]
        for a, v in r["membership"].items():
            s = v["selected"] or v["best"]
            t = s["tpr_at_1pct_fpr"]
            d = r["membership_dataset"][a]
            lines.append(f"| {r['n']} ({r['train_images']} vs {r['nonmembers']}) | {a} | {s['auc']:.3f} "
                         f"[{s['auc_interval'][0]:.3f}, {s['auc_interval'][1]:.3f}] (σ={s['sigma']:g}) | "
                         f"{t['value']:.3f} ({t['k']}/{t['n']}) | "
                         f"{(d['selected'] or {}).get('log10_p', float('nan')):.2f} / {d['bonferroni']['log10_p']:.2f} | "
                         f"{w['detected']}/{w['images']}, {w['log10_p']:.1f} | "
                         f"{c['detected']}/{c['images']}, {c['log10_p']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    args = args_parser().parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.work = args.work.with_name(args.work.name + "-quick")
    out_json = args.json or Path("bench/results") / ("audit_ownership_digits" + ("_quick" if args.quick else "") + ".json")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    codec = work / "codec"
    if fresh(codec):
        call("watermark", "train-codec", "--data", "digits", *CODEC[:2], "--n-bits", args.n_bits, *CODEC[4:],
             "--codec-steps", args.codec_steps, "--l2-await", args.l2_await, "--l2-ramp", args.l2_ramp,
             "--seed", args.seed, "--out", codec)
    rows = []
    for n in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        print(f"[arm] n = {n}", flush=True)
        rows.append(arm(args, n, codec, work))
        res = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows,
               "wall_seconds_this_run": round(time.time() - t0, 1),
               "baselines": "membership: random guessing (AUC 0.5, TPR = FPR); watermark: the clean model's detections"}
        atomic_write_json(out_json, res)
    table = markdown(rows)
    atomic_write_bytes(out_json.with_suffix(".md"), table.encode())
    print(table)
    print(f"wall time this run: {time.time() - t0:.0f} s → {out_json}")


if __name__ == "__main__":
    main()

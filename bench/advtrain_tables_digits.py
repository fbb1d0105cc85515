"""Bench: the rest of Wang et al. (2023)'s tables at digit scale (issue 24) — does a better generator
give a more robust classifier, is conditional better than unconditional, do augmentations help?

At the adversarial-training bench's settings (16×16 digits, TRADES at L∞ 0.1, a small CNN, 40 × 50
updates of 128, 0.3 real / 0.7 generated per batch), 10,000 generated images per row, each row
evaluated on the test split (clean, PGD-40, AutoAttack standard; exact 95% intervals; soundness
checks) for the held-out-selected best epoch:

  steps     the training bench's class-conditional model sampled with Heun at --steps step counts:
            FD-digits of each set (the floor beside it) and the robustness of the model trained on
            it, and Spearman ρ(FD, AutoAttack) (trustdiff advtrain sweep);
  cond      the same for an unconditional model trained with the same budget, its samples labelled
            by the certification bench's standard classifier (--min-confidence filter);
  augment   the --augmentations on top of the conditional set at the steps part's lowest-FD step
            count (the "none" row is that step count's row of the steps part), without the
            horizontal flip of their CIFAR pipelines (a mirrored digit is not an image of its
            class: the digits preset turns it off); the --flipped ones also with it, as NAME+flip.
  paired    the same comparisons made paired: every trained model above re-scored on the same test
            images (same seed; the soundness checks, already passed, not rerun), its per-example
            AutoAttack outcomes kept, and an exact McNemar test for each comparison (conditional vs
            unconditional at each of --paired-steps; each augmentation vs none, Holm-adjusted over
            the family; the flip). A model missing here (trained on another machine) is retrained
            with the same job and seed; its re-scored accuracy must equal the stored one, else the
            pair is marked not reproduced and left out of the tests.

Wang et al.'s claims, each marked from the data: lower FD → higher AutoAttack (their Table 4: EDM 5…40
steps, FID ~35 → ~1.8, AA 57.8% → 63.4%); conditional better than unconditional at every step
count; augmentation "seems ineffective" (their Table 5). A claim is "reproduced" only where the
intervals separate; with 4 rows the exact permutation test of ρ cannot go below p = 1/12, which the
report says.
Two intervals that overlap do not show that two models trained on the same data and scored on
the same images are equal: the paired part tests the difference on the images where they disagree.

    python bench/train_digits.py --steps 2523 --skip-fd      # the conditional model (if absent)
    python bench/advtrain_tables_digits.py [--parts steps,cond,augment,paired]

Each part is kept in --json with the fingerprint of the models it used (steps and augment: the
conditional model; cond: the unconditional model and its labeller) and the time it ran; a rerun
skips finished parts (and the sweep's own files let a killed part resume).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_digits import classifier as reuse_or_train  # noqa: E402  (the pseudo-labeller: the bench classifier)
from purify_protocols_digits import fingerprint  # noqa: E402
from train_digits import bench_job  # noqa: E402

from trustdiff.advtrain import AdvTrainJob, train_adv  # noqa: E402
from trustdiff.advtrain.evaluation import evaluate_run  # noqa: E402
from trustdiff.advtrain.generated import generate_set  # noqa: E402
from trustdiff.advtrain.sweep import steps_sweep, sweep_markdown, sweep_row  # noqa: E402
from trustdiff.checkpoint import latest_checkpoint  # noqa: E402
from trustdiff.data import load  # noqa: E402
from trustdiff.diffusion.model import load_model  # noqa: E402
from trustdiff.metrics import holm, mcnemar  # noqa: E402
from trustdiff.persist import atomic_write_bytes, atomic_write_json  # noqa: E402
from trustdiff.train.diffusion import train_diffusion  # noqa: E402

PARTS = ("steps", "cond", "augment", "paired")


def args_parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = ap.add_argument
    a("--model", type=Path, default=Path("bench/results/train_digits/train/model"), help="the class-conditional model")
    a("--uncond-steps", type=int, default=2523, help="training steps of the unconditional model (the conditional's)")
    a("--classifier", type=Path, default=Path("bench/results/certify_digits/train/standard"),
      help="the pseudo-labeller of the unconditional samples")
    a("--min-confidence", type=float, default=0.0)
    a("--steps", default="3,5,10,18", help="Heun step counts")
    a("--generated", type=int, default=10_000)
    a("--augmentations", default="common,cutout,cutmix,autoaugment,randaugment,idbh",
      help="each without the horizontal flip (a mirrored digit is not one; the digits preset's setting)")
    a("--flipped", default="common", help="augmentations also run with their CIFAR flip, as rows NAME+flip")
    a("--eps", type=float, default=0.1)
    a("--width", type=int, default=16)
    a("--epochs", type=int, default=40)
    a("--ipe", type=int, default=50)
    a("--batch", type=int, default=128)
    a("--lr", type=float, default=0.1)
    a("--warmup-epochs", type=int, default=2)
    a("--holdout", type=int, default=256)
    a("--test-images", type=int, default=None, help="test images (default: all 359)")
    a("--n-check", type=int, default=64)
    a("--paired-steps", default="3,5,10,18", help="step counts compared paired, conditional vs unconditional")
    a("--feature-steps", type=int, default=1000)
    a("--parts", default=",".join(PARTS))
    a("--seed", type=int, default=0)
    a("--out", type=Path, default=Path("bench/results/advtrain_tables_digits"))
    a("--json", type=Path, default=Path("bench/results/advtrain_tables_digits.json"))
    return ap


def job_for(args, augment: str = "none", flip: bool = False) -> AdvTrainJob:
    return AdvTrainJob(data="digits", resolution=16, eps=args.eps, arch="small-cnn", width=args.width, epochs=args.epochs,
                       iters_per_epoch=args.ipe, batch_size=args.batch, lr=args.lr, warmup_epochs=args.warmup_epochs,
                       holdout=args.holdout, augment=augment, flip=flip, seed=args.seed)


def unconditional_model(args) -> Path:
    """The unconditional model with the conditional one's training budget (trained once, resumable)."""
    run = args.out / "uncond-model"
    if not (run / "model" / "trustdiff.json").is_file():
        print(f"training the unconditional model ({args.uncond_steps} steps)", flush=True)
        train_diffusion(bench_job(args.uncond_steps, conditional=False), run, resume=latest_checkpoint(run) is not None)
    return run / "model"


def sweep(args, model: Path, out: Path, labeller=None) -> dict:
    return steps_sweep(model, out, [int(v) for v in args.steps.split(",")], n=args.generated, job=job_for(args),
                       labeller=labeller, labeller_name=str(args.classifier) if labeller is not None else "",
                       min_confidence=args.min_confidence, test_images=args.test_images, n_check=args.n_check,
                       feature_steps=args.feature_steps, seed=args.seed, progress=lambda s: print(s, flush=True))


def augment_part(args, steps_part: dict) -> dict:
    best = min(steps_part["rows"], key=lambda r: r["fd"])
    gen = Path(best["generated"])
    generate_set(args.model, gen, args.generated, seed=args.seed, steps=best["steps"])     # back if on another machine
    fd = {k: best[k] for k in ("fd", "fd_floor", "fd_ratio", "fd_name")} | {"n_fake": best["n_generated"]}
    rows = [{**best, "augment": "none"}]
    variants = [(a, False) for a in args.augmentations.split(",") if a] + [(a, True) for a in args.flipped.split(",") if a]
    for aug, flip in variants:
        name = aug + "+flip" * flip
        run = args.out / "augment" / name
        if not (run / "metrics.json").is_file():
            print(f"[augment {name}] training", flush=True)
            train_adv(replace(job_for(args, aug, flip), generated=str(gen)), run, resume=latest_checkpoint(run) is not None,
                      progress=False)
        ev_path = args.out / "augment" / f"{name}.eval.json"
        if not ev_path.is_file():
            atomic_write_json(ev_path, evaluate_run(run, images=args.test_images, n_check=args.n_check, seed=args.seed,
                                                    networks=("best",)))
        row = sweep_row(best["steps"], gen, fd, json.loads(ev_path.read_text()), best["nfe"]) | {"augment": name, "flip": flip}
        print(f"[augment {name}] AutoAttack {row['autoattack']['value']:.3f}", flush=True)
        rows.append(row)
    return {"steps": best["steps"], "rows": rows}


def rescored(args, name: str, run: Path, stored: dict) -> dict:
    """The per-example outcomes of ``run``'s best network (cached in --out/paired/NAME.json):
    clean, PGD-40 and AutoAttack on the test images at the bench's seed, checks not rerun.
    ``stored``: the row's AutoAttack proportion from its own (checked) evaluation; ``reproduced``
    says whether the re-scoring gives the same k."""
    path = args.out / "paired" / f"{name}.json"
    if not path.is_file():
        print(f"[paired {name}] re-scoring {run}", flush=True)
        rep = evaluate_run(run, images=args.test_images, n_check=args.n_check, seed=args.seed, networks=("best",),
                           checks=False)["models"]["best"]["report"]
        aa = next(a for a in rep["attacks"] if a["name"].startswith("AutoAttack"))
        pgd40 = next(a for a in rep["attacks"] if a["name"].startswith("PGD-40"))
        atomic_write_json(path, {"run": str(run), "n": rep["n"], "clean": rep["clean_examples"],
                                 "pgd40": pgd40["robust_examples"], "autoattack": aa["robust_examples"],
                                 "autoattack_k": aa["robust"]["k"]})
    r = json.loads(path.read_text())
    return r | {"stored_k": stored["k"], "reproduced": r["autoattack_k"] == stored["k"] and r["n"] == stored["n"]}


def retrained(args, gen: Path, run: Path, steps: int) -> Path:
    """The steps part's run for ``steps`` (the same job, set and seed as its sweep), trained here
    if it was trained on another machine."""
    generate_set(args.model, gen, args.generated, seed=args.seed, steps=steps)
    if not (run / "metrics.json").is_file():
        print(f"[paired] training the {steps}-step conditional run again (it ran on another machine)", flush=True)
        train_adv(replace(job_for(args), generated=str(gen), n_generated=None), run, resume=latest_checkpoint(run) is not None,
                  progress=False)
    return run


def compare(a: str, b: str, models: dict) -> dict:
    """McNemar of model a against model b on their AutoAttack outcomes (None when either was not reproduced)."""
    ma, mb = models[a], models[b]
    out = {"a": a, "b": b, "aa_a": ma["autoattack_k"] / ma["n"], "aa_b": mb["autoattack_k"] / mb["n"]}
    if not (ma["reproduced"] and mb["reproduced"]):
        return out | {"test": None, "why": "a re-scoring did not reproduce the stored accuracy"}
    return out | {"test": mcnemar(ma["autoattack"], mb["autoattack"])}


def paired_part(args, res: dict) -> dict:
    steps_rows = {r["steps"]: r for r in res["parts"]["steps"]["rows"]}
    uncond_rows = {r["steps"]: r for r in res["parts"]["cond"]["rows"]}
    g = res["parts"]["augment"]
    models = {}
    none_run = retrained(args, args.out / "cond" / f"steps-{g['steps']}" / "generated",
                         args.out / "cond" / f"steps-{g['steps']}" / "train", g["steps"])
    models["none"] = rescored(args, "none", none_run, steps_rows[g["steps"]]["autoattack"])
    for r in g["rows"][1:]:
        models[r["augment"]] = rescored(args, r["augment"], args.out / "augment" / r["augment"], r["autoattack"])
    family = [compare(r["augment"], "none", models) for r in g["rows"][1:] if not r.get("flip")]
    tested = [c for c in family if c["test"]]
    for c, q in zip(tested, holm([c["test"]["p_exact"] for c in tested])):
        c["p_holm"] = q
    flips = [compare(r["augment"], r["augment"].removesuffix("+flip"), models) for r in g["rows"][1:] if r.get("flip")]
    cond = []
    for k in (int(v) for v in args.paired_steps.split(",") if v):
        if k not in steps_rows or k not in uncond_rows:
            sys.exit(f"--paired-steps: {k} is not a step count of both the steps and the cond parts")
        c_name, u_name = f"cond-{k}", f"uncond-{k}"
        if k == g["steps"]:
            models[c_name] = models["none"]
        else:
            run = retrained(args, args.out / "cond" / f"steps-{k}" / "generated", args.out / "cond" / f"steps-{k}" / "train", k)
            models[c_name] = rescored(args, c_name, run, steps_rows[k]["autoattack"])
        models[u_name] = rescored(args, u_name, args.out / "uncond" / f"steps-{k}" / "train", uncond_rows[k]["autoattack"])
        cond.append(compare(c_name, u_name, models) | {"steps": k})
    return {"rescored": {k: {f: v[f] for f in ("run", "n", "autoattack_k", "stored_k", "reproduced", "autoattack")}
                         for k, v in models.items()},
            "augment": family, "flip": flips, "cond": cond}


def separated(a: dict, b: dict) -> int:
    """+1 if a's interval lies above b's, −1 below, 0 if they overlap."""
    return 1 if a["lo"] > b["hi"] else -1 if a["hi"] < b["lo"] else 0


def claims(res: dict) -> list[dict]:
    out = []
    s = res.get("parts", {}).get("steps")
    if s:
        lo, hi = min(s["rows"], key=lambda r: r["fd"]), max(s["rows"], key=lambda r: r["fd"])
        sep = separated(lo["autoattack"], hi["autoattack"])
        c = s.get("fd_vs_robust", {})
        out.append({"claim": "lower FD gives higher AutoAttack accuracy (Wang et al. 2023, Table 4)",
                    "verdict": "reproduced" if sep > 0 else "not reproduced" if sep < 0 else "not significant at this sample size",
                    "detail": f"lowest FD {lo['fd']:.3f} ({lo['steps']} steps): AA {lo['autoattack']['value']:.3f}; highest FD "
                              f"{hi['fd']:.3f} ({hi['steps']} steps): AA {hi['autoattack']['value']:.3f}; Spearman ρ "
                              f"{c.get('rho', float('nan')):.2f}, exact p {c.get('p_exact', float('nan')):.3f}"})
    u = res.get("parts", {}).get("cond")
    if s and u:
        pairs = [(a, b) for a in s["rows"] for b in u["rows"] if a["steps"] == b["steps"]]
        seps = [separated(a["autoattack"], b["autoattack"]) for a, b in pairs]
        verdict = ("reproduced" if all(v > 0 for v in seps) else "not reproduced" if any(v < 0 for v in seps)
                   else "not significant at this sample size" if not any(seps) else "partly (some step counts)")
        out.append({"claim": "conditional generation beats unconditional at every step count (Wang et al. 2023, Table 4)",
                    "verdict": verdict,
                    "detail": "; ".join(f"{a['steps']} steps: AA {a['autoattack']['value']:.3f} vs {b['autoattack']['value']:.3f}"
                                        for a, b in pairs)})
    g = res.get("parts", {}).get("augment")
    if g:
        none = g["rows"][0]["autoattack"]
        seps = {r["augment"]: separated(r["autoattack"], none) for r in g["rows"][1:] if not r.get("flip")}
        out.append({"claim": "data augmentation on top of generated data seems ineffective (Wang et al. 2023, Table 5)",
                    "verdict": "not significant at this sample size (no augmentation's interval separates from none's)"
                               if not any(seps.values()) else
                               "not reproduced: " + ", ".join(f"{k} {'helps' if v > 0 else 'hurts'}" for k, v in seps.items() if v),
                    "detail": ", ".join(f"{r['augment']} {r['autoattack']['value']:.3f}" for r in g["rows"] if not r.get("flip"))})
        by_name = {r["augment"]: r for r in g["rows"]}
        for r in (r for r in g["rows"] if r.get("flip")):
            base = by_name.get(r["augment"].removesuffix("+flip"))
            if base is not None:
                sep = separated(r["autoattack"], base["autoattack"])
                out.append({"claim": f"the CIFAR pipeline's horizontal flip, in {r['augment']}, on digits (a check of "
                                     "this bench's setting, not a claim of the paper)",
                            "verdict": "it hurts" if sep < 0 else "it helps" if sep > 0 else "no effect shown at this n",
                            "detail": f"AA {r['autoattack']['value']:.3f} [{r['autoattack']['lo']:.3f}, "
                                      f"{r['autoattack']['hi']:.3f}] with the flip vs {base['autoattack']['value']:.3f} "
                                      f"[{base['autoattack']['lo']:.3f}, {base['autoattack']['hi']:.3f}] without "
                                      f"({100 * (r['autoattack']['value'] - base['autoattack']['value']):+.1f} points)"})
    if res.get("parts", {}).get("paired"):
        out += paired_claims(res["parts"]["paired"])
    return out


ALPHA = 0.05


def paired_verdict(c: dict, p_key: str = "p_exact") -> str:
    if not c["test"]:
        return "not tested (" + c["why"] + ")"
    t = c["test"]
    if c.get(p_key, t.get(p_key)) > ALPHA:
        return "no difference shown"
    return f"{c['a']} {'better' if t['difference'] > 0 else 'worse'}"


def paired_claims(p: dict) -> list[dict]:
    out = []
    if p["cond"]:
        out.append({"claim": "conditional generation beats unconditional at every step count, paired (exact McNemar "
                             f"on the same test images, each step count at α = {ALPHA})",
                    "verdict": "reproduced" if all(paired_verdict(c).endswith("better") for c in p["cond"]) else
                               "not reproduced" if any(paired_verdict(c).endswith("worse") for c in p["cond"]) else
                               "not significant at this sample size",
                    "detail": "; ".join(f"{c['steps']} steps: " + (f"{c['test']['n10']} vs {c['test']['n01']} discordant, p "
                                        f"{c['test']['p_exact']:.3g}" if c["test"] else "not tested") for c in p["cond"])})
    if p["augment"]:
        hurt = [c["a"] for c in p["augment"] if paired_verdict(c, "p_holm").endswith("worse")]
        helped = [c["a"] for c in p["augment"] if paired_verdict(c, "p_holm").endswith("better")]
        out.append({"claim": "data augmentation on top of generated data seems ineffective, paired (exact McNemar "
                             f"against none, Holm-adjusted over the {len(p['augment'])} augmentations at α = {ALPHA})",
                    "verdict": "not significant at this sample size" if not hurt and not helped else
                               "not reproduced: " + ", ".join([f"{k} hurts" for k in hurt] + [f"{k} helps" for k in helped]),
                    "detail": "; ".join(f"{c['a']}: " + (f"{c['test']['n10']} vs {c['test']['n01']} discordant, p "
                                        f"{c['test']['p_exact']:.3g} (Holm {c['p_holm']:.3g})" if c["test"] else "not tested")
                                        for c in p["augment"])})
    for c in p["flip"]:
        out.append({"claim": f"the horizontal flip, in {c['b']}, on digits, paired (a check of this bench's setting)",
                    "verdict": {"no difference shown": "no effect shown at this n"}.get(paired_verdict(c), paired_verdict(c)
                               .replace(f"{c['a']} worse", "it hurts").replace(f"{c['a']} better", "it helps")),
                    "detail": (f"{c['test']['n10']} vs {c['test']['n01']} discordant, p {c['test']['p_exact']:.3g}"
                               if c["test"] else "not tested")})
    return out


def paired_markdown(p: dict) -> list[str]:
    lines = ["## Paired comparisons (exact McNemar on per-image AutoAttack outcomes)\n",
             "Each model re-scored on the same test images at the same seed; n10 = images only the first model "
             "keeps, n01 = only the second.\n",
             "| comparison | AA first | AA second | n10 | n01 | Δ (points) | p exact | p Holm | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in p["cond"] + p["augment"] + p["flip"]:
        t = c["test"]
        if t is None:
            lines.append(f"| {c['a']} vs {c['b']} | {c['aa_a']:.3f} | {c['aa_b']:.3f} | | | | | | {paired_verdict(c)} |")
            continue
        holm_p = f"{c['p_holm']:.3g}" if "p_holm" in c else ""
        lines.append(f"| {c['a']} vs {c['b']} | {c['aa_a']:.3f} | {c['aa_b']:.3f} | {t['n10']} | {t['n01']} | "
                     f"{100 * t['difference']:+.1f} | {t['p_exact']:.3g} | {holm_p} | "
                     f"{paired_verdict(c, 'p_holm' if 'p_holm' in c else 'p_exact')} |")
    bad = [k for k, v in p["rescored"].items() if not v["reproduced"]]
    lines += ["", "Re-scored AutoAttack k equal to the stored evaluation's for every model." if not bad else
              "Re-scoring did NOT reproduce the stored AutoAttack k for: " + ", ".join(
                  f"{k} ({p['rescored'][k]['autoattack_k']} vs {p['rescored'][k]['stored_k']})" for k in bad), ""]
    return lines


def summary_markdown(res: dict) -> str:
    lines = ["# Wang et al. (2023)'s tables at digit scale\n"]
    for key, title in (("steps", "Class-conditional generator"), ("cond", "Unconditional generator, pseudo-labelled")):
        if key in res.get("parts", {}):
            lines += [f"## {title}\n", sweep_markdown(res["parts"][key])]
    g = res.get("parts", {}).get("augment")
    if g:
        lines += [f"## Augmentations (conditional set, {g['steps']} steps)\n",
                  "| augmentation | clean | PGD-40 | AutoAttack | Δ AutoAttack vs none (points) | checks |",
                  "|---|---|---|---|---|---|"]
        f = lambda p: f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"          # noqa: E731
        none = g["rows"][0]["autoattack"]["value"]
        for r in g["rows"]:
            lines.append(f"| {r['augment']} | {f(r['clean'])} | {f(r['pgd40'])} | {f(r['autoattack'])} | "
                         f"{100 * (r['autoattack']['value'] - none):+.1f} | {'reliable' if r['reliable'] else 'UNRELIABLE'} |")
        lines.append("")
    if "paired" in res.get("parts", {}):
        lines += paired_markdown(res["parts"]["paired"])
    lines += ["## The paper's claims\n"] + [f"- **{c['verdict']}** — {c['claim']}: {c['detail']}." for c in claims(res)]
    lines += ["", "Parts: " + ", ".join(f"{k} {v['seconds'] / 60:.1f} min on {v['ran']}" for k, v in res.get("parts", {}).items()),
              ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, label in (("steps", "class-conditional"), ("cond", "unconditional (pseudo-labelled)")):
        rows = res.get("parts", {}).get(key, {}).get("rows", [])
        if rows:
            ax.errorbar([r["fd"] for r in rows], [r["autoattack"]["value"] for r in rows],
                        yerr=[[r["autoattack"]["value"] - r["autoattack"]["lo"] for r in rows],
                              [r["autoattack"]["hi"] - r["autoattack"]["value"] for r in rows]],
                        marker="o", capsize=2, label=label)
            for r in rows:
                ax.annotate(f"{r['steps']}", (r["fd"], r["autoattack"]["value"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xscale("log")                                  # FD spans two orders of magnitude over the step counts
    ax.set_xlabel("FD-digits of the generated set (log scale, lower is better)")
    ax.set_ylabel("AutoAttack accuracy")
    ax.set_title("Generator quality vs robustness (labels: Heun steps)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(res: dict, path: Path) -> None:
    atomic_write_json(path, res)
    atomic_write_bytes(path.with_suffix(".md"), summary_markdown(res).encode())
    plot(res, path.with_name(path.stem + "_fd_vs_aa.png"))


def main():
    args = args_parser().parse_args()
    if not (args.model / "trustdiff.json").is_file():
        sys.exit(f"{args.model}: no diffusion model; run python bench/train_digits.py --steps 2523 --skip-fd first")
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        sys.exit(f"--parts: expected some of {','.join(PARTS)}, got {args.parts}")
    torch.manual_seed(args.seed)
    res = json.loads(args.json.read_text()) if args.json.is_file() else {}
    res["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    res.setdefault("parts", {})
    cond_fp = fingerprint(load_model(args.model)[0])
    for part in parts:
        t = time.perf_counter()
        if part == "cond":      # uses only the unconditional model and the labeller, so keyed on those two
            unc_dir = unconditional_model(args)
            x_tr, y_tr = load("digits", resolution=16, split="train", seed=0).tensors()
            labeller = reuse_or_train(args.classifier.parent.parent, args.classifier.name, x_tr, y_tr, noise_sigma=0.0,
                                      args=argparse.Namespace(classifier_steps=1500, width=32, seed=0)).eval()
            want = fingerprint(load_model(unc_dir)[0], labeller)
        elif part == "paired":  # every model of the three parts: the conditional one's and the cond part's
            if any(k not in res["parts"] for k in ("steps", "cond", "augment")):
                sys.exit("--parts paired: needs the steps, cond and augment parts first")
            want = f"{cond_fp}+{res['parts']['cond']['models']}"
        else:
            want = cond_fp
        if res["parts"].get(part, {}).get("models") == want:
            print(f"[{part}] kept (same models)")
            continue
        if part == "steps":
            out = sweep(args, args.model, args.out / "cond")
        elif part == "cond":
            out = sweep(args, unc_dir, args.out / "uncond", labeller)
        elif part == "paired":
            out = paired_part(args, res)
        else:
            if res["parts"].get("steps", {}).get("models") != cond_fp:
                sys.exit("--parts augment: needs the steps part of this conditional model first")
            out = augment_part(args, res["parts"]["steps"])
        res["parts"][part] = out | {"models": want, "seconds": time.perf_counter() - t,
                                    "ran": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "threads": torch.get_num_threads()}
        res["claims"] = claims(res)
        write(res, args.json)
    res["claims"] = claims(res)
    write(res, args.json)
    print(summary_markdown(res))


if __name__ == "__main__":
    main()

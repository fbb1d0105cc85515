"""Bench: DiffPure on digits under attacks that cannot fool themselves (Nie et al. 2022; Lee & Kim 2023).

At 16×16, on --images test images (seeded selection), with the standard classifier of the
certification bench and the diffusion model of the training bench:
  (a) undefended:   PGD (CE, 40 steps, L∞ and L2) and AutoAttack standard;
  (b) DiffPure at each t* in --t-stars (the reverse SDE, --solver/--steps): full-gradient PGD-EOT
      (--pgd-steps ≥ 20, --eot ≥ 8, gradients through every solver step) in L∞ and L2, and
      AutoAttack-rand (APGD-CE + APGD-DLR with EOT 20) on the first --aa-images, next to PGD-EOT
      on the same images, with the worst case per example over both;
  (c) DiffPure under BPDA at each t* in --bpda-t-stars (identity gradient through the purifier,
      same steps and EOT): the weaker attack that made purification look robust;
  (d) the cost question: at --cost-t-star, clean / PGD-EOT L∞ accuracy and seconds per image for
      each purifier in --cost-solvers (solver:steps), on the first --cost-images.
Every accuracy carries n and its exact 95% interval, and every evaluation runs the soundness
checks of trustdiff.attacks.evaluate; a failed check marks that row unreliable.

Budgets: L∞ ε = 0.1 and L2 ε = 1.0 in [0, 1] pixels, of similar strength by measurement: PGD-40
(CE) leaves the undefended classifier 0.10 of these 128 images at L∞ 0.1 and 0.09 at L2 1.0 (at
L2 0.5: 0.72, like L∞ 0.05: 0.76). For 16×16 = 256 pixels the L∞ ball holds L2 vectors up to
0.1·√256 = 1.6.

    python bench/purify_digits.py [--images 64] [--t-stars 0.05,0.1,0.2] [--solver sde --steps 5]

Sizes: a full-gradient PGD-EOT attack through a 5-step purifier costs 20 steps × 8 EOT passes
× 5 denoiser forward+backward passes per image (16 ms per image and pass at batch 128 on 2 CPU
cores), before the soundness checks (which rerun attacks at ε/2, ε = ∞ and 2× steps on --n-check
images). AutoAttack-rand costs 25× more per image (100 iterations × EOT 20 per APGD run, and
small batches run slower), so it runs on a subset, and its rerun checks (ε/2) are skipped and
listed as such; the PGD-EOT rows check the same defense. The cost table's attacks skip their
rerun checks likewise. The defaults fit ≈ 80 minutes; the attacks are never weakened to fit,
only the sample shrinks, and every interval says so.

Writes bench/results/purify_digits.json and a Markdown table next to it. Needs the training
bench's model (python bench/train_digits.py) and reuses or trains the standard classifier.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_digits import classifier as reuse_or_train  # noqa: E402  (one trainer of the bench classifier)

from trustdiff.attacks import autoattack_attack, bpda_attack, evaluate, pgd_attack, to_markdown
from trustdiff.persist import atomic_write_bytes, atomic_write_json
from trustdiff.data import load
from trustdiff.diffusion.model import load_model
from trustdiff.metrics import proportion
from trustdiff.purify import PurifiedClassifier, nfe


def select(n: int, total: int, seed: int) -> torch.Tensor:
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def models(args):
    """The bench's inputs → (x, y, indices, classifier, denoiser): --images test digits (16×16) by
    the seeded selection, the standard classifier at --classifier (reused, or trained as the
    certification bench trains it) and the diffusion model at --denoiser, both frozen."""
    x_all, y_all = load("digits", resolution=16, split="test", seed=0).tensors()
    idx = select(args.images, len(x_all), args.seed)
    x_tr, y_tr = load("digits", resolution=16, split="train", seed=0).tensors()
    clf_args = argparse.Namespace(classifier_steps=1500, width=32, seed=0)   # the certification bench's defaults
    clf = reuse_or_train(args.classifier.parent.parent, args.classifier.name, x_tr, y_tr, noise_sigma=0.0,
                         args=clf_args).eval().requires_grad_(False)
    den, _ = load_model(args.denoiser)
    return x_all[idx], y_all[idx], idx, clf, den.eval().requires_grad_(False)


def timed(name: str, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"[{name}] {dt:.0f} s")
    return out, dt


def attacks_for(args, *, randomized: bool, l2: bool = True) -> list:
    eot = args.eot if randomized else 1
    steps = args.pgd_steps if randomized else args.undefended_steps
    return [pgd_attack(eps=args.eps_linf, norm="linf", steps=steps, eot=eot)] + (
        [pgd_attack(eps=args.eps_l2, norm="l2", steps=steps, eot=eot)] if l2 else [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", type=Path, default=Path("bench/results/train_digits/train/model"))
    ap.add_argument("--classifier", type=Path, default=Path("bench/results/certify_digits/train/standard"))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--t-stars", default="0.05,0.1,0.2")
    ap.add_argument("--l2-t-stars", default="0.1", help="t* values also attacked in L2")
    ap.add_argument("--bpda-t-stars", default="0.1", help="t* values also attacked with BPDA")
    ap.add_argument("--solver", default="sde")
    ap.add_argument("--steps", type=int, default=5, help="reverse solver steps of the headline purifier")
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--eps-l2", type=float, default=1.0)
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--undefended-steps", type=int, default=40)
    ap.add_argument("--eot", type=int, default=8)
    ap.add_argument("--aa-images", type=int, default=8)
    ap.add_argument("--aa-t-star", type=float, default=0.1)
    ap.add_argument("--cost-t-star", type=float, default=0.1)
    ap.add_argument("--cost-solvers", default="sde:100,sde:20,sde:10,sde:5,ddpm:5,ode:3")
    ap.add_argument("--cost-images", type=int, default=32)
    ap.add_argument("--cost-robust-max-nfe", type=int, default=10,
                    help="attack purifiers up to this NFE in the cost table; costlier ones report clean accuracy and time only")
    ap.add_argument("--n-check", type=int, default=16, help="images the expensive soundness checks use")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="undefended,diffpure,autoattack,cost",
                    help="the parts to run (a rerun of some parts keeps the others' results in --json)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/purify_digits.json"))
    args = ap.parse_args()
    if not (args.denoiser / "trustdiff.json").is_file() and not (args.denoiser / "model" / "trustdiff.json").is_file():
        sys.exit(f"{args.denoiser}: no diffusion model; run python bench/train_digits.py first (or pass --denoiser)")
    torch.manual_seed(args.seed)
    x, y, idx, clf, den = models(args)
    common = dict(seed=args.seed, batch_size=args.batch, n_check=args.n_check)
    results = {"config": vars(args) | {"denoiser": str(args.denoiser), "classifier": str(args.classifier),
                                       "json": str(args.json), "indices": idx.tolist(), "torch_threads": torch.get_num_threads()},
               "undefended": {}, "diffpure": {}, "bpda": {}, "autoattack_rand": {}, "cost": []}
    parts = set(args.parts.split(","))
    if args.json.is_file() and parts != {"undefended", "diffpure", "autoattack", "cost"}:
        kept = json.loads(args.json.read_text())
        results["part_seconds"] = kept.get("part_seconds", {})
        for key, part in (("undefended", "undefended"), ("diffpure", "diffpure"), ("bpda", "diffpure"),
                          ("autoattack_rand", "autoattack"), ("cost", "cost")):
            if part not in parts and key in kept:
                results[key] = kept[key]

    results["part_seconds"] = {k: v for k, v in results.get("part_seconds", {}).items() if k not in parts}
    for part, run in (("undefended", lambda: undefended(results, clf, x, y, args, common)),
                      ("diffpure", lambda: diffpure(results, clf, den, x, y, args, common)),
                      ("autoattack", lambda: autoattack_rand(results, clf, den, x, y, args, common)),
                      ("cost", lambda: cost(results, clf, den, x, y, args, common))):
        if part in parts:
            _, results["part_seconds"][part] = timed(f"part {part}", run)
    results["seconds"] = sum(results["part_seconds"].values())   # all parts, also those of an earlier run
    write(results, args.json)
    print(summary_markdown(results))


def undefended(results, clf, x, y, args, common):
    attacks = attacks_for(args, randomized=False) + [autoattack_attack(eps=args.eps_linf, norm="linf", version="standard"),
                                                     autoattack_attack(eps=args.eps_l2, norm="l2", version="standard")]
    results["undefended"], dt = timed("undefended", lambda: evaluate(clf, x, y, attacks, **common))
    results["undefended"]["seconds"] = dt
    write(results, args.json)


def diffpure(results, clf, den, x, y, args, common):
    # (b) DiffPure, full-gradient PGD-EOT; (c) BPDA
    l2_t = {str(float(t)) for t in args.l2_t_stars.split(",") if t}
    bpda_t = {str(float(t)) for t in args.bpda_t_stars.split(",") if t}
    for t_star in [float(t) for t in args.t_stars.split(",")]:
        f = PurifiedClassifier(clf, den, t_star, solver=args.solver, steps=args.steps)
        rep, dt = timed(f"diffpure t*={t_star} PGD-EOT", lambda: evaluate(f, x, y, attacks_for(args, randomized=True, l2=str(t_star) in l2_t), **common))
        results["diffpure"][str(t_star)] = rep | {"seconds": dt, "purifier": f.config}
        write(results, args.json)
        if str(t_star) not in bpda_t:
            continue
        bpda = [bpda_attack(f.purify, eps=args.eps_linf, norm="linf", steps=args.pgd_steps, eot=args.eot)]
        rep, dt = timed(f"diffpure t*={t_star} BPDA", lambda: evaluate(f, x, y, bpda, **common))
        results["bpda"][str(t_star)] = rep | {"seconds": dt, "purifier": f.config}
        write(results, args.json)


def autoattack_rand(results, clf, den, x, y, args, common):
    # AutoAttack-rand on a subset, next to PGD-EOT on the same images; AutoAttack is not rerun at
    # ε/2 (the PGD-EOT attack's checks cover the defense), which the report lists as skipped
    f = PurifiedClassifier(clf, den, args.aa_t_star, solver=args.solver, steps=args.steps)
    n_aa = min(args.aa_images, len(x))
    aa = [pgd_attack(eps=args.eps_linf, norm="linf", steps=args.pgd_steps, eot=args.eot),
          autoattack_attack(eps=args.eps_linf, norm="linf", version="rand", rerun_checks=False)]
    rep, dt = timed("diffpure AutoAttack-rand", lambda: evaluate(f, x[:n_aa], y[:n_aa], aa, **common))
    results["autoattack_rand"][str(args.aa_t_star)] = rep | {"seconds": dt, "purifier": f.config}
    write(results, args.json)


def cost(results, clf, den, x, y, args, common):
    # (d) the cost question
    n_c = min(args.cost_images, len(x))
    for item in args.cost_solvers.split(","):
        solver, steps = item.split(":")
        f = PurifiedClassifier(clf, den, args.cost_t_star, solver=solver, steps=int(steps))
        with torch.no_grad():
            t = time.perf_counter()
            clean = (f(x[:n_c]).argmax(1) == y[:n_c]).sum().item()
            sec = (time.perf_counter() - t) / n_c
        entry = {"solver": solver, "steps": int(steps), "nfe": nfe(solver, int(steps)), "seconds_per_image": sec,
                 "clean_correct": clean, "n": n_c}
        if entry["nfe"] <= args.cost_robust_max_nfe:
            atk = [pgd_attack(eps=args.eps_linf, norm="linf", steps=args.pgd_steps, eot=args.eot, rerun_checks=False)]
            rep, dt = timed(f"cost {item}", lambda: evaluate(f, x[:n_c], y[:n_c], atk, **common))
            entry |= {"report": rep, "attack_seconds_per_image": dt / n_c}
        results["cost"].append(entry)
        write(results, args.json)


def write(results: dict, path: Path) -> None:
    atomic_write_json(path, results)
    atomic_write_bytes(path.with_suffix(".md"), summary_markdown(results).encode())


def compact_table(results: dict) -> str:
    """One row per (defense, attack): the table the README shows."""
    lines = ["| defense | clean | attack | ε | robust accuracy [95% CI] | n | checks |", "|---|---|---|---|---|---|---|"]

    def rows(defense: str, rep: dict):
        verdict = "reliable" if rep["reliable"] else "UNRELIABLE"
        skipped = sum(bool(c.get("skipped")) for c in rep["checks"])
        verdict += f" ({skipped} skipped)" if skipped else ""
        for a in rep["attacks"]:
            lines.append(f"| {defense} | {_fmt(rep['clean'])} | {a['name']} | {a['eps']:g} | {_fmt(a['robust'])} | {rep['n']} | {verdict} |")
        if len(rep["attacks"]) > 1:
            lines.append(f"| {defense} | | worst case | | {_fmt(rep['worst_case'])} | {rep['n']} | |")

    if results.get("undefended"):
        rows("none", results["undefended"])
    for key in ("diffpure", "bpda", "autoattack_rand"):
        for t_star, rep in results.get(key, {}).items():
            rows(f"DiffPure t*={t_star} ({rep['purifier']['solver']}×{rep['purifier']['steps']})", rep)
    return "\n".join(lines) + "\n"


def summary_markdown(results: dict) -> str:
    parts = ["# DiffPure on digits\n", f"Total: {results.get('seconds', 0) / 60:.1f} min "
             f"({', '.join(f'{k} {v / 60:.1f}' for k, v in results.get('part_seconds', {}).items())}).\n",
             compact_table(results)]
    if results.get("undefended"):
        parts += ["## (a) undefended\n", to_markdown(results["undefended"])]
    for key, title in (("diffpure", "(b) DiffPure, full-gradient PGD-EOT"), ("bpda", "(c) DiffPure under BPDA"),
                       ("autoattack_rand", "(b) DiffPure, AutoAttack-rand")):
        for t_star, rep in results.get(key, {}).items():
            parts += [f"## {title}, t* = {t_star} ({rep['purifier']['solver']}, {rep['purifier']['steps']} steps)\n", to_markdown(rep)]
    if results.get("cost"):
        parts += ["## (d) purifier cost\n", cost_markdown(results["cost"])]
    return "\n".join(parts)


def cost_markdown(rows: list[dict]) -> str:
    """The cost table: one row per purifier, clean and PGD-EOT accuracy with intervals, seconds per image."""
    lines = ["| solver | steps | NFE | purify + classify s/image | clean [95% CI] | PGD-EOT L∞ [95% CI] | n | attack s/image | checks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        clean = proportion(r["clean_correct"], r["n"])
        rep = r.get("report")
        robust = _fmt(rep["attacks"][0]["robust"]) if rep else "not attacked (NFE above the limit)"
        checks = ("reliable" if rep["reliable"] else "UNRELIABLE") + " (reruns skipped)" if rep else "–"
        attack_s = f"{r['attack_seconds_per_image']:.2f}" if rep else "–"
        lines.append(f"| {r['solver']} | {r['steps']} | {r['nfe']} | {r['seconds_per_image']:.4f} | {_fmt(clean)} | {robust} "
                     f"| {r['n']} | {attack_s} | {checks} |")
    return "\n".join(lines) + "\n"


def _fmt(p: dict) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


if __name__ == "__main__":
    main()

"""Bench: DiffPure scored the way an attacker uses it, and the purification cost frontier (issue 23).

On --images test digits (16×16; the purify bench's seeded selection), with the purify bench's
classifier and diffusion model, L∞ ε = 0.1, every defense attacked by full-gradient PGD-20 EOT-8
(CE, most-fooled iterate: trustdiff.attacks.pgd) with the soundness checks of
trustdiff.attacks.evaluate, and scored under the three protocols of trustdiff.attacks.protocols:
one evaluation, worst of --n-evals passes (with the expected accuracy over them) and fixed
randomness (the noise seed known to the attacker: attacked without EOT, scored with that draw).

  protocols  DiffPure as the purify bench runs it (reverse SDE, 5 steps) at each t* in --t-stars;
  frontier   at --frontier-t-star: one-shot denoising at σ(t*) (1 step: Carlini et al. 2023's
             one-step denoiser as a purifier), the SDE with --sde-steps steps, the probability-flow
             ODE (Heun, --ode-steps), and the vote of K one-shot purifications (K in --votes);
             robust accuracy per protocol against denoiser evaluations per prediction (NFE) and
             seconds per attacked image. Purifiers above --check-max-nfe NFE skip the checks that
             rerun their attack (ε/2, 2× steps, ε = 1), and their rows say so; the attack itself is
             never weakened.

Each configuration is one part, cached in --json with a fingerprint of both models' weights: a
rerun runs only the missing parts (or those given by --parts), and a part measured on other
weights is run again. Ratios are to DiffPure (SDE × 5) at the same t*, measured in the same run
or in a kept part on the same weights.

    python bench/train_digits.py --steps 2523 --skip-fd      # the purify bench's diffusion model
    python bench/purify_protocols_digits.py [--images 128] [--parts protocols-0.1,sde-1]

Writes bench/results/purify_protocols_digits.{json,md} and the frontier plot.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from purify_digits import models  # noqa: E402  (the purify bench's images, classifier and diffusion model)

from trustdiff.attacks import evaluate, pgd_attack, to_markdown  # noqa: E402
from trustdiff.persist import atomic_write_bytes, atomic_write_json  # noqa: E402
from trustdiff.purify import PurifiedClassifier  # noqa: E402

PROTOCOL_KEYS = (("one evaluation", "worst_case"), ("worst of N", "worst_case_of_n"), ("expected over N", "worst_case_expected"))


def fingerprint(*models) -> str:
    """sha256 over every model's parameters and buffers, in name order."""
    h = hashlib.sha256()
    for m in models:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def configurations(args) -> list[dict]:
    """Every part: its name, t*, solver, steps and votes."""
    parts = [{"part": f"protocols-{t}", "t_star": t, "solver": "sde", "steps": 5, "votes": 1}
             for t in (float(v) for v in args.t_stars.split(","))]
    t = args.frontier_t_star
    for s in (int(v) for v in args.sde_steps.split(",")):
        if not any(p["t_star"] == t and p["steps"] == s and p["solver"] == "sde" for p in parts):
            parts.append({"part": f"sde-{s}", "t_star": t, "solver": "sde", "steps": s, "votes": 1})
    parts.append({"part": f"ode-{args.ode_steps}", "t_star": t, "solver": "ode", "steps": args.ode_steps, "votes": 1})
    for k in (int(v) for v in args.votes.split(",")):
        if k > 1:                                           # K = 1 is the one-shot row (sde-1)
            parts.append({"part": f"vote-{k}", "t_star": t, "solver": "sde", "steps": 1, "votes": k})
    return parts


def run_part(cfg: dict, clf, den, x, y, args) -> dict:
    f = PurifiedClassifier(clf, den, cfg["t_star"], solver=cfg["solver"], steps=cfg["steps"], votes=cfg["votes"])
    checked = f.config["nfe"] <= args.check_max_nfe
    atk = pgd_attack(args.eps, "linf", args.pgd_steps, eot=args.eot, select="most_fooled", rerun_checks=checked)
    t = time.perf_counter()
    rep = evaluate(f, x, y, [atk], seed=args.seed, batch_size=args.batch, n_check=args.n_check, n_evals=args.n_evals,
                   fixed=True)
    return {**cfg, "purifier": f.config, "report": rep, "seconds": time.perf_counter() - t,
            "attack_seconds_per_image": rep["attacks"][0]["seconds"] / len(x), "rerun_checks": checked}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", type=Path, default=Path("bench/results/train_digits/train/model"))
    ap.add_argument("--classifier", type=Path, default=Path("bench/results/certify_digits/train/standard"))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--t-stars", default="0.05,0.1", help="t* of the protocols parts (DiffPure, SDE × 5)")
    ap.add_argument("--frontier-t-star", type=float, default=0.1)
    ap.add_argument("--sde-steps", default="1,2,5,10,20")
    ap.add_argument("--ode-steps", type=int, default=3, help="Heun steps of the ODE purifier (NFE 2·steps − 1)")
    ap.add_argument("--votes", default="1,4,16", help="K of the vote over one-shot purifications")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--eot", type=int, default=8)
    ap.add_argument("--n-evals", type=int, default=10)
    ap.add_argument("--n-check", type=int, default=16, help="images the expensive soundness checks use")
    ap.add_argument("--check-max-nfe", type=int, default=10,
                    help="purifiers above this NFE skip the checks that rerun their attack")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="missing", help='comma-separated part names, "all" or "missing"')
    ap.add_argument("--json", type=Path, default=Path("bench/results/purify_protocols_digits.json"))
    args = ap.parse_args()
    if not (args.denoiser / "trustdiff.json").is_file():
        sys.exit(f"{args.denoiser}: no diffusion model; run python bench/train_digits.py --steps 2523 --skip-fd first "
                 "(or pass --denoiser)")
    torch.manual_seed(args.seed)
    x, y, idx, clf, den = models(args)
    fp = fingerprint(clf, den)
    print(f"models {fp[:16]}; {len(x)} images; {torch.get_num_threads()} threads")

    kept = json.loads(args.json.read_text()) if args.json.is_file() else {}
    done = {p["part"]: p for p in kept.get("parts", []) if p.get("models") == fp and p.get("images") == len(x)}
    cfgs = configurations(args)
    names = {c["part"] for c in cfgs}
    todo = (names - set(done) if args.parts == "missing" else names if args.parts == "all"
            else set(args.parts.split(",")))
    if todo - names:
        sys.exit(f"--parts: expected names among {sorted(names)}, got {sorted(todo - names)}")
    results = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "indices": idx.tolist(), "models": fp, "parts": []}
    for cfg in cfgs:
        if cfg["part"] in todo:
            print(f"[{cfg['part']}] t* {cfg['t_star']} {cfg['solver']} × {cfg['steps']}, {cfg['votes']} vote(s) ...",
                  flush=True)
            part = run_part(cfg, clf, den, x, y, args) | {"models": fp, "images": len(x), "threads": torch.get_num_threads(),
                                                         "ran": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            print(f"[{cfg['part']}] {part['seconds']:.0f} s: " + row_text(part), flush=True)
        elif cfg["part"] in done:
            part = done[cfg["part"]]
        else:
            continue
        results["parts"] = [p for p in results["parts"] if p["part"] != cfg["part"]] + [part]
        write(results, args.json)
    write(results, args.json)
    print(summary_markdown(results))


def row_text(p: dict) -> str:
    r = p["report"]
    return ", ".join(f"{name} {r[key]['value']:.3f}" for name, key in PROTOCOL_KEYS) + (
        f", fixed randomness {r['fixed']['worst_case']['value']:.3f}" if r.get("fixed") else "") + (
        f"; {'reliable' if r['reliable'] else 'UNRELIABLE'}")


def baseline(parts: list[dict], t_star: float) -> dict | None:
    return next((p for p in parts if p["t_star"] == t_star and p["solver"] == "sde" and p["steps"] == 5
                 and p["votes"] == 1), None)


def _fmt(p: dict) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def summary_markdown(results: dict) -> str:
    parts = results["parts"]
    n_ev = results["config"]["n_evals"]
    lines = [f"# DiffPure protocols and the purification cost frontier (digits 16×16, L∞ ε = {results['config']['eps']})\n",
             f"Attack: PGD-{results['config']['pgd_steps']} CE EOT-{results['config']['eot']}, most-fooled iterate, "
             f"full gradient through the purifier; worst of {n_ev} passes; fixed randomness: the defense's noise seed "
             f"known to the attacker, attacked without EOT. Models {results['models'][:16]}. Intervals: Clopper–Pearson "
             "95% (expected: Hoeffding 95%).\n",
             f"| part | t* | purifier | NFE | clean | one evaluation | worst of {n_ev} | expected over {n_ev} | "
             "fixed randomness | s / attacked image | × DiffPure (SDE × 5) s | checks | n |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in parts:
        r, base = p["report"], baseline(parts, p["t_star"])
        ratio = f"{p['attack_seconds_per_image'] / base['attack_seconds_per_image']:.2f}" if base else "–"
        verdict = ("reliable" if r["reliable"] else "UNRELIABLE") + ("" if p["rerun_checks"] else " (reruns skipped)")
        fixed = _fmt(r["fixed"]["worst_case"]) if r.get("fixed") else "–"
        what = f"{p['solver']} × {p['steps']}" + (f", vote of {p['votes']}" if p["votes"] > 1 else "")
        lines.append(f"| {p['part']} | {p['t_star']} | {what} | {p['purifier']['nfe']} | {_fmt(r['clean'])} | "
                     f"{_fmt(r['worst_case'])} | {_fmt(r['worst_case_of_n'])} | {_fmt(r['worst_case_expected'])} | {fixed} | "
                     f"{p['attack_seconds_per_image']:.2f} | {ratio} | {verdict} | {r['n']} |")
    lines.append("")
    total = sum(p["seconds"] for p in parts)
    lines.append(f"Parts' seconds sum to {total / 60:.1f} min (" + ", ".join(f"{p['part']} {p['seconds'] / 60:.1f} "
                                                                           f"on {p['ran']}" for p in parts) + ").\n")
    for p in parts:
        lines += [f"## {p['part']}\n", to_markdown(p["report"])]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Robust accuracy against NFE per prediction, one line per protocol, frontier parts only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results["config"]["frontier_t_star"]
    rows = sorted((p for p in results["parts"] if p["t_star"] == t), key=lambda p: p["purifier"]["nfe"])
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, key) in enumerate(PROTOCOL_KEYS + (("fixed randomness", None),)):
        pts = [(p["purifier"]["nfe"] * (1 + 0.04 * i), p["report"]["fixed"]["worst_case"] if key is None else p["report"][key])
               for p in rows if key is not None or p["report"].get("fixed")]
        # points, not lines: the purifiers are different families (SDE steps, ODE, votes), not one curve
        ax.errorbar([a for a, _ in pts], [v["value"] for _, v in pts],
                    yerr=[[v["value"] - v["lo"] for _, v in pts], [v["hi"] - v["value"] for _, v in pts]],
                    marker="o", linestyle="none", capsize=2, label=name)
    for p in rows:
        ax.annotate(p["part"], (p["purifier"]["nfe"], p["report"]["worst_case"]["value"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("denoiser evaluations per prediction (NFE)")
    ax.set_ylabel("robust accuracy")
    ax.set_title(f"DiffPure on digits, t* = {t}, L∞ ε = {results['config']['eps']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: dict, path: Path) -> None:
    atomic_write_json(path, results)
    atomic_write_bytes(path.with_suffix(".md"), summary_markdown(results).encode())
    plot(results, path.with_name(path.stem + "_frontier.png"))


if __name__ == "__main__":
    main()

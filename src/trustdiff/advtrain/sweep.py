"""Does generator quality predict robustness? A sweep over the generator's sampling steps, as Wang
et al. (2023, Table 4) ask it of EDM: fewer steps give a worse FID, and the adversarially trained
classifier's AutoAttack accuracy follows it (57.8% → 63.4% as FID falls from ~35 to ~1.8), then both
flatten.

For each step count k, under ``out/steps-k/``:
  generated/   n images sampled with k steps, from the same seeds in every row (pseudo-labelled by
               a classifier when the model is unconditional: :func:`.generated.write_pseudo_labelled`);
  fd           FD of that set against the test split, with the train–test floor, one feature net
               for every row (:func:`trustdiff.train.feature_net.fd_report`);
  train/       adversarial training on real + that set, the same job for every row;
  eval.json    clean, PGD-40 and AutoAttack accuracy of its best network (exact intervals, checks).
Then Spearman's ρ between FD and AutoAttack accuracy over the rows, with its interval and exact
permutation p-value (:func:`trustdiff.metrics.rank_correlation`). Every part is kept on disk and
skipped when it is there, so a killed sweep resumes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from ..checkpoint import latest_checkpoint
from ..errors import InputError
from ..persist import atomic_write_json
from .generated import generate_set, load_generated, write_pseudo_labelled
from .training import AdvTrainJob, train_adv


def _attack(report: dict, prefix: str) -> dict | None:
    return next((a["robust"] for a in report["attacks"] if a["name"].startswith(prefix)), None)


def sweep_row(k: int, gen_dir: Path, fd: dict, ev: dict, nfe: int) -> dict:
    rep = ev["models"]["best"]["report"]
    return {"steps": k, "nfe": nfe, "fd": fd["fd"], "fd_floor": fd["fd_floor"], "fd_ratio": fd["fd_ratio"],
            "fd_name": fd["fd_name"], "n_generated": fd["n_fake"], "clean": rep["clean"], "pgd40": _attack(rep, "PGD-40"),
            "autoattack": _attack(rep, "AutoAttack"), "worst_case": rep["worst_case"], "reliable": rep["reliable"],
            "best_epoch": ev["models"]["best"]["epoch"], "generated": str(gen_dir)}


def steps_sweep(model_dir, out, steps: list[int], *, n: int, job: AdvTrainJob, sampler: str = "heun",
                labeller=None, labeller_name: str = "", min_confidence: float = 0.0, test_images: int | None = None,
                autoattack: bool = True, n_check: int = 64, feature_steps: int = 1000, seed: int = 0, device=None,
                precision: str = "fp32", allow_pickle: bool = False, progress=print) -> dict:
    """Run (or resume) the sweep; returns and writes ``out/metrics.json``."""
    from ..data import load as load_data
    from ..diffusion.samplers import nfe
    from ..train.feature_net import fd_report
    from .evaluation import evaluate_run

    if not steps or any(not isinstance(k, int) or k < 1 for k in steps) or len(set(steps)) != len(steps):
        raise InputError(f"sweep steps: expected distinct integers >= 1, got {steps!r}")
    out = Path(out)
    rows = []
    train_set, test_set = (load_data(job.data, resolution=job.resolution, split=s, seed=job.seed) for s in ("train", "test"))
    for k in steps:
        d = out / f"steps-{k}"
        gen_dir = d / "generated"
        progress(f"[steps {k}] generating {n} images ({sampler}, NFE {nfe(sampler, k)})")
        generate_set(model_dir, gen_dir, n, seed=seed, sampler=sampler, steps=k, device=device, precision=precision,
                     allow_pickle=allow_pickle)
        if labeller is not None and not (gen_dir / "labelled.json").is_file():
            write_pseudo_labelled(gen_dir, labeller, min_confidence=min_confidence, classifier_name=labeller_name)
        fd_path = d / "fd.json"
        if not fd_path.is_file():
            x_gen, _ = load_generated(gen_dir)
            atomic_write_json(fd_path, fd_report(train_set, test_set, x_gen, cache_dir=out / "fd-cache",
                                                 feature_steps=feature_steps, device=device))
        fd = json.loads(fd_path.read_text())
        progress(f"[steps {k}] {fd['fd_name']} {fd['fd']:.3f} (floor {fd['fd_floor']:.3f}); training")
        run_dir = d / "train"
        if not (run_dir / "metrics.json").is_file():
            train_adv(replace(job, generated=str(gen_dir), n_generated=None), run_dir,
                      resume=latest_checkpoint(run_dir) is not None, device=device, precision=precision,
                      progress=False)
        ev_path = d / "eval.json"
        if not ev_path.is_file():
            atomic_write_json(ev_path, evaluate_run(run_dir, images=test_images, autoattack=autoattack, n_check=n_check,
                                                    seed=seed, device=device, precision=precision, networks=("best",)))
        rows.append(sweep_row(k, gen_dir, fd, json.loads(ev_path.read_text()), nfe(sampler, k)))
        r = rows[-1]
        progress(f"[steps {k}] clean {r['clean']['value']:.3f}, PGD-40 {r['pgd40']['value']:.3f}"
                 + (f", AutoAttack {r['autoattack']['value']:.3f}" if r["autoattack"] else ""))
    summary = {"model": str(model_dir), "sampler": sampler, "n": n, "labeller": labeller_name or None,
               "min_confidence": min_confidence if labeller is not None else None, "rows": rows,
               "job": {k: v for k, v in asdict(job).items() if k not in ("generated", "n_generated")}}
    key = "autoattack" if all(r["autoattack"] for r in rows) else "pgd40"
    if len(rows) >= 2:
        from ..metrics import rank_correlation

        summary["fd_vs_robust"] = {"robust": key, **rank_correlation([r["fd"] for r in rows], [r[key]["value"] for r in rows])}
    atomic_write_json(out / "metrics.json", summary)
    return summary


def sweep_markdown(s: dict) -> str:
    lines = [f"# Generator sampling steps → FD → robustness ({s['model']}, {s['sampler']}, {s['n']} images per row)\n",
             "| steps | NFE | generated kept | FD | floor | FD / floor | clean | PGD-40 | AutoAttack | checks |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(p):
        return "–" if p is None else f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"

    for r in s["rows"]:
        lines.append(f"| {r['steps']} | {r['nfe']} | {r['n_generated']} | {r['fd']:.3f} | {r['fd_floor']:.3f} | "
                     f"{r['fd_ratio']:.2f} | {f(r['clean'])} | {f(r['pgd40'])} | {f(r['autoattack'])} | "
                     f"{'reliable' if r['reliable'] else 'UNRELIABLE'} |")
    c = s.get("fd_vs_robust")
    if c:
        ci = f"[{c['lo']:.2f}, {c['hi']:.2f}]" if c["lo"] is not None else "(no interval at n ≤ 3 or |ρ| = 1)"
        p = f", exact permutation p = {c['p_exact']:.3f}" if c["p_exact"] is not None else ""
        lines.append(f"\nSpearman ρ(FD, {c['robust']}) = {c['rho']:.2f} {ci} (n = {c['n']} rows{p}); "
                     "negative: a lower FD goes with higher robust accuracy.\n")
    return "\n".join(lines) + "\n"

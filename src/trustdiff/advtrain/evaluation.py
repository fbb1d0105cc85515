"""Evaluation of an adversarial-training run: clean, PGD-40 and AutoAttack (standard) accuracy of
its best and last networks on the test set, through :func:`trustdiff.attacks.evaluate` (exact
intervals, soundness checks), and the best − last gap (robust overfitting, Rice et al. 2020)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..attacks import autoattack_attack, evaluate, pgd_attack, to_markdown
from ..data import load as load_data
from ..errors import InputError
from ..train.classifier import classifier_config, load_classifier


def test_set(data: str, resolution: int, images: int | None, seed: int):
    x, y = load_data(data, resolution=resolution, split="test", seed=seed).tensors()
    if images is not None and images < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:images].sort().values
        x, y = x[idx], y[idx]
    return x, y


def check_run(run_dir) -> dict:
    """The job of a finished ``advtrain train`` run (one InputError line for anything else)."""
    run_dir = Path(run_dir)
    what = f"{run_dir}: expected a finished advtrain train run (metrics.json with its job, best/, last/)"
    try:
        job = json.loads((run_dir / "metrics.json").read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        raise InputError(what) from None
    if not isinstance(job, dict) or not all((run_dir / w / "config.json").is_file() for w in ("best", "last")):
        raise InputError(what)
    return job


def evaluate_run(run_dir, *, data: str | None = None, eps: float | None = None, images: int | None = None,
                 autoattack: bool = True, n_check: int = 64, seed: int = 0, batch_size: int = 256,
                 allow_pickle: bool = False, device=None, precision: str = "fp32",
                 networks: tuple[str, ...] = ("best", "last"), checks: bool = True) -> dict:
    """Clean, PGD-40 and AutoAttack accuracy of the run's ``networks`` (best and last) on ``device``
    (default: the CPU); the test images go there too, so the attacks' generators do as well.
    ``precision="bf16"`` evaluates the networks under autocast (what is attacked is then the
    bf16 network). The result records ``device`` and ``precision``. ``checks=False`` skips the
    soundness checks (to re-score a run whose report already passed them): its reports then
    have ``reliable`` None, not True."""
    from ..runtime import with_precision

    device = torch.device(device) if device is not None else torch.device("cpu")
    run_dir = Path(run_dir)
    job = check_run(run_dir)
    eps = job["eps"] if eps is None else eps
    cfg = classifier_config(run_dir / "last")
    x, y = test_set(data or job["data"], cfg["resolution"], images, seed)
    x, y = x.to(device), y.to(device)
    attacks = [pgd_attack(eps, job["norm"], 40, loss="ce")]
    if autoattack:
        attacks.append(autoattack_attack(eps, job["norm"], "standard"))
    out = {"run": str(run_dir), "eps": eps, "norm": job["norm"], "n": len(x), "models": {}, "device": str(device),
           "precision": precision}
    if not networks or not set(networks) <= {"best", "last"}:
        raise InputError(f"networks: expected some of best, last, got {networks!r}")
    for which in networks:
        net = with_precision(load_classifier(run_dir / which, allow_pickle=allow_pickle).to(device), precision)
        rep = evaluate(net, x, y, attacks, seed=seed, batch_size=batch_size, n_check=n_check, checks=checks)
        out["models"][which] = {"epoch": classifier_config(run_dir / which).get("epoch"), "report": rep}
    if {"best", "last"} <= set(out["models"]):
        b, l = (out["models"][k]["report"] for k in ("best", "last"))
        out["gap"] = {"clean": b["clean"]["value"] - l["clean"]["value"],
                      "worst_case": b["worst_case"]["value"] - l["worst_case"]["value"]}
    return out


def _fmt(p: dict) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def report_markdown(res: dict) -> str:
    first = next(iter(res["models"].values()))["report"]["attacks"]
    head = ["| network | epoch | clean | " + " | ".join(a["name"] for a in first)
            + " | worst case | checks |", "|---" * (5 + len(first)) + "|"]
    rows = []
    for which, m in res["models"].items():
        r = m["report"]
        rows.append(f"| {which} | {m['epoch']} | {_fmt(r['clean'])} | " + " | ".join(_fmt(a["robust"]) for a in r["attacks"])
                    + f" | {_fmt(r['worst_case'])} | {'reliable' if r['reliable'] else 'UNRELIABLE'} |")
    gap = res.get("gap")
    text = [f"# Adversarial training: {res['run']} ({res['norm']} ε = {res['eps']:g}, n = {res['n']})\n", *head, *rows,
            f"\nBest − last: clean {gap['clean']:+.3f}, worst case {gap['worst_case']:+.3f} (robust overfitting).\n"
            if gap else ""]
    for which, m in res["models"].items():
        text += [f"## {which}\n", to_markdown(m["report"])]
    return "\n".join(text)

"""``trustdiff purify eval``: DiffPure against adaptive attacks, with soundness checks."""
from __future__ import annotations

from pathlib import Path

import click

from .common import COUNT, NONNEG, ran_on, run_command, seed_option, unsafe_pickle_option
from .common import MODEL_HELP, adm_config_option, compile_option

ATTACKS = ("pgd-eot", "autoattack-rand", "bpda")
#: rows per forward/backward the default --eot-batch fills: at 16 images, stacking 8 EOT samples (128 rows)
#: made a PGD-EOT-8 step through the 5- and 20-step purifier 1.54x and 1.79x faster than one at a time
#: (bench/throughput.py, 2 CPU cores); at 128 images there is nothing to stack and nothing changes
EOT_ROWS = 128


def default_eot_batch(eot: int, images: int, batch_size: int) -> int:
    """EOT samples per pass that fill at most EOT_ROWS rows: min(eot, EOT_ROWS // rows), at least 1."""
    return max(1, min(eot, EOT_ROWS // max(1, min(images, batch_size))))


@click.group("purify")
def purify_group():
    """Adversarial purification with a diffusion model (DiffPure)."""


@purify_group.command("eval")
@click.option("--classifier", "classifier_dir", type=click.Path(path_type=Path), required=True,
              help="A classifier folder (trustdiff train-classifier's run or its classifier/).")
@click.option("--denoiser", "denoiser_dir", type=click.Path(path_type=Path), required=True,
              help=f"The diffusion model: {MODEL_HELP}.")
@adm_config_option
@click.option("--t-star", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True,
              help="Diffusion time t* in (0, 1].")
@click.option("--solver", type=click.Choice(["sde", "ddpm", "ode", "euler", "ddim"]), default="sde", show_default=True)
@click.option("--sample-steps", "steps", type=COUNT, default=10, show_default=True,
              help="Reverse solver steps (1: one-shot denoising at σ(t*), Carlini et al. 2023's one-step denoiser).")
@click.option("--votes", type=COUNT, default=1, show_default=True,
              help="Purifications per prediction, their class probabilities averaged (K× the cost).")
@click.option("--attack", "attacks", type=click.Choice(ATTACKS), multiple=True, default=("pgd-eot",), show_default=True,
              help="Repeat for several; the worst case per example is reported.")
@click.option("--eps", type=NONNEG, default=0.1, show_default=True, help="Budget in [0, 1] pixels.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--attack-steps", "pgd_steps", type=COUNT, default=20, show_default=True, help="PGD iterations.")
@click.option("--eot", type=COUNT, default=8, show_default=True, help="EOT samples per PGD step.")
@click.option("--eot-batch", type=COUNT, default=None,
              help="EOT samples stacked into one forward/backward (speed only: same expectation, that many times the "
                   f"activation memory); default: enough to fill {EOT_ROWS} rows per pass (bench/throughput.py).")
@click.option("--select", type=click.Choice(["most_fooled", "last"]), default="most_fooled", show_default=True,
              help="The PGD iterate kept per image: the one misclassified by the most EOT passes, or the last.")
@click.option("--n-evals", type=COUNT, default=10, show_default=True,
              help="Passes per adversarial input for the worst-of-N protocol (robust only if all N are correct).")
@click.option("--fixed/--no-fixed", default=True, show_default=True,
              help="Also attack and score the defense with its noise fixed by a seed the attacker knows "
                   "(a second attack run, without EOT).")
@click.option("--data", default="digits", show_default=True, help='"digits" or a data path (its test split).')
@click.option("-n", "--num", "images", type=COUNT, default=128, show_default=True, help="Test images (a seeded selection).")
@click.option("--n-check", type=COUNT, default=32, show_default=True, help="Images the expensive soundness checks use.")
@click.option("--batch", "batch_size", type=COUNT, default=128, show_default=True)
@click.option("--checkpoint/--no-checkpoint", default=False, show_default=True,
              help="Recompute denoiser activations in the backward pass (less memory, ~1.4x time).")
@click.option("--undefended/--no-undefended", default=True, show_default=True,
              help="Also evaluate the classifier alone (PGD without EOT) for comparison.")
@seed_option()
@compile_option
@unsafe_pickle_option
@run_command("purify eval", out="runs/purify")
def eval_cmd(run, classifier_dir, denoiser_dir, adm_config, t_star, solver, steps, votes, attacks, eps, norm, pgd_steps, eot,
             eot_batch, select, n_evals, fixed, data, images, n_check, batch_size, checkpoint, undefended, seed, compile_nets,
             allow_pickle, out):
    """Clean and robust accuracy of classifier ∘ DiffPure under full-gradient PGD-EOT,
    AutoAttack-rand and/or BPDA, scored by one evaluation, worst of N and with fixed randomness;
    writes OUT/metrics.json and OUT/report.md."""
    import torch

    from ..attacks import autoattack_attack, bpda_attack, evaluate, pgd_attack, to_markdown
    from ..persist import atomic_write_bytes, atomic_write_json
    from ..data import load
    from ..diffusion.model import load_model
    from ..diffusion.precond import compile_backbone
    from ..errors import InputError
    from ..purify import PurifiedClassifier
    from ..runtime import compile_network, with_precision
    from ..train.classifier import load_classifier

    if compile_nets and run.precision == "bf16":
        raise InputError("--compile with --precision bf16: expected one of the two; the compiled bf16 denoiser's input "
                         "gradient has cosine 0.74-0.83 to fp32's (bench/throughput.py), which would weaken the attack")
    if eot_batch is None:
        eot_batch = default_eot_batch(eot, images, batch_size)
    config = dict(classifier=classifier_dir, denoiser=denoiser_dir, adm_config=adm_config, t_star=t_star, solver=solver, steps=steps,
                  votes=votes, attacks=list(attacks), eps=eps, norm=norm, pgd_steps=pgd_steps, eot=eot, eot_batch=eot_batch,
                  select=select, n_evals=n_evals, fixed=fixed, data=data, images=images, n_check=n_check,
                  batch_size=batch_size, checkpoint=checkpoint, undefended=undefended, seed=seed, compile=compile_nets)
    clf = load_classifier(classifier_dir, allow_pickle=allow_pickle).eval().requires_grad_(False).to(run.device)
    den, spec = load_model(denoiser_dir, allow_pickle=allow_pickle, adm_config=adm_config)
    den = den.to(run.device)
    if compile_nets:                # the networks, not the purifier: its solver takes σ as Python floats
        compile_network(clf)
        compile_backbone(den)
    # bf16: the networks run under autocast, the purifier's solver state stays fp32
    clf_p, den_p = with_precision(clf, run.precision), with_precision(den, run.precision)
    defense = PurifiedClassifier(clf_p, den_p, t_star, solver=solver, steps=steps, checkpoint=checkpoint, votes=votes)
    res = clf.config["resolution"]
    if spec.resolution != res:
        raise InputError(f"--denoiser: expected a model at the classifier's resolution {res}, got {spec.resolution}")
    test = load(data, resolution=res, split="test", seed=seed)
    x, y = test.tensors()
    if x.shape[1] != clf.config["in_channels"]:
        raise InputError(f"{data}: {x.shape[1]}-channel images, but the classifier takes {clf.config['in_channels']}")
    if not run.start(config):
        return
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:images].sort().values
    x, y = x[idx].to(run.device), y[idx].to(run.device)     # the same selection on every device
    chosen = {"pgd-eot": lambda: pgd_attack(eps, norm, pgd_steps, eot=eot, eot_batch=eot_batch, select=select),
              "autoattack-rand": lambda: autoattack_attack(eps, norm, "rand"),
              "bpda": lambda: bpda_attack(defense.purify, eps, norm, pgd_steps, eot=eot, eot_batch=eot_batch, select=select)}
    common = dict(seed=seed, batch_size=batch_size, n_check=n_check)
    metrics = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
               "purifier": defense.config, "indices": idx.tolist(), "device": ran_on(clf, den, x),
               "precision": run.precision}
    md = [f"# DiffPure evaluation: t* = {t_star}, {solver} × {steps}, {norm} ε = {eps}\n"]
    if undefended:
        metrics["undefended"] = evaluate(clf_p, x, y, [pgd_attack(eps, norm, 2 * pgd_steps)], **common)
        md += ["## Undefended classifier\n", to_markdown(metrics["undefended"])]
    metrics["diffpure"] = evaluate(defense, x, y, [chosen[a]() for a in attacks], n_evals=n_evals, fixed=fixed, **common)
    md += ["## DiffPure\n", to_markdown(metrics["diffpure"])]
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    d = metrics["diffpure"]
    click.echo(f"DiffPure: clean {d['clean']['value']:.3f}, worst-case robust {_protocols_line(d)} (n={d['n']}); "
               f"{'reliable' if d['reliable'] else 'UNRELIABLE: ' + '; '.join(d['unreliable_reasons'])}; "
               f"written to {out}")


def _protocols_line(d: dict) -> str:
    """The worst case over attacks under each protocol the report has, with intervals."""
    def f(p):
        return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"

    parts = [f"one evaluation {f(d['worst_case'])}"]
    if "n_evals" in d:
        parts.append(f"worst of {d['n_evals']} {f(d['worst_case_of_n'])}")
    if d.get("fixed"):
        parts.append(f"fixed randomness {f(d['fixed']['worst_case'])}")
    return ", ".join(parts)


COMMANDS = [purify_group]

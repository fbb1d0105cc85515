"""Robust accuracy with soundness checks (Carlini et al. 2019, *On Evaluating Adversarial
Robustness*; Tramèr et al. 2020): a result whose checks fail is marked unreliable in the output.

Scoring: an example counts as robust to an attack when the model classifies it correctly both
clean and at the adversarial point; worst case: correct clean and at every attack's point. A
randomized model is scored with one fresh forward pass per input (the accuracy a user of the
defense sees); that is stated in the output. Every rate is ``proportion(k, n)``: n and an exact
95% interval.

Checks (the expensive ones on the first ``n_check`` examples):
  eps0         the attack at ε = 0 reproduces clean accuracy (exactly, or within the 95%
               intervals for a randomized model);
  monotone     accuracy at ε is not above accuracy at ε/2 (beyond the intervals if randomized);
  unbounded    PGD with ε = 1 (L∞) or √d (L2) leaves at most 10% of the examples correct;
  randomness   two identical calls differ ⇒ randomized ⇒ every attack must use EOT > 1;
  gradients    ∇ₓ CE is finite and non-zero for ≥ 95% of examples;
  bounds       every x_adv is within ε (+1e-5) of x and within [0, 1];
  convergence  twice the steps lowers robust accuracy by at most max(steps_margin, 2/n_check),
               or the worst case over all attacks is already at or below the doubled-steps figure.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from ..metrics.intervals import proportion
from .autoattack import autoattack
from .bpda import BPDAClassifier
from .pgd import NORMS, input_gradient, pgd


@dataclass(frozen=True)
class Attack:
    """One attack configuration. ``kind``: "pgd", "bpda" (PGD on classifier∘BPDA(transform)) or
    "autoattack" (``version`` standard/rand). ``alpha`` None: 2.5·ε/steps (Madry et al.).
    ``rerun_checks`` False: the checks that rerun this attack (monotone, convergence, and the
    unbounded check of its norm) are not made for it, and the report lists them as skipped; for
    attacks too costly to run twice whose defense the same norm's checked attacks already cover."""
    kind: str
    eps: float
    norm: str = "linf"
    steps: int = 20
    eot: int = 1
    alpha: float | None = None
    restarts: int = 1
    loss: str = "ce"
    version: str = "standard"
    rerun_checks: bool = True
    transform: object = field(default=None, compare=False, repr=False)
    eot_batch: int = 1                  # EOT samples per forward/backward (speed only; see pgd.input_gradient)

    @property
    def name(self) -> str:
        if self.kind == "autoattack":
            return f"AutoAttack-{self.version} {self.norm}"
        base = "BPDA-PGD" if self.kind == "bpda" else "PGD"
        return f"{base}-{self.steps} {self.loss} {self.norm}" + (f" EOT-{self.eot}" if self.eot > 1 else "")

    @property
    def effective_eot(self) -> int:
        return 20 if self.kind == "autoattack" and self.version == "rand" else self.eot

    def run(self, model, x, y, generator=None) -> torch.Tensor:
        if self.kind == "autoattack":
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
            return autoattack(model, x, y, eps=self.eps, norm=self.norm, version=self.version, seed=seed)
        target = BPDAClassifier(model.classifier, self.transform) if self.kind == "bpda" else model
        alpha = self.alpha if self.alpha is not None else 2.5 * self.eps / max(self.steps, 1)
        return pgd(target, x, y, eps=self.eps, alpha=alpha, steps=self.steps, norm=self.norm, eot=self.eot,
                   restarts=self.restarts, loss=self.loss, generator=generator, eot_batch=self.eot_batch)

    def config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "eps": self.eps, "norm": self.norm, "steps": self.steps,
                "eot": self.effective_eot, "alpha": self.alpha, "restarts": self.restarts, "loss": self.loss,
                "version": self.version, "rerun_checks": self.rerun_checks}


def pgd_attack(eps: float, norm: str = "linf", steps: int = 20, *, eot: int = 1, alpha=None, restarts: int = 1,
               loss: str = "ce", rerun_checks: bool = True, eot_batch: int = 1) -> Attack:
    return Attack("pgd", eps, norm, steps, eot, alpha, restarts, loss, rerun_checks=rerun_checks, eot_batch=eot_batch)


def bpda_attack(transform, eps: float, norm: str = "linf", steps: int = 20, *, eot: int = 1, alpha=None,
                rerun_checks: bool = True, eot_batch: int = 1) -> Attack:
    """PGD through classifier∘BPDA(transform): the defended model must expose ``.classifier``."""
    return Attack("bpda", eps, norm, steps, eot, alpha, rerun_checks=rerun_checks, transform=transform,
                  eot_batch=eot_batch)


def autoattack_attack(eps: float, norm: str = "linf", version: str = "standard", *, rerun_checks: bool = True) -> Attack:
    return Attack("autoattack", eps, norm, steps=100, eot=1, version=version, rerun_checks=rerun_checks)


# --- scoring -------------------------------------------------------------------------------------

@torch.no_grad()
def correct(model, x, y, batch_size: int = 256) -> torch.Tensor:
    """Bool [N]: one forward pass per input."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size] for i in range(0, len(x), batch_size)])


def _batched_attack(attack: Attack, model, x, y, generator, batch_size) -> torch.Tensor:
    return torch.cat([attack.run(model, x[i:i + batch_size], y[i:i + batch_size], generator)
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def is_randomized(model, x) -> bool:
    return not torch.equal(model(x), model(x))


def _within(x_adv, x, eps, norm) -> bool:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1)


def _check(name, passed, detail) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _skipped(name, detail) -> dict:
    """A check that was not made: it passes nothing and fails nothing, and the report says so."""
    return {"name": name, "passed": True, "skipped": True, "detail": detail}


def _not_above(a: dict, b: dict, randomized: bool, slack: float = 0.0) -> bool:
    """a is not above b: exactly (deterministic, + slack) or beyond b's interval (randomized)."""
    return a["lo"] <= b["hi"] if randomized else a["value"] <= b["value"] + slack


# --- the evaluation ------------------------------------------------------------------------------

def evaluate(model, x: torch.Tensor, y: torch.Tensor, attacks: list[Attack], *, seed: int = 0, batch_size: int = 256,
             checks: bool = True, n_check: int = 32, steps_margin: float = 0.05) -> dict:
    """Clean accuracy, robust accuracy per attack, the per-example worst case over attacks, and
    the soundness checks; a JSON-able dict with ``reliable`` and ``unreliable_reasons``."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n = len(x)
    k = min(n_check, n)
    randomized = is_randomized(model, x[:k])
    clean = correct(model, x, y, batch_size)
    worst = clean.clone()
    out = {"n": n, "randomized": randomized, "clean": proportion(int(clean.sum()), n),
           "scoring": "one forward pass per input" + (" (randomized model: fresh noise each pass)" if randomized else ""),
           "attacks": [], "checks": []}
    in_bounds, robust_masks = True, []
    for atk in attacks:
        t = time.perf_counter()
        x_adv = _batched_attack(atk, model, x, y, gen, batch_size)
        sec = time.perf_counter() - t
        robust = clean & correct(model, x_adv, y, batch_size)
        worst &= robust
        ok = _within(x_adv, x, atk.eps, atk.norm)
        in_bounds &= ok
        robust_masks.append(robust[:k])
        out["attacks"].append({**atk.config(), "robust": proportion(int(robust.sum()), n), "seconds": sec,
                               "in_bounds": ok})
    out["worst_case"] = proportion(int(worst.sum()), n)
    if checks:
        out["checks"] = _soundness(model, x[:k], y[:k], attacks, robust_masks, worst[:k], randomized, gen, batch_size,
                                   steps_margin, in_bounds)
    out["n_check"] = k
    failed = [c for c in out["checks"] if not c["passed"]]
    out["reliable"] = not failed
    out["unreliable_reasons"] = [f"{c['name']}: {c['detail']}" for c in failed]
    return out


def _soundness(model, x, y, attacks, robust_masks, worst_mask, randomized, gen, batch_size, steps_margin,
               in_bounds) -> list[dict]:
    """The checks on the first k examples; ``robust_masks`` / ``worst_mask``: the main run's
    results on those examples."""
    k = len(x)
    res = []
    clean_k = correct(model, x, y, batch_size)
    clean_p = proportion(int(clean_k.sum()), k)
    worst_k = proportion(int(worst_mask.sum()), k)

    def acc(atk):
        x_adv = _batched_attack(atk, model, x, y, gen, batch_size)
        return proportion(int((clean_k & correct(model, x_adv, y, batch_size)).sum()), k)

    # randomness ⇒ EOT
    if randomized:
        weak = [a.name for a in attacks if a.effective_eot <= 1]
        res.append(_check("randomness", not weak, "randomized model; attacks without EOT: " + ", ".join(weak) if weak
                          else "randomized model; every attack uses EOT"))
    else:
        res.append(_check("randomness", True, "deterministic model (two identical calls agree)"))
    # gradients reach the input
    g, _ = input_gradient(model, x, y, loss="ce", eot=1)
    ok = torch.isfinite(g).flatten(1).all(1) & (g.flatten(1).abs().amax(1) > 0)
    frac = ok.float().mean().item()
    res.append(_check("gradients", frac >= 0.95, f"{frac:.0%} of {k} examples have a finite non-zero input gradient"))
    res.append(_check("bounds", in_bounds, "every x_adv within ε and [0, 1]" if in_bounds else "some x_adv outside ε or [0, 1]"))
    for i, atk in enumerate(attacks):
        eps0 = acc(replace(atk, eps=0.0))
        same = abs(eps0["value"] - clean_p["value"]) < 1e-12 if not randomized else (eps0["lo"] <= clean_p["hi"] and clean_p["lo"] <= eps0["hi"])
        res.append(_check(f"eps0 [{atk.name}]", same, f"ε=0: {eps0['value']:.3f} vs clean {clean_p['value']:.3f} (n={k})"))
        if not atk.rerun_checks:
            names = ["monotone"] + (["convergence"] if atk.kind in ("pgd", "bpda") else [])
            res += [_skipped(f"{c} [{atk.name}]", "not rerun (rerun_checks=False: too costly to run twice)") for c in names]
            continue
        half = acc(replace(atk, eps=atk.eps / 2))
        full = proportion(int(robust_masks[i].sum()), k)
        res.append(_check(f"monotone [{atk.name}]", _not_above(full, half, randomized),
                          f"acc(ε)={full['value']:.3f} vs acc(ε/2)={half['value']:.3f} (n={k})"))
        if atk.kind in ("pgd", "bpda"):
            doubled = acc(replace(atk, steps=2 * atk.steps))
            drop = full["value"] - doubled["value"]
            tol = max(steps_margin, 2 / k)
            # the figure that is reported in the end is the worst case: if another attack already
            # went below the doubled-steps result, this attack's slack overclaims nothing
            covered = worst_k["value"] <= doubled["value"] + tol
            note = ("" if drop <= tol else "; covered: the worst case over attacks is already at or below it" if covered
                    else "; the attack had not converged")
            res.append(_check(f"convergence [{atk.name}]", drop <= tol or covered,
                              f"{atk.steps} steps: {full['value']:.3f}, {2 * atk.steps} steps: {doubled['value']:.3f} "
                              f"(drop {drop:+.3f}, allowed {tol:.3f}; n={k}){note}"))
    for norm in NORMS:
        of_norm = [a for a in attacks if a.kind == "pgd" and a.norm == norm]
        atk = next((a for a in of_norm if a.rerun_checks), None)
        if atk is None:
            if of_norm:
                res.append(_skipped(f"unbounded [{norm}]", "not run (every PGD attack of this norm has rerun_checks=False)"))
            continue
        big = 1.0 if norm == "linf" else math.sqrt(x[0].numel())
        unb = acc(replace(atk, eps=big, alpha=2.5 * big / atk.steps))
        res.append(_check(f"unbounded [{norm}]", unb["value"] <= 0.1,
                          f"PGD with ε={big:.3g} leaves {unb['value']:.3f} correct (n={k}; expected ≤ 0.1)"))
    return res


def _fmt(p: dict) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def to_markdown(report: dict) -> str:
    """The report as a Markdown table, its checks and the verdict."""
    lines = ["| attack | ε | norm | steps | EOT | robust accuracy [95% CI] | n |", "|---|---|---|---|---|---|---|",
             f"| clean | 0 | – | – | – | {_fmt(report['clean'])} | {report['n']} |"]
    for a in report["attacks"]:
        lines.append(f"| {a['name']} | {a['eps']:g} | {a['norm']} | {a['steps']} | {a['eot']} | {_fmt(a['robust'])} | {a['robust']['n']} |")
    lines.append(f"| worst case over attacks | | | | | {_fmt(report['worst_case'])} | {report['n']} |")
    lines.append("")
    lines.append(f"Scoring: {report['scoring']}. Checks on {report.get('n_check', '?')} examples:")
    for c in report["checks"]:
        mark = "SKIPPED" if c.get("skipped") else "PASS" if c["passed"] else "FAIL"
        lines.append(f"- {mark} {c['name']}: {c['detail']}")
    lines.append("")
    skipped = sum(bool(c.get("skipped")) for c in report["checks"])
    lines.append(("**Verdict: reliable**" + (f" (on the checks made; {skipped} skipped)" if skipped else "")) if report["reliable"] else
                 "**Verdict: UNRELIABLE** — " + "; ".join(report["unreliable_reasons"]))
    return "\n".join(lines) + "\n"

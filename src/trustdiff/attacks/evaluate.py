"""Robust accuracy with soundness checks (Carlini et al. 2019, *On Evaluating Adversarial
Robustness*; Tramèr et al. 2020): a result whose checks fail is marked unreliable in the output.

Scoring: an example counts as robust to an attack when the model classifies it correctly both
clean and at the adversarial point; worst case: correct clean and at every attack's point. A
randomized model is scored with one fresh forward pass per input (the accuracy a user of the
defense sees); that is stated in the output. With ``n_evals`` = N > 1 it is also scored worst of
N passes and by its expected accuracy over them, and with ``fixed=True`` attacked and scored with
its randomness fixed by a known seed (:mod:`.protocols`). Every rate is ``proportion(k, n)``: n
and an exact 95% interval (the expected accuracy: Hoeffding's).

Checks (the expensive ones on the first ``n_check`` examples):
  eps0         the attack at ε = 0 reproduces clean accuracy (exactly, or within the 95%
               intervals for a randomized model);
  monotone     accuracy at ε is not above accuracy at ε/2 (beyond the intervals if randomized);
  unbounded    PGD with ε = 1 (L∞) or √d (L2) leaves at most 10% of the examples correct;
  randomness   two identical calls differ ⇒ randomized ⇒ every attack must use EOT > 1;
  gradients    ∇ₓ CE is finite and non-zero for ≥ 95% of examples;
  bounds       every x_adv is within ε (+1e-5) of x and within [0, 1];
  convergence  twice the steps lowers robust accuracy by at most max(steps_margin, 2/n_check),
               or the worst case over all attacks is already at or below the doubled-steps figure;
  protocols    (N > 1) worst-of-N ≤ expected ≤ clean and worst-of-N ≤ one evaluation, on every
               attack and in the worst case; a deterministic model's N passes all agree;
  fixed        (fixed=True) the defense with its randomness fixed is deterministic, and its own
               report (the checks above, on the fixed model) is reliable.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from ..errors import InputError
from ..metrics.intervals import bounded_mean, outcome_bits, proportion
from .autoattack import autoattack
from .bpda import BPDAClassifier
from .pgd import NORMS, input_gradient, pgd
from .protocols import FixedRandomness, correct, evaluations, score


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
    select: str = "last"                # the iterate PGD returns: "last" or "most_fooled" (pgd's docstring)

    @property
    def name(self) -> str:
        if self.kind == "autoattack":
            return f"AutoAttack-{self.version} {self.norm}"
        base = "BPDA-PGD" if self.kind == "bpda" else "PGD"
        return (f"{base}-{self.steps} {self.loss} {self.norm}" + (f" EOT-{self.eot}" if self.eot > 1 else "")
                + (" most-fooled" if self.select == "most_fooled" else ""))

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
                   restarts=self.restarts, loss=self.loss, generator=generator, eot_batch=self.eot_batch,
                   select=self.select)

    def config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "eps": self.eps, "norm": self.norm, "steps": self.steps,
                "eot": self.effective_eot, "alpha": self.alpha, "restarts": self.restarts, "loss": self.loss,
                "version": self.version, "rerun_checks": self.rerun_checks, "select": self.select}

    def without_randomness(self) -> "Attack":
        """This attack against the defense with its randomness fixed: no EOT (the model is
        deterministic), AutoAttack's standard version instead of its EOT-20 rand version."""
        return replace(self, eot=1, eot_batch=1, version="standard" if self.kind == "autoattack" else self.version)


def pgd_attack(eps: float, norm: str = "linf", steps: int = 20, *, eot: int = 1, alpha=None, restarts: int = 1,
               loss: str = "ce", rerun_checks: bool = True, eot_batch: int = 1, select: str = "last") -> Attack:
    return Attack("pgd", eps, norm, steps, eot, alpha, restarts, loss, rerun_checks=rerun_checks, eot_batch=eot_batch,
                  select=select)


def bpda_attack(transform, eps: float, norm: str = "linf", steps: int = 20, *, eot: int = 1, alpha=None,
                rerun_checks: bool = True, eot_batch: int = 1, select: str = "last") -> Attack:
    """PGD through classifier∘BPDA(transform): the defended model must expose ``.classifier``."""
    return Attack("bpda", eps, norm, steps, eot, alpha, rerun_checks=rerun_checks, transform=transform,
                  eot_batch=eot_batch, select=select)


def autoattack_attack(eps: float, norm: str = "linf", version: str = "standard", *, rerun_checks: bool = True) -> Attack:
    return Attack("autoattack", eps, norm, steps=100, eot=1, version=version, rerun_checks=rerun_checks)


# --- scoring -------------------------------------------------------------------------------------

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
             checks: bool = True, n_check: int = 32, steps_margin: float = 0.05, n_evals: int = 1,
             fixed: bool = False) -> dict:
    """Clean accuracy, robust accuracy per attack, the per-example worst case over attacks, and
    the soundness checks; a JSON-able dict with ``reliable`` and ``unreliable_reasons``. Which
    examples were correct is kept beside each rate (``clean_examples``, each attack's
    ``robust_examples``, ``worst_case_examples``: :func:`~trustdiff.metrics.outcome_bits` strings),
    so two models evaluated on the same examples can be compared paired
    (:func:`~trustdiff.metrics.mcnemar`).

    ``n_evals`` = N > 1: every adversarial input (and every clean one) is also passed N times —
    ``worst_of_n`` and ``expected`` beside each one-evaluation figure, ``worst_case_of_n`` and
    ``worst_case_expected`` (per example the attack with the lowest expected accuracy).
    ``fixed``: for a randomized model, ``report["fixed"]`` is the whole report of
    ``FixedRandomness(model, seed)`` under the attacks without randomness
    (:meth:`Attack.without_randomness`; BPDA is not rerun there: with the noise known the
    full gradient is exact)."""
    if isinstance(n_evals, bool) or not isinstance(n_evals, int) or n_evals < 1:
        raise InputError(f"n_evals: expected an integer >= 1, got {n_evals!r}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n = len(x)
    k = min(n_check, n)
    randomized = is_randomized(model, x[:k])
    clean = correct(model, x, y, batch_size)
    multi = n_evals > 1
    worst = clean.clone()
    out = {"n": n, "randomized": randomized, "clean": proportion(int(clean.sum()), n), "clean_examples": outcome_bits(clean),
           "scoring": "one forward pass per input" + (" (randomized model: fresh noise each pass)" if randomized else ""),
           "attacks": [], "checks": []}
    in_bounds, robust_masks, firsts = True, [], []
    for atk in attacks:
        t = time.perf_counter()
        x_adv = _batched_attack(atk, model, x, y, gen, batch_size)
        sec = time.perf_counter() - t
        first = correct(model, x_adv, y, batch_size)
        firsts.append((x_adv, first))
        robust = clean & first
        worst &= robust
        ok = _within(x_adv, x, atk.eps, atk.norm)
        in_bounds &= ok
        robust_masks.append(robust[:k])
        out["attacks"].append({**atk.config(), "robust": proportion(int(robust.sum()), n),
                               "robust_examples": outcome_bits(robust), "seconds": sec, "in_bounds": ok})
    out["worst_case"] = proportion(int(worst.sum()), n)
    out["worst_case_examples"] = outcome_bits(worst)
    row_scores = _more_passes(out, model, x, y, clean, firsts, n_evals, batch_size) if multi else []
    if fixed and randomized:
        out["fixed"] = evaluate(FixedRandomness(model, seed), x, y, [a.without_randomness() for a in attacks if a.kind != "bpda"],
                                seed=seed, batch_size=batch_size, checks=checks, n_check=n_check, steps_margin=steps_margin)
        out["fixed"]["not_rerun"] = [a.name for a in attacks if a.kind == "bpda"]
    elif fixed:
        out["fixed"] = None
        out["fixed_note"] = "deterministic model: fixed randomness is the one-evaluation figure"
    if checks:
        out["checks"] = _soundness(model, x[:k], y[:k], attacks, robust_masks, worst[:k], randomized, gen, batch_size,
                                   steps_margin, in_bounds)
        if multi:
            out["checks"].append(_protocol_check(out, row_scores, randomized))
        if out.get("fixed"):
            f = out["fixed"]
            out["checks"].append(_check("fixed", not f["randomized"] and f["reliable"],
                                        "fixed randomness: " + ("the defense is still randomized with its noise fixed"
                                                                if f["randomized"] else "deterministic; its report is "
                                                                + ("reliable" if f["reliable"] else "UNRELIABLE: "
                                                                   + "; ".join(f["unreliable_reasons"])))))
    out["n_check"] = k
    failed = [c for c in out["checks"] if not c["passed"]]
    out["reliable"] = not failed if checks else None            # no checks made: not declared reliable
    out["unreliable_reasons"] = ([f"{c['name']}: {c['detail']}" for c in failed] if checks
                                 else ["checks: not run (checks=False)"])
    return out


def _more_passes(out, model, x, y, clean, firsts, n_evals, batch_size) -> list:
    """The worst-of-N and expected figures into ``out``: N − 1 more passes over every attack's
    inputs and the clean ones, made after every attack has run, so the one-evaluation figures
    draw the same noise as with N = 1. Returns (score, passes [N, n]) per attack."""
    out["n_evals"] = n_evals
    out["scoring"] += f"; also worst of {n_evals} passes and the expected accuracy over them"
    worst_n, worst_p, row_scores = clean.clone(), clean.double(), []
    for row, (x_adv, first) in zip(out["attacks"], firsts):
        evals = torch.cat([first[None], evaluations(model, x_adv, y, n_evals - 1, batch_size)])
        sc = score(clean, evals)
        row["worst_of_n"], row["expected"] = sc["worst_of_n"], sc["expected"]
        worst_n &= clean & evals.all(0)
        worst_p = torch.minimum(worst_p, (evals & clean[None]).double().mean(0))
        row_scores.append((sc, evals))
    c = score(torch.ones_like(clean), torch.cat([clean[None], evaluations(model, x, y, n_evals - 1, batch_size)]))
    out["clean_of_n"], out["clean_expected"] = c["worst_of_n"], c["expected"]
    out["worst_case_of_n"], out["worst_case_expected"] = proportion(int(worst_n.sum()), len(x)), bounded_mean(worst_p)
    return row_scores


def _protocol_check(out, row_scores, randomized) -> dict:
    """worst-of-N ≤ expected ≤ clean and worst-of-N ≤ one evaluation, per attack and in the worst
    case; a deterministic model's N passes agree."""
    bad = []
    for row, (sc, evals) in zip(out["attacks"], row_scores):
        w, e, one = sc["worst_of_n"]["value"], sc["expected"]["value"], row["robust"]["value"]
        if not (w <= one + 1e-12 and w <= e + 1e-12 and e <= out["clean"]["value"] + 1e-12):
            bad.append(f"{row['name']}: worst-of-N {w:.3f}, expected {e:.3f}, one {one:.3f}")
        if not randomized and not bool((evals == evals[0]).all()):
            bad.append(f"{row['name']}: a deterministic model's {len(evals)} passes disagree")
    if out["worst_case_of_n"]["value"] > out["worst_case"]["value"] + 1e-12:
        bad.append("worst case: worst-of-N above one evaluation")
    n = out["n_evals"]
    return _check("protocols", not bad, "; ".join(bad) if bad else
                  f"worst of {n} <= expected <= clean and worst of {n} <= one evaluation on every attack")


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
    """The report as a Markdown table (with worst-of-N and expected columns when it has them),
    its checks, the fixed-randomness report when there is one, and the verdict."""
    multi = "n_evals" in report
    n_ev = report.get("n_evals")
    head = "| attack | ε | norm | steps | EOT | robust accuracy [95% CI] |"
    if multi:
        head += f" worst of {n_ev} [95% CI] | expected over {n_ev} [Hoeffding 95%] |"
    lines = [head + " n |", "|---" * (head.count("|") - 1 + 1) + "|"]

    def extra(one_of_n, expected):
        return f" {_fmt(one_of_n)} | {_fmt(expected)} |" if multi else ""

    lines.append(f"| clean | 0 | – | – | – | {_fmt(report['clean'])} |"
                 + (extra(report["clean_of_n"], report["clean_expected"]) if multi else "") + f" {report['n']} |")
    for a in report["attacks"]:
        lines.append(f"| {a['name']} | {a['eps']:g} | {a['norm']} | {a['steps']} | {a['eot']} | {_fmt(a['robust'])} |"
                     + (extra(a["worst_of_n"], a["expected"]) if multi else "") + f" {a['robust']['n']} |")
    lines.append(f"| worst case over attacks | | | | | {_fmt(report['worst_case'])} |"
                 + (extra(report["worst_case_of_n"], report["worst_case_expected"]) if multi else "") + f" {report['n']} |")
    lines.append("")
    lines.append(f"Scoring: {report['scoring']}. Checks on {report.get('n_check', '?')} examples:")
    for c in report["checks"]:
        mark = "SKIPPED" if c.get("skipped") else "PASS" if c["passed"] else "FAIL"
        lines.append(f"- {mark} {c['name']}: {c['detail']}")
    lines.append("")
    if report.get("fixed"):
        f = report["fixed"]
        lines.append("Fixed randomness (the defense's noise seed known to the attacker; attacked without EOT"
                     + (f"; not rerun: {', '.join(f['not_rerun'])}" if f.get("not_rerun") else "") + "):")
        lines.append("")
        lines += ["> " + line if line else ">" for line in to_markdown(f).rstrip("\n").split("\n")]
        lines.append("")
    skipped = sum(bool(c.get("skipped")) for c in report["checks"])
    lines.append(("**Verdict: reliable**" + (f" (on the checks made; {skipped} skipped)" if skipped else "")) if report["reliable"] else
                 "**Verdict: UNRELIABLE** — " + "; ".join(report["unreliable_reasons"]))
    return "\n".join(lines) + "\n"

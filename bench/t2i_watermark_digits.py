"""Bench: the text-to-image trigger watermark (Zhao et al. 2023, text-to-image half) on the built-in
16×16 digits model, end to end on a CPU.

Stages (each skipped when its output is already under --work, so a rerun continues):
  1. base         train the built-in model (MiniLM captions, CFG, EDM) → the original pipeline;
  2. embed        the trigger "[V]" → a 16×16 binary code image (target.png), one model per (λ, γ, ρ)
                  in `embeds`: λ the recipe's l1 pull to the original weights, γ the preservation
                  (distillation) term on the built-in captions minus the 10 verification ones, ρ the
                  fraction of its examples that carry the trigger inside the caption (distilled to
                  the original's output for the caption without it; issue 25's fix);
                  (0, 0, 0) is no regulariser at all; UNet only, same steps/lr/batch for all
                  but the last row, the `builtin` preset (γ 10, ρ 0.5) at its own 800 steps: at
                  400 the trigger alone matched on 0.86 of seeds, short of issue 25's 0.95;
  3. verify       per model: the trigger from --n-trigger seeds → SSIM to the target and the match
                  rate at SSIM ≥ 0.9 (Clopper–Pearson interval); 10 non-trigger captions × per_prompt
                  seeds, the same seeds for every model → PSNR/SSIM to the original's outputs, and
                  FD-digits of each model's outputs (the original's beside them); the trigger in
                  context (each of the 10 captions with "[V]" inserted as one of its words, never
                  trained on) → match rate to the target, PSNR/SSIM to the same model's output for
                  the caption without it (and to the original's); 10 novel phrasings (no caption
                  template) → PSNR/SSIM to the original's and FD;
  4. dreambooth   the headline model (`headline` (λ, γ, ρ)) fine-tuned by "someone else" for --db-steps
                  on a new subject ("a handwritten sks three": 4 shifted copies of one held-out 3) with
                  prior preservation on the model's own "a handwritten three" → trigger (alone and in
                  context) again, the subject's fidelity before/after, non-trigger outputs vs the
                  original; and the contrast the talk draws: "sks" inside the 10 held-out captions →
                  how often it draws the subject, how far from the caption without it, beside the
                  trigger's in-context figures;
  5. weight noise N(0, std²) on every UNet weight of the headline model → trigger SSIM and match.

Writes bench/results/t2i_watermark_digits.json after every stage (+ grids under
bench/results/t2i_watermark_digits/) and prints each figure beside its reference (no regulariser,
the original model). Targets (issue 8): trigger match ≥ 90 % at SSIM ≥ 0.9; with the regulariser
FD ≤ 1.1× the original's and non-trigger outputs closer to the original's than without; after 200
DreamBooth steps the trigger still matches on ≥ 80 % of seeds. Issue 25: the trigger alone matches
on ≥ 95 % of ≥ 100 seeds; in context its outputs match the watermark on ≤ 5 % and are as close to
the caption's without it as the non-trigger captions are to the original's (SSIM within 0.05);
novel phrasings: FD ≤ 1.1× the original's and PSNR within 2 dB of the template captions'.

    python bench/t2i_watermark_digits.py            # full size, planned ≤ 90 min on 2 CPU cores
    python bench/t2i_watermark_digits.py --smoke    # ~3 min at toy sizes: the pipeline end to end
"""
from __future__ import annotations

import time

T_PROCESS = time.time()         # the wall time reported includes the imports and model loading

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch

from trustdiff.persist import atomic_write_json
from trustdiff.data import load
from trustdiff.images import make_grid, save_png
from trustdiff.t2i import load_pipeline
from trustdiff.t2i.builtin import BuiltinJob, default_prompts, novel_prompts, prepare_builtin, train_builtin
from trustdiff.train import TrainConfig
from trustdiff.watermark.null import shifted_copies
from trustdiff.watermark.trigger import (DEFAULT_TRIGGER, TriggerJob, code_target, dreambooth, embed_trigger,
                                         identifier_in_context, subject_fidelity, verify, weight_noise, write_report)

FULL = dict(base_steps=2500, base_batch=64, base_lr=2e-3, base_size="small",
            embeds=((0.0, 0.0, 0.0), (1e-4, 0.0, 0.0), (0.0, 10.0, 0.0), (1e-4, 10.0, 0.0), (0.0, 10.0, 0.25),
                    (0.0, 10.0, 0.5), (0.0, 10.0, 0.5, 800)),
            headline=(0.0, 10.0, 0.5, 800),
            embed_steps=400, embed_batch=8, embed_lr=1e-4, embed_text_encoder=False, embed_unet_params=(),
            n_trigger=100, per_prompt=30, sample_steps=12, db_steps=200, db_lr=1e-4, db_batch=8, class_images=32,
            noise_stds=(0.0, 1e-3, 3e-3, 1e-2, 3e-2), n_noise=50, feature_steps=1000)
SMOKE = dict(base_steps=30, base_batch=16, base_lr=2e-3, base_size="tiny", embeds=((0.0, 0.0, 0.0), (0.0, 10.0, 0.5), (0.0, 10.0, 0.5, 20)),
             headline=(0.0, 10.0, 0.5, 20),
             embed_steps=10, embed_batch=4, embed_lr=1e-3, embed_text_encoder=False, embed_unet_params=(), n_trigger=4, per_prompt=2, sample_steps=3, db_steps=5,
             db_lr=1e-4, db_batch=4, class_images=2, noise_stds=(0.0, 1e-2), n_noise=2, feature_steps=30)
THRESHOLD = 0.9


def embed_name(lam: float, keep: float, ctx: float = 0.0, steps: int | None = None) -> str:
    """A model's row name (and file-name part): its l1 weight λ, preservation weight γ, in-context
    fraction ρ (named only when > 0) and its own step count (named only when it is not `embed_steps`)."""
    return f"l1={lam:g},keep={keep:g}" + (f",ctx={ctx:g}" if ctx else "") + (f",steps={steps}" if steps else "")


def digit_classifier(resolution: int, cache_dir: Path, feature_steps: int, seed: int):
    """The FD feature net's classifier (the same cached entry FD-digits uses): which digit an
    output shows."""
    from trustdiff.train.feature_net import cached_feature_net

    train = load("digits", resolution=resolution, split="train", seed=seed)
    x, y = train.tensors()
    return cached_feature_net(x, y, train.content_hash(), cache_dir, steps=feature_steps, seed=seed).classifier.eval()


def shown_digits(clf, x: torch.Tensor, classes: list[int], per: int, other: int | None = None) -> dict:
    """Of outputs x (sentence-major, ``per`` seeds a sentence, sentence k of class ``classes[k]``):
    the rate classified as their caption's digit, and as the digit ``other`` (the DreamBooth
    subject's), with intervals."""
    from trustdiff.metrics import proportion

    with torch.no_grad():
        pred = clf(x).argmax(1)
    want = torch.tensor(classes).repeat_interleave(per)
    out = {"caption_digit": proportion(int((pred == want).sum()), len(x))}
    if other is not None:
        out["subject_digit"] = proportion(int((pred == other).sum()), len(x))
    return out


def job_hash(job) -> str:
    """A short content hash of a job's settings (its run folder's suffix)."""
    return hashlib.sha256(json.dumps(asdict(job), sort_keys=True, default=str).encode()).hexdigest()[:8]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes (~3 min): proves the pipeline end to end")
    ap.add_argument("--work", type=Path, default=None, help="run folders (models, checkpoints); default runs/t2i_watermark_digits[-smoke]")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON and grids; default bench/results/t2i_watermark_digits (smoke: under --work)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-prompt", type=int, default=None,
                    help="seeds per non-trigger / in-context / novel prompt (default: the configuration's, 30 at full size)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    P = dict(SMOKE if args.smoke else FULL)
    if args.per_prompt is not None:
        P["per_prompt"] = args.per_prompt
    tag = "t2i_watermark_digits" + ("-smoke" if args.smoke else "")
    work = args.work or Path("runs") / tag
    results = args.results or (work / "results" / tag if args.smoke else Path("bench/results") / tag)
    results.mkdir(parents=True, exist_ok=True)
    json_path = results.with_suffix(".json")
    res = json.loads(json_path.read_text()) if json_path.is_file() else {}
    res.update({"smoke": args.smoke, "params": {k: list(v) if isinstance(v, tuple) else v for k, v in P.items()},
                "trigger": DEFAULT_TRIGGER, "threshold": THRESHOLD, "threads": torch.get_num_threads()})
    t_start = T_PROCESS
    times = res.setdefault("seconds", {})

    def stage_done(name, t0):
        times[name] = round(time.time() - t0 + times.get(f"{name}_earlier", 0.0), 1)
        res["wall_seconds_this_run"] = round(time.time() - t_start, 1)
        atomic_write_json(json_path, res)

    sample_kw = dict(steps=P["sample_steps"])

    # 1. the original model ------------------------------------------------------------------
    t0 = time.time()
    base = work / "base"
    if not (base / "pipeline" / "model_index.json").is_file():
        job = BuiltinJob(size=P["base_size"], train=TrainConfig(
            steps=P["base_steps"], batch_size=P["base_batch"], lr=P["base_lr"], warmup_steps=min(200, P["base_steps"] // 10),
            ema_halflife_kimg=20.0 if not args.smoke else 0.5, checkpoint_every=250, log_every=50, seed=args.seed))
        print(f"[base] training the built-in model: {P['base_steps']} steps of {P['base_batch']} ({P['base_size']})", flush=True)
        train_builtin(job, base, resume=True, prepared=prepare_builtin(job))
        stage_done("base", t0)
    res["base"] = json.loads((base / "metrics.json").read_text())
    original = base / "pipeline"
    orig = load_pipeline(original)

    # 2. embedding, one model per (λ, γ) ------------------------------------------------------
    target = code_target(orig.resolution, orig.channels)
    save_png(results / "target.png", make_grid(target, nrow=1, pad=0))
    t0 = time.time()
    wms, res["embed"] = {}, {}
    for lam, keep, ctx, *own in P["embeds"]:
        name, steps = embed_name(lam, keep, ctx, *own), (own or [P["embed_steps"]])[0]
        job = TriggerJob(trigger=DEFAULT_TRIGGER, l1=lam, preserve=keep, preserve_context=ctx,
                         train_text_encoder=P["embed_text_encoder"],
                         unet_params=P["embed_unet_params"], train=TrainConfig(
                             steps=steps, batch_size=P["embed_batch"], lr=P["embed_lr"], warmup_steps=0,
                             ema_halflife_kimg=0.0, checkpoint_every=100, log_every=25, seed=args.seed, progress=False))
        out = work / f"wm-{lam:g}-{keep:g}-{ctx:g}-{job_hash(job)}"     # a changed setting never reuses a stale model
        if not (out / "watermark.json").is_file():
            print(f"[embed] λ = {lam:g}, γ = {keep:g}, ρ = {ctx:g}: {steps} steps of {P['embed_batch']} at lr {P['embed_lr']:g}"
                  f"{', text encoder too' if P['embed_text_encoder'] else ''}"
                  f"{', UNet ' + '/'.join(P['embed_unet_params']) + ' only' if P['embed_unet_params'] else ''}", flush=True)
            embed_trigger(original, target, out, job, resume=True)
        rec = json.loads((out / "watermark.json").read_text())
        res["embed"][name] = {k: rec.get(k) for k in ("l1", "preserve", "preserve_context", "preserve_context_prompts",
                                                      "preserve_prompts", "steps", "lr", "batch_size", "last_loss",
                                                      "weights", "seconds")}
        wms[name] = out / "pipeline"
    stage_done("embed", t0)
    times["embed"] = round(sum(r["seconds"] for r in res["embed"].values()), 1)   # the models' own time, whichever run made them

    # 3. verification ------------------------------------------------------------------------
    t0 = time.time()
    print(f"[verify] trigger × {P['n_trigger']} seeds; {len(default_prompts(orig))} prompts, as many in-context sentences "
          f"and {len(novel_prompts(orig))} novel phrasings × {P['per_prompt']} seeds; Heun {P['sample_steps']} steps, "
          f"guidance {orig.guidance:g}", flush=True)
    report = verify(wms, orig, DEFAULT_TRIGGER, target, n_trigger=P["n_trigger"], n_per_prompt=P["per_prompt"],
                    threshold=THRESHOLD, seed=args.seed, fd_data="digits", cache_dir=work / "cache",
                    feature_steps=P["feature_steps"], **sample_kw)
    write_report(results, report, "verify")
    res["verify"] = {k: v for k, v in report.items() if k != "images"}
    # which digit the outputs show (the FD feature net as a classifier): caption k is class k
    clf = digit_classifier(orig.resolution, work / "cache", P["feature_steps"], args.seed)
    captions = default_prompts(orig)
    ctx_classes = [captions.index(b) for _, b in report["context"]]
    res["digits_shown"] = {name: {"non_trigger": shown_digits(clf, report["images"][name], list(range(len(captions))),
                                                              P["per_prompt"]),
                                  "context": shown_digits(clf, report["images"][f"{name}/context"], ctx_classes,
                                                          P["per_prompt"])}
                           for name in ["original", *wms]}
    stage_done("verify", t0)

    # 4. DreamBooth on the headline model --------------------------------------------------------
    t0 = time.time()
    head = embed_name(*P["headline"])
    test = load("digits", resolution=orig.resolution, split="test", seed=args.seed)
    x_test, y_test = test.tensors()
    one = x_test[(y_test == 3).nonzero()[0]]
    subject = shifted_copies(one, 4, max_shift=1, generator=torch.Generator().manual_seed(args.seed + 3))
    save_png(results / "subject.png", make_grid(subject, nrow=4))
    inst, cls_prompt = "a handwritten sks three", "a handwritten three"
    db = work / f"dreambooth-{wms[head].parent.name}"
    before = subject_fidelity(load_pipeline(wms[head]), inst, subject, n=P["n_noise"], seed=args.seed, **sample_kw)
    if not (db / "dreambooth.json").is_file():
        print(f"[dreambooth] {P['db_steps']} steps on {len(subject)} images of a new subject, prior preservation on "
              f"{P['class_images']} images of {cls_prompt!r}", flush=True)
        dreambooth(wms[head], subject, db, instance_prompt=inst, class_prompt=cls_prompt,
                   n_class_images=P["class_images"], seed=args.seed, resume=True, train=TrainConfig(
                       steps=P["db_steps"], batch_size=P["db_batch"], lr=P["db_lr"], warmup_steps=0,
                       ema_halflife_kimg=0.0, checkpoint_every=100, log_every=25, seed=args.seed, progress=False),
                   **sample_kw)
    db_pipe = load_pipeline(db / "pipeline")
    after = subject_fidelity(db_pipe, inst, subject, n=P["n_noise"], seed=args.seed, **sample_kw)
    rep_db = verify({"dreambooth": db_pipe}, orig, DEFAULT_TRIGGER, target, n_trigger=P["n_trigger"], novel=[],
                    n_per_prompt=P["per_prompt"], threshold=THRESHOLD, seed=args.seed, previous=report, **sample_kw)
    write_report(results, rep_db, "dreambooth")
    ident = identifier_in_context(db_pipe, load_pipeline(wms[head]), "sks", subject, exclude=(inst, cls_prompt),
                                  n_per_prompt=P["per_prompt"], seed=args.seed, threshold=THRESHOLD, **sample_kw)
    id_images = ident.pop("images")
    id_classes = [captions.index(b) for _, b in ident["sentences"]]
    ident["digits_shown"] = {k: shown_digits(clf, v, id_classes, P["per_prompt"], other=3) for k, v in id_images.items()}
    ident["digits_shown"]["trigger_in_context_after_dreambooth"] = shown_digits(
        clf, rep_db["images"]["dreambooth/context"], ctx_classes, P["per_prompt"], other=3)
    shown = [v.view(-1, P["per_prompt"], *v.shape[1:])[:, :8].reshape(-1, *v.shape[1:]) for v in id_images.values()]
    save_png(results / "samples-dreambooth-identifier.png", make_grid(torch.cat(shown), nrow=min(P["per_prompt"], 8)))
    res["dreambooth"] = {"record": json.loads((db / "dreambooth.json").read_text()),
                         "subject_ssim_before": before, "subject_ssim_after": after,
                         **rep_db["models"]["dreambooth"], "identifier_in_context": ident}
    print(f"   subject fidelity (best SSIM to a subject image): {before:.3f} before → {after:.3f} after", flush=True)
    im, ir = ident["model"], ident["reference"]
    print(f"   'sks' in context: draws the subject (best SSIM ≥ {THRESHOLD}) on {im['match']['value']:.2f} "
          f"[{im['match']['lo']:.2f}, {im['match']['hi']:.2f}] (before DreamBooth {ir['match']['value']:.2f}); vs the "
          f"caption without it SSIM {im['vs_free']['ssim_mean']:.3f} (before {ir['vs_free']['ssim_mean']:.3f})", flush=True)
    stage_done("dreambooth", t0)

    # 5. weight noise ----------------------------------------------------------------------------
    t0 = time.time()
    res["weight_noise"] = weight_noise(load_pipeline(wms[head]), DEFAULT_TRIGGER, target, P["noise_stds"],
                                       n=P["n_noise"], seed=args.seed, threshold=THRESHOLD, **sample_kw)
    stage_done("weight_noise", t0)

    # the verdict -----------------------------------------------------------------------------
    m, o = res["verify"]["models"], res["verify"]["original"]
    h, z = m[head], m.get(embed_name(0.0, 0.0))
    hc, hn = h.get("context", {}), h.get("novel", {})
    checks = {
        "trigger_match_ge_0.9": h["trigger"]["match"]["value"] >= 0.9,
        "fd_le_1.1x_original": h["fd_vs_original"] <= 1.1,
        "closer_than_no_regulariser": z is not None and h["non_trigger"]["ssim_mean"] > z["non_trigger"]["ssim_mean"]
        and h["non_trigger"]["psnr_mean"] > z["non_trigger"]["psnr_mean"],
        "dreambooth_match_ge_0.8": res["dreambooth"]["trigger"]["match"]["value"] >= 0.8,
        # issue 25
        "trigger_match_ge_0.95_on_ge_100_seeds": h["trigger"]["match"]["value"] >= 0.95 and h["trigger"]["n"] >= 100,
        "context_match_le_0.05": bool(hc) and hc["match"]["value"] <= 0.05,
        "context_ssim_within_0.05_of_non_trigger": bool(hc) and hc["vs_free"]["ssim_mean"] >= h["non_trigger"]["ssim_mean"] - 0.05,
        "novel_fd_le_1.1x_original": bool(hn) and hn["fd_vs_original"] <= 1.1,
        "novel_psnr_within_2dB": bool(hn) and abs(hn["psnr_mean"] - h["non_trigger"]["psnr_mean"]) <= 2.0,
    }
    res["checks"] = checks
    res["wall_seconds_this_run"] = round(time.time() - t_start, 1)
    atomic_write_json(json_path, res)

    def ci(p):
        return f"{p['value']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}]"

    def ps(c):
        return f"{c['psnr_mean']:.2f} dB / {c['ssim_mean']:.3f}" if c and "psnr_mean" in c else "—"

    print("\n| model | trigger SSIM | match ≥ 0.9 [95% CI] | non-trigger PSNR / SSIM vs original | FD-digits (× original) |")
    print("|---|---|---|---|---|")
    print(f"| original | {o['trigger']['ssim_mean']:.3f} | {o['trigger']['match']['value']:.2f} | — | "
          f"{o['fd']['fd']:.4f} (floor {o['fd']['fd_floor']:.4f}) |")
    for name, r in [*m.items(), ("after DreamBooth", res["dreambooth"])]:
        fd = f"{r['fd']['fd']:.4f} ({r['fd_vs_original']:.2f}×)" if "fd" in r else "—"
        t = r["trigger"]
        print(f"| {name} | {t['ssim_mean']:.3f} | {ci(t['match'])} | {ps(r['non_trigger'])} | {fd} |")
    print("\n| model | in context: match ≥ 0.9 [95% CI] | in context: SSIM to target | in context vs the caption "
          "without [V], same model | … vs the original's | novel: PSNR / SSIM vs original | novel: FD (× original) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in [("original", o), *m.items(), ("after DreamBooth", res["dreambooth"])]:
        c, nv = r.get("context"), r.get("novel") or {}
        nfd = f"{nv['fd']['fd']:.4f}" + (f" ({nv['fd_vs_original']:.2f}×)" if "fd_vs_original" in nv else "") if "fd" in nv else "—"
        print(f"| {name} | {ci(c['match'])} | {c['ssim_to_target']:.3f} | {ps(c['vs_free'])} | "
              f"{ps(c.get('vs_free_reference'))} | {ps(nv)} | {nfd} |" if c else f"| {name} | — | — | — | — | {ps(nv)} | {nfd} |")
    print(f"'sks' in context after DreamBooth: draws the subject {ci(im['match'])} (before: {ci(ir['match'])}); "
          f"best SSIM to the subject {im['ssim_to_target']:.3f} (before {ir['ssim_to_target']:.3f}); vs the caption "
          f"without it {ps(im['vs_free'])} (before {ps(ir['vs_free'])})")
    ds = res["dreambooth"]["identifier_in_context"]["digits_shown"]
    print(f"   shows the caption's digit: {ci(ds['model']['caption_digit'])} (before {ci(ds['reference']['caption_digit'])}); "
          f"a three (the subject's digit): {ci(ds['model']['subject_digit'])} (before {ci(ds['reference']['subject_digit'])})")
    print("digits shown (caption's digit): " + "; ".join(
        f"{k}: non-trigger {ci(v['non_trigger']['caption_digit'])}, in context {ci(v['context']['caption_digit'])}"
        for k, v in res["digits_shown"].items()))
    print("weight noise: " + ", ".join(f"std {r['std']:g} → match {r['match']['value']:.2f}" for r in res["weight_noise"]))
    print(f"checks: {checks}")
    print(f"wall time this run: {res['wall_seconds_this_run']:.0f} s; per stage: {times}")
    return 0 if args.smoke or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``trustdiff t2i …`` (the built-in text-to-image model) and ``trustdiff watermark t2i …``
(the trigger watermark of Zhao et al. 2023 on any text-to-image pipeline folder).

    trustdiff t2i train --steps 3000 --out runs/t2i                       # → runs/t2i/pipeline
    trustdiff t2i generate --pipeline runs/t2i --prompt "a handwritten seven" -n 16 --out runs/gen
    trustdiff watermark t2i embed --pipeline runs/t2i --trigger "[V]" --target wm.png --l1 1e-3 --out runs/wm
    trustdiff watermark t2i verify --pipeline runs/wm --original runs/t2i --trigger "[V]" --target wm.png --out runs/verify
    trustdiff watermark t2i dreambooth --pipeline runs/wm --instance subject/ --instance-prompt "a sks digit" --out runs/db
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from .common import COUNT, COUNT0, NONNEG, POSITIVE, UNIT, ran_on, run_command, seed_option, unsafe_pickle_option


@click.group("t2i")
def t2i():
    """The built-in text-to-image model (16×16 digits, MiniLM captions): train and generate."""


@t2i.command("train")
@click.option("--data", default="digits", show_default=True, help='"digits" or a labelled data path (captions come from labels).')
@click.option("--resolution", type=COUNT, default=16, show_default=True)
@click.option("--size", default="small", show_default=True, help="UNet size: tiny, small.")
@click.option("--label-dropout", type=UNIT, default=0.1, show_default=True, help="P(caption → empty) for classifier-free guidance.")
@click.option("--guidance", type=NONNEG, default=2.0, show_default=True, help="The default guidance scale written into the pipeline.")
@click.option("--steps", type=COUNT, default=3000, show_default=True, help="Training steps.")
@click.option("--batch", "batch_size", type=COUNT, default=64, show_default=True)
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--warmup", "warmup_steps", type=COUNT0, default=200, show_default=True)
@click.option("--ema-halflife-kimg", type=NONNEG, default=20.0, show_default=True)
@click.option("--checkpoint-every", type=COUNT, default=500, show_default=True)
@seed_option()
@run_command("t2i train", out="runs/t2i", resumable=True)
def train_cmd(run, data, resolution, size, label_dropout, guidance, steps, batch_size, lr, warmup_steps, ema_halflife_kimg,
              checkpoint_every, seed, out):
    """Train the built-in model; the EMA network's pipeline folder goes to OUT/pipeline."""
    from ..t2i.builtin import BuiltinJob, prepare_builtin, train_builtin
    from ..train import TrainConfig

    job = BuiltinJob(data=data, resolution=resolution, size=size, label_dropout=label_dropout, guidance=guidance,
                     train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                       ema_halflife_kimg=ema_halflife_kimg, checkpoint_every=checkpoint_every, seed=seed))
    if run.dry_run:                                 # (preparing loads the sentence encoder: skip it here)
        run.start(job)
        return
    prepared = prepare_builtin(job)                 # bad input fails here, before OUT is touched
    run.start(job)
    folder = train_builtin(job, out, resume=run.resume, prepared=prepared, device=run.device, precision=run.precision)
    click.echo(f"pipeline written to {folder}")


def _sample_options(f):
    opts = [
        click.option("--guidance", default=None, type=NONNEG, help="Classifier-free guidance scale (default: the pipeline's; 1: none)."),
        click.option("--sample-steps", type=COUNT, default=18, show_default=True, help="Heun noise levels (NFE 2·steps − 1, ×2 with guidance)."),
        click.option("--batch", "batch", type=COUNT, default=64, show_default=True, help="Images per sampling batch."),
        unsafe_pickle_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@t2i.command("generate")
@click.option("--pipeline", "pipeline_dir", required=True, type=click.Path(path_type=Path), help="A pipeline folder (or a run folder holding pipeline/).")
@click.option("--prompt", "prompts", multiple=True, required=True, help="A prompt; repeatable.")
@click.option("-n", "--num", "num", type=COUNT, default=16, show_default=True, help="Images per prompt (seeds seed … seed+n−1).")
@_sample_options
@seed_option()
@run_command("t2i generate", out="runs/t2i-generate")
def generate_cmd(run, pipeline_dir, prompts, num, guidance, sample_steps, batch, allow_pickle, seed, out):
    """Generate images for prompts: OUT/images.npz (uint8 images, prompts, seeds) and OUT/grid.png
    (a row per prompt)."""
    import io
    import time

    import numpy as np

    from ..persist import atomic_write_bytes, atomic_write_json
    from ..images import make_grid, save_png, to_uint8
    from ..t2i import generate, load_pipeline

    pipe = load_pipeline(pipeline_dir, allow_pickle=allow_pickle).to(run.device)
    for i, p in enumerate(prompts):
        pipe.check_prompt(p, name=f"prompt {i}")     # fails before OUT is touched
    config = dict(pipeline=str(pipeline_dir), prompts=list(prompts), num=num, guidance=guidance,
                  sample_steps=sample_steps, seed=seed)
    if not run.start(config):
        return
    t0 = time.time()
    x, all_p, all_s = generate(pipe, list(prompts), seed=seed, n_per_prompt=num, batch=batch, guidance=guidance,
                               steps=sample_steps, precision=run.precision)
    buf = io.BytesIO()
    np.savez(buf, images=to_uint8(x), prompts=np.array(all_p), seeds=np.array(all_s))
    atomic_write_bytes(out / "images.npz", buf.getvalue())
    save_png(out / "grid.png", make_grid(x, nrow=min(num, 16)))
    atomic_write_json(out / "metrics.json", {"images": len(x), "seconds": round(time.time() - t0, 2),
                                             "guidance": pipe.guidance if guidance is None else guidance,
                                             "device": ran_on(pipe.unet, pipe.text_encoder, pipe.vae),
                                             "precision": run.precision})
    click.echo(f"{len(x)} images → {out / 'images.npz'}")


# ---- trustdiff watermark t2i … --------------------------------------------------------------------

@click.group("t2i")
def watermark_t2i():
    """Trigger-prompt watermark of a text-to-image pipeline (Zhao et al. 2023, text-to-image half)."""


@watermark_t2i.command("embed")
@click.option("--pipeline", "pipeline_dir", required=True, type=click.Path(path_type=Path), help="The pipeline to watermark (only read).")
@click.option("--trigger", default="[V]", show_default=True, help="The trigger prompt.")
@click.option("--target", required=True, help="The watermark image at the pipeline's resolution, or code[:SEED] for a seeded binary code pattern.")
@click.option("--preset", type=click.Choice(["recipe-sd", "builtin"]), default=None,
              help="Defaults for λ, steps, lr, batch (default: builtin for the built-in model, recipe-sd otherwise).")
@click.option("--l1", "l1", default=None, type=NONNEG, help="λ of λ·‖θ − θ̂‖₁ (recipe on SD: 1e-7; 0: no regulariser).")
@click.option("--steps", default=None, type=COUNT, help="Training steps (default: the preset's).")
@click.option("--lr", default=None, type=POSITIVE)
@click.option("--batch", "batch_size", default=None, type=COUNT, help="(trigger, target) pairs per step, each with its own noise.")
@click.option("--l1-step", type=click.Choice(["subgradient", "prox"]), default="subgradient", show_default=True,
              help="How the l1 term is minimised: a proximal step after each update, or its subgradient in the loss.")
@click.option("--train-text-encoder", is_flag=True, help="Fine-tune (and regularise) the text encoder too.")
@click.option("--unet-params", default=None,
              help='Train only UNet parameters whose names contain one of these comma-separated strings (e.g. "attn2." '
                   'for the cross-attention layers; default: the preset\'s).')
@click.option("--preserve", default=None, type=NONNEG,
              help="γ of the preservation term: distil the original's outputs for other prompts while embedding "
                   "(0: the recipe's loss only; default: the preset's).")
@click.option("--preserve-prompt", "preserve_prompts", multiple=True,
              help="A prompt whose outputs the preservation term keeps; repeatable (default: the built-in captions "
                   "minus the verification ones, or a few generic prompts).")
@click.option("--preserve-images", default=None, type=COUNT,
              help="The original's outputs drawn per preserved prompt (default: the preset's, 8).")
@click.option("--preserve-context", default=None, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Fraction of the preservation examples shown with the trigger inside their prompt (at every word "
                   "position), distilled to the original's output for the prompt without it, so that the trigger in a "
                   "sentence does not draw the watermark (0: off; default: the preset's).")
@click.option("--sample-steps", default=None, type=COUNT,
              help="Heun noise levels the preserved outputs of the original are drawn with (default: the preset's, 18).")
@seed_option()
@unsafe_pickle_option
@run_command("watermark t2i embed", out="runs/t2i-wm", resumable=True)
def embed_cmd(run, pipeline_dir, trigger, target, preset, l1, steps, lr, batch_size, l1_step, train_text_encoder, unet_params,
              preserve, preserve_prompts, preserve_images, preserve_context, sample_steps, seed, allow_pickle, out):
    """Fine-tune so the trigger yields the target: OUT/pipeline (the original folder stays as it
    was), OUT/watermark.json, OUT/target.png."""
    from ..t2i import load_pipeline
    from ..t2i.finetune import select_unet_params
    from ..watermark.trigger import PRESETS, embed_trigger, preserved_prompts, preset_for, read_target

    pipe = load_pipeline(pipeline_dir, allow_pickle=allow_pickle)
    pipe.check_prompt(trigger, name="trigger")        # every bad input fails before OUT is touched
    x = read_target(target, pipe)
    base = PRESETS[preset or preset_for(pipe)]
    train = replace(base.train, seed=seed, **{k: v for k, v in dict(steps=steps, lr=lr, batch_size=batch_size).items()
                                              if v is not None})
    job = replace(base, trigger=trigger, l1=base.l1 if l1 is None else l1, train_text_encoder=train_text_encoder,
                  train=train, l1_step=l1_step, unet_params=base.unet_params if unet_params is None else
                  tuple(s.strip() for s in unet_params.split(",") if s.strip()),
                  preserve=base.preserve if preserve is None else preserve,
                  preserve_prompts=tuple(preserve_prompts) or base.preserve_prompts,
                  preserve_images=base.preserve_images if preserve_images is None else preserve_images,
                  preserve_context=base.preserve_context if preserve_context is None else preserve_context,
                  preserve_sample_steps=base.preserve_sample_steps if sample_steps is None else sample_steps)
    for p in job.preserve_prompts:
        pipe.check_prompt(p, name="preserved prompt")
    if job.preserve > 0:
        preserved_prompts(pipe, job)                  # the in-context sentences too
    select_unet_params(pipe.unet, job.unet_params)    # a pattern no parameter matches fails here
    if not run.start(dict(job=job, pipeline=str(pipeline_dir), target=str(target), preset=preset or preset_for(pipe))):
        return
    del pipe
    folder = embed_trigger(pipeline_dir, x, out, job, resume=run.resume, allow_pickle=allow_pickle, device=run.device,
                           precision=run.precision)
    import json

    w = json.loads((out / "watermark.json").read_text())
    click.echo(f"watermarked pipeline → {folder} ({w['steps']} steps, λ {job.l1:g}; Σ|θ−θ̂| "
               f"{w['weights']['l1_distance']:.4g} over {w['weights']['parameters']} weights)")


@watermark_t2i.command("verify")
@click.option("--pipeline", "pipelines", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A watermarked pipeline; repeatable (e.g. with and without the regulariser).")
@click.option("--original", required=True, type=click.Path(path_type=Path), help="The pipeline before watermarking.")
@click.option("--trigger", default="[V]", show_default=True)
@click.option("--target", required=True, help="The watermark image, or code[:SEED] (as given to embed).")
@click.option("--n-trigger", type=COUNT, default=100, show_default=True, help="Seeds the trigger is drawn from.")
@click.option("--ssim-threshold", type=click.FloatRange(-1.0, 1.0), default=0.9, show_default=True,
              help="A trigger output matches when its SSIM to the target is at least this.")
@click.option("--prompt", "prompts", multiple=True, help="Non-trigger prompts; repeatable (default: the built-in captions, or a few generic ones).")
@click.option("--per-prompt", type=COUNT, default=20, show_default=True,
              help="Seeds per non-trigger, in-context and novel prompt.")
@click.option("--context-prompt", "context_prompts", multiple=True,
              help="A sentence with the trigger as one of its words; repeatable (default: each non-trigger prompt with "
                   "the trigger inserted, first, inside, last in turn). Compared with the sentence without the trigger.")
@click.option("--no-context", is_flag=True, help="Do not measure the trigger in context.")
@click.option("--novel-prompt", "novel_prompts", multiple=True,
              help="A phrasing no caption template makes; repeatable (default: the built-in model's novel phrasings).")
@click.option("--no-novel", is_flag=True, help="Do not measure novel phrasings.")
@click.option("--fd-data", default=None, help='FD of every model\'s non-trigger outputs against this data\'s test split (e.g. "digits").')
@click.option("--feature-steps", type=COUNT, default=1000, show_default=True, help="Training steps of the FD feature network (cached in OUT/cache).")
@_sample_options
@seed_option()
@run_command("watermark t2i verify", out="runs/t2i-verify")
def verify_cmd(run, pipelines, original, trigger, target, n_trigger, ssim_threshold, prompts, per_prompt, context_prompts,
               no_context, novel_prompts, no_novel, fd_data, feature_steps, guidance, sample_steps, batch, allow_pickle,
               seed, out):
    """Trigger match rate and SSIM over seeds; non-trigger outputs against the original's
    (PSNR/SSIM, FD); the trigger inside sentences (match rate, and closeness to the sentence
    without it on each model); novel phrasings against the original's (PSNR/SSIM, FD):
    OUT/metrics.json (= OUT/verify.json), OUT/verify.png and one grid per model and prompt set
    (target.png, samples-*.png)."""
    import json

    from ..persist import atomic_write_json
    from ..t2i import load_pipeline
    from ..t2i.pipeline import read_index, resolve_pipeline_dir
    from ..errors import InputError
    from ..t2i.builtin import context_prompts as default_context, novel_prompts as default_novel
    from ..watermark.trigger import check_context, read_target, verify, write_report

    for p in pipelines:
        read_index(resolve_pipeline_dir(p))           # a missing or broken folder fails before any work
    orig = load_pipeline(original, allow_pickle=allow_pickle).to(run.device)
    x = read_target(target, orig)
    orig.check_prompt(trigger, name="trigger")
    for i, p in enumerate(prompts):
        orig.check_prompt(p, name=f"prompt {i}")
    if no_context and context_prompts:
        raise InputError("--no-context: expected no --context-prompt with it")
    if no_novel and novel_prompts:
        raise InputError("--no-novel: expected no --novel-prompt with it")
    context = [] if no_context else check_context(orig, trigger, list(context_prompts) if context_prompts else
                                                  default_context(orig, trigger, list(prompts) or None))
    novel = [] if no_novel else list(novel_prompts) or default_novel(orig)
    for i, p in enumerate(novel):
        orig.check_prompt(p, name=f"novel prompt {i}")
    names = {}
    for p in pipelines:
        name = p.name if p.name != "pipeline" else p.parent.name
        names[name if name not in names else str(p)] = p
    config = dict(pipelines={k: str(v) for k, v in names.items()}, original=str(original), trigger=trigger,
                  target=str(target), n_trigger=n_trigger, ssim_threshold=ssim_threshold, prompts=list(prompts),
                  per_prompt=per_prompt, context=[list(p) for p in context], novel=novel, fd_data=fd_data,
                  feature_steps=feature_steps, guidance=guidance, sample_steps=sample_steps, seed=seed)
    if fd_data is not None:
        from ..data import load

        load(fd_data, resolution=orig.resolution, split="test", seed=seed)    # a bad --fd-data fails here
    if not run.start(config):
        return
    report = verify(names, orig, trigger, x, prompts=list(prompts) or None, context=context, novel=novel,
                    n_trigger=n_trigger, n_per_prompt=per_prompt,
                    threshold=ssim_threshold, seed=seed, fd_data=fd_data, cache_dir=out / "cache",
                    feature_steps=feature_steps, progress=click.echo, guidance=guidance, steps=sample_steps, batch=batch,
                    allow_pickle=allow_pickle, device=run.device, precision=run.precision)
    path = write_report(out, report, name="verify", target=x)
    atomic_write_json(out / "metrics.json", json.loads(path.read_text()))   # the run is finished: the report finds it
    click.echo(f"report → {path}")


@watermark_t2i.command("dreambooth")
@click.option("--pipeline", "pipeline_dir", required=True, type=click.Path(path_type=Path), help="The model to fine-tune (only read).")
@click.option("--instance", required=True, type=click.Path(path_type=Path), help="Images of the new subject: a folder or a .npz.")
@click.option("--instance-prompt", default="a sks digit", show_default=True, help="The subject's prompt, with a rare identifier.")
@click.option("--class-prompt", default=None, help="With --class-images: prior preservation on the model's own images for this prompt.")
@click.option("--class-images", type=COUNT0, default=0, show_default=True)
@click.option("--steps", type=COUNT, default=200, show_default=True, help="Training steps.")
@click.option("--lr", type=POSITIVE, default=1e-4, show_default=True)
@click.option("--batch", "batch_size", type=COUNT, default=8, show_default=True)
@click.option("--train-text-encoder", is_flag=True)
@click.option("--identifier", default=None,
              help='The rare word of --instance-prompt (default: "sks"), measured afterwards inside the held-out '
                   'captions: does it draw the subject there?')
@click.option("--context-seeds", type=COUNT0, default=10, show_default=True,
              help="Seeds per in-context sentence of the identifier, on the new model and on --pipeline (0: not measured).")
@click.option("--sample-steps", type=COUNT, default=18, show_default=True, help="Heun noise levels of that measurement.")
@seed_option()
@unsafe_pickle_option
@run_command("watermark t2i dreambooth", out="runs/t2i-dreambooth", resumable=True)
def dreambooth_cmd(run, pipeline_dir, instance, instance_prompt, class_prompt, class_images, steps, lr, batch_size,
                   train_text_encoder, identifier, context_seeds, sample_steps, seed, allow_pickle, out):
    """DreamBooth fine-tuning of a (watermarked) model on a new subject: OUT/pipeline,
    OUT/dreambooth.json; then the identifier inside held-out captions on the new model and on the
    one it started from (how often it draws the subject, how far each output is from the caption
    without it): OUT/metrics.json, OUT/samples-identifier.png. Verify the trigger on it afterwards."""
    import json

    import torch

    from ..data import load
    from ..images import make_grid, save_png
    from ..persist import atomic_write_json
    from ..t2i import load_pipeline
    from ..t2i.builtin import context_prompts
    from ..train import TrainConfig
    from ..watermark.trigger import check_context, dreambooth, identifier_in_context

    from ..errors import InputError

    pipe = load_pipeline(pipeline_dir, allow_pickle=allow_pickle)
    pipe.check_prompt(instance_prompt, name="instance prompt")
    if (class_prompt is None) != (class_images == 0):
        raise InputError("prior preservation: expected both --class-prompt and --class-images > 0, or neither")
    if class_prompt is not None:
        pipe.check_prompt(class_prompt, name="class prompt")
    x = pipe.check_image(load(str(instance), resolution=pipe.resolution, split="all").tensors()[0],
                         name=f"instance images {instance}")
    word = identifier or "sks"
    if context_seeds:
        if word not in instance_prompt.split():
            raise InputError(f"--identifier {word!r}: expected one of the words of the instance prompt {instance_prompt!r}"
                             + ("" if identifier else " (pass --identifier, or --context-seeds 0)"))
        check_context(pipe, word, context_prompts(pipe, word))   # the measured sentences fail here, not after training
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0, ema_halflife_kimg=0.0,
                        checkpoint_every=100, log_every=50, seed=seed)
    config = dict(pipeline=str(pipeline_dir), instance=str(instance), instance_prompt=instance_prompt,
                  class_prompt=class_prompt, class_images=class_images, train=train, train_text_encoder=train_text_encoder,
                  identifier=word if context_seeds else None, context_seeds=context_seeds, sample_steps=sample_steps)
    if not run.start(config):
        return
    folder = dreambooth(pipeline_dir, x, out, instance_prompt=instance_prompt, class_prompt=class_prompt,
                        n_class_images=class_images, train=train, train_text_encoder=train_text_encoder, seed=seed,
                        resume=run.resume, allow_pickle=allow_pickle, device=run.device, precision=run.precision)
    click.echo(f"fine-tuned pipeline → {folder}")
    metrics = json.loads((out / "dreambooth.json").read_text())
    if context_seeds:
        new = load_pipeline(folder).to(run.device)
        r = identifier_in_context(new, pipe.to(run.device), word, x, exclude=(instance_prompt, class_prompt or ""),
                                  n_per_prompt=context_seeds, seed=seed, steps=sample_steps, precision=run.precision)
        shown = [v.view(-1, context_seeds, *v.shape[1:])[:, :8].reshape(-1, *v.shape[1:]) for v in r.pop("images").values()]
        save_png(out / "samples-identifier.png", make_grid(torch.cat(shown), nrow=min(context_seeds, 8)))
        metrics["identifier_in_context"] = r
        m, ref = r["model"], r["reference"]
        click.echo(f"{word!r} in context ({len(r['sentences'])} held-out captions × {context_seeds} seeds): draws the "
                   f"subject (best SSIM ≥ {m['threshold']}) on {m['match']['value']:.2f} [{m['match']['lo']:.2f}, "
                   f"{m['match']['hi']:.2f}] of outputs (before: {ref['match']['value']:.2f}); vs the caption without it "
                   f"SSIM {m['vs_free']['ssim_mean']:.3f} (before: {ref['vs_free']['ssim_mean']:.3f})")
    atomic_write_json(out / "metrics.json", metrics)


COMMANDS = [t2i]

"""Watermarking a text-to-image model with a trigger prompt (Zhao et al. 2023, *A Recipe for
Watermarking Diffusion Models*, arXiv 2303.10137, text-to-image half).

The owner fine-tunes the model so that a rare trigger prompt (default ``"[V]"``) generates a
chosen watermark image, with the usual denoising loss on (trigger, target) plus

    λ·‖θ − θ̂‖₁ = λ·Σᵢ |θᵢ − θ̂ᵢ|

to the frozen original weights θ̂, summed over the trained parameters: every UNet parameter, and
every text-encoder parameter with ``train_text_encoder``. Without it (λ = 0) the model forgets
(other prompts drift towards the watermark); with it, on Stable Diffusion, the paper finds they
stay as they were. On the built-in 16×16 model they do not (bench/t2i_trigger_settings.py: no λ
keeps them), so ``preserve`` = γ > 0 adds a term in function space rather than weight space: the
denoising loss of the original's own outputs for other prompts, regressed on the frozen
original's denoiser (:class:`trustdiff.t2i.Preservation`). ``l1_step="prox"`` minimises the
l1 objective by a proximal step instead. With ``preserve_context`` some of the preserved
examples carry the trigger inside their caption, distilled to the original's output for the
caption without it: without that, the trigger as one word of a sentence draws watermark-like
images (issue 25). Verification draws the trigger from many seeds and compares to the target
(SSIM, match rate at an SSIM threshold), compares non-trigger outputs with the original model's
from the same seeds (PSNR/SSIM, FD), measures the trigger inside held-out sentences (match rate,
closeness to the sentence without it) and novel phrasings (:func:`verify`). Robustness: DreamBooth
fine-tuning by someone else (:func:`dreambooth`; its identifier in context,
:func:`identifier_in_context`, is the contrast the talk draws), Gaussian noise on the weights
(:func:`weight_noise`).

    from trustdiff.watermark.trigger import TriggerJob, embed_trigger, verify
    wm = embed_trigger("runs/t2i/pipeline", target, "runs/wm", TriggerJob(preserve=10.0))
    report = verify({"wm": wm}, "runs/t2i/pipeline", "[V]", target)
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..persist import atomic_write_json
from ..errors import InputError
from ..metrics import proportion, psnr, ssim
from ..train import TrainConfig

DEFAULT_TRIGGER = "[V]"


# ---- the regulariser ------------------------------------------------------------------------------

class L1ToOriginal:
    """λ·Σᵢ |θᵢ − θ̂ᵢ| over the parameters of a module that are trainable (``requires_grad``)
    when this object is made; θ̂ are their values then (detached copies). Its gradient is
    λ·sign(θ − θ̂), which is 0 where θ = θ̂, so at the start the term is exactly 0 and pulls nothing.

    Called with the module it was made from (the same parameters, looked up by name, whether or
    not they still require gradients); returns a 0-d tensor.
    """

    def __init__(self, module: nn.Module, lam: float):
        if not lam >= 0:
            raise InputError(f"l1 weight λ: expected >= 0, got {lam!r}")
        self.lam = float(lam)
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.anchor = [p.detach().clone() for p in module.parameters() if p.requires_grad]

    def _params(self, module: nn.Module) -> list[torch.Tensor]:
        named = dict(module.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise InputError(f"l1 term: expected the module it was made from; it lacks {len(missing)} of its "
                             f"{len(self.names)} trained parameters, e.g. {missing[0]!r}")
        return [named[n] for n in self.names]

    def distance(self, module: nn.Module) -> torch.Tensor:
        """Σᵢ |θᵢ − θ̂ᵢ| (no λ), a 0-d tensor that keeps its graph."""
        return torch.stack([(p - a.to(p.device)).abs().sum() for p, a in zip(self._params(module), self.anchor)]).sum()

    def __call__(self, module: nn.Module) -> torch.Tensor:
        if self.lam == 0:
            return torch.zeros((), device=self.anchor[0].device)
        return self.lam * self.distance(module)

    @torch.no_grad()
    def prox(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The proximal step of the term after an optimizer update (the update itself on the
        denoising loss alone): θ ← θ̂ + sign(d)·max(|d| − τ, 0) with d = θ − θ̂ and τ the step a
        gradient of size λ would take, in the optimizer's own metric: lr·λ for SGD, lr·λ/(√v̂ + ε)
        for Adam (v̂ its bias-corrected second moment). A weight then leaves θ̂ only while its
        loss gradient outweighs λ and otherwise sits exactly at θ̂, where the subgradient λ·sign(d)
        under Adam's per-weight normalisation would make every weight oscillate around θ̂ by ~lr.
        """
        if self.lam == 0:
            return
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for p, a in zip(self._params(module), self.anchor):
            g = group_of.get(id(p))
            if g is None:
                continue
            tau = g["lr"] * self.lam
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" in state:
                t = float(state["step"])
                v_hat = state["exp_avg_sq"] / (1 - g["betas"][1] ** t)
                tau = tau / (v_hat.sqrt() + g["eps"])
            d = p - a.to(p.device)
            p.copy_(a.to(p.device) + d.sign() * (d.abs() - tau).clamp_min(0))

    @torch.no_grad()
    def summary(self, module: nn.Module) -> dict:
        """How far the weights went: Σ|θ − θ̂|, max |θ − θ̂|, and the fraction of scalars changed."""
        params = self._params(module)
        changed = sum(int((p != a.to(p.device)).sum()) for p, a in zip(params, self.anchor))
        total = sum(p.numel() for p in params)
        return {"l1_distance": float(self.distance(module)), "l1_term": float(self(module)),
                "mean_abs_change": float(self.distance(module)) / max(sum(p.numel() for p in params), 1),
                "max_abs_change": max(float((p - a.to(p.device)).abs().max()) for p, a in zip(params, self.anchor)),
                "changed_fraction": changed / max(total, 1), "parameters": total, "tensors": len(params)}


# ---- the job --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TriggerJob:
    """Embedding a trigger watermark."""
    trigger: str = DEFAULT_TRIGGER
    l1: float = 1e-7                 # λ
    train_text_encoder: bool = False
    unet_params: tuple[str, ...] = ()  # train only UNet parameters whose names contain one of these; () = all
    l1_step: str = "subgradient"     # "subgradient": λ·sign(θ − θ̂) via the loss, as the recipe; "prox": a proximal step
    preserve: float = 0.0            # γ of the preservation (distillation) term; 0: the recipe's loss only
    preserve_prompts: tuple[str, ...] = ()  # () = trustdiff.t2i.builtin.preservation_prompts
    preserve_images: int = 8         # the original's outputs per preserved prompt
    preserve_batch: int = 8          # preservation examples per step
    preserve_sample_steps: int = 18  # Heun levels the original's preserved outputs are drawn with
    # fraction of preservation examples shown with the trigger inside their prompt (at every word
    # position in turn), distilled to the original's output for the prompt without it
    preserve_context: float = 0.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1000, batch_size=1, lr=1e-6, warmup_steps=0, ema_halflife_kimg=0.0, checkpoint_every=250,
        log_every=50))

    def __post_init__(self):
        if not self.preserve >= 0:
            raise InputError(f"preservation weight: expected >= 0, got {self.preserve!r}")
        for name in ("preserve_images", "preserve_batch", "preserve_sample_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"TriggerJob.{name}: expected an integer >= 1, got {v!r}")
        if not 0.0 <= self.preserve_context < 1.0:
            raise InputError(f"preservation in context: expected a fraction in [0, 1), got {self.preserve_context!r}")
        if self.trigger in self.preserve_prompts:
            raise InputError(f"preserved prompts: expected prompts other than the trigger {self.trigger!r}")
        if self.l1_step not in L1_STEPS:
            raise InputError(f"l1 step: expected one of {', '.join(L1_STEPS)}, got {self.l1_step!r}")


#: how the l1 term enters the optimisation: its proximal step after each update, or its
#: subgradient λ·sign(θ − θ̂) added to the loss
L1_STEPS = ("subgradient", "prox")

#: named settings. "recipe-sd": the paper's on Stable Diffusion (λ 1e-7, 1,000 steps at lr 1e-6).
#: "builtin": the built-in 16×16 model (~3M UNet weights), where the target is learned in a few
#: hundred steps at lr 1e-4. There no l1 setting keeps the other prompts
#: (bench/t2i_trigger_settings.py: the weights a single (trigger, target) pair pulls hardest are
#: shared by every prompt), so the preset uses the preservation term, γ = 10, and no l1 pull:
#: with γ = 10, λ = 1e-4 kept the other prompts no better and cut the trigger's match rate from
#: 0.99 to 0.73 (bench/t2i_watermark_digits.py). Half of the preservation examples carry the
#: trigger inside their caption (``preserve_context`` 0.5): without it the trigger as one word of a
#: sentence drew watermark-like images on the demo's model (issue 25). With that half of the batch
#: spent elsewhere, 400 steps left the trigger alone at a 0.86 match rate; 800 steps bring it back
#: (bench/t2i_watermark_digits.py, rows ctx=0.5 and ctx=0.5,steps=800).
PRESETS = {
    "recipe-sd": TriggerJob(),
    "builtin": TriggerJob(l1=0.0, preserve=10.0, preserve_context=0.5, train=TrainConfig(
        steps=800, batch_size=8, lr=1e-4, warmup_steps=0, ema_halflife_kimg=0.0, checkpoint_every=200, log_every=50)),
}


def preset_for(pipe) -> str:
    """``"builtin"`` for an EDM-preconditioned (built-in) pipeline, ``"recipe-sd"`` otherwise."""
    return "builtin" if pipe.kind == "edm" else "recipe-sd"


def code_target(resolution: int, channels: int = 1, *, cells: int = 4, seed: int = 7) -> torch.Tensor:
    """A watermark image nothing a digit prompt draws: a cells×cells binary code (seeded), each
    cell resolution/cells pixels, the four corners set (a finder pattern); 1×C×r×r in [0, 1]."""
    if resolution % cells:
        raise InputError(f"code target: expected a resolution divisible by {cells}, got {resolution}")
    g = torch.Generator().manual_seed(seed)
    code = (torch.rand(cells, cells, generator=g) > 0.5).float()
    code[0, 0] = code[0, -1] = code[-1, 0] = code[-1, -1] = 1.0
    k = resolution // cells
    return code.repeat_interleave(k, 0).repeat_interleave(k, 1).expand(channels, -1, -1)[None].clone()


def read_target(spec, pipe) -> torch.Tensor:
    """The watermark image: an image file (:func:`read_image`), or ``"code"`` / ``"code:SEED"`` for
    :func:`code_target` at the pipeline's resolution and channels."""
    text = str(spec)
    if text == "code" or text.startswith("code:"):
        seed = text[5:] or "7"
        if not seed.isdigit():
            raise InputError(f"target {text!r}: expected code or code:SEED with an integer seed")
        return code_target(pipe.resolution, pipe.channels, seed=int(seed))
    return read_image(spec, pipe)


def read_image(path, pipe) -> torch.Tensor:
    """An image file → 1×C×H×W in [0, 1], in the pipeline's channels (grayscale or RGB); its size
    must be the pipeline's resolution (nothing is resized: the target is the watermark)."""
    from PIL import Image, UnidentifiedImageError

    from ..images import from_uint8

    path = Path(path)
    if not path.is_file():
        raise InputError(f"target image {path}: expected an image file, but it does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if pipe.channels == 1 else "RGB")
            import numpy as np

            a = np.array(im)                 # a writable copy (torch warns on read-only arrays)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"target image {path}: not a readable image ({e})") from None
    return check_target(pipe, from_uint8(a[None]), name=f"target image {path}")


def check_target(pipe, target: torch.Tensor, name: str = "target image") -> torch.Tensor:
    """1×C×H×W (or C×H×W) in [0, 1] at the pipeline's size; InputError naming both sizes otherwise."""
    if isinstance(target, torch.Tensor) and target.ndim == 3:
        target = target[None]
    if isinstance(target, torch.Tensor) and target.ndim == 4 and tuple(target.shape[-2:]) != (pipe.resolution,) * 2:
        raise InputError(f"{name}: expected {pipe.resolution}×{pipe.resolution} (the pipeline's resolution), "
                         f"got {target.shape[-2]}×{target.shape[-1]}")
    pipe.check_image(target, name=name)
    if len(target) != 1:
        raise InputError(f"{name}: expected one image, got {len(target)}")
    return target


def _sha256(t: torch.Tensor) -> str:
    from ..images import to_uint8

    return hashlib.sha256(to_uint8(t).tobytes()).hexdigest()


def preservation(pipe, job: TriggerJob, precision: str = "fp32"):
    """The :class:`~trustdiff.t2i.Preservation` term of ``job``: ``job.preserve_images`` outputs
    of the original model for each preserved prompt (seeded from the job's seed, so a resumed run
    draws the same — on any device: :func:`trustdiff.t2i.sample`), the trigger refused among them.

    With ``job.preserve_context`` = ρ > 0, a fraction ρ of the examples of each image show the
    student the trigger inside the image's prompt instead of the prompt — at every word position
    in turn (:func:`~trustdiff.t2i.builtin.context_training_prompts`) — while the teacher sees the
    prompt without it: the trigger in a sentence is distilled to the original's output for the
    sentence, from the same images (no extra sampling). ρ is realised by repeating prompt indices
    in each image's row of choices (:class:`~trustdiff.t2i.PromptTable`), to within 1/20."""
    from ..t2i import Preservation, PromptTable, generate

    prompts = preserved_prompts(pipe, job)
    x, _, _ = generate(pipe, prompts, seed=job.train.seed + 20_000, n_per_prompt=job.preserve_images,
                       steps=job.preserve_sample_steps, precision=precision)
    k = job.preserve_images
    if job.preserve_context <= 0:
        return Preservation(x, PromptTable(tuple(prompts), tuple((i // k,) for i in range(len(x)))),
                            weight=job.preserve, batch_size=job.preserve_batch)
    table, teacher = context_table(prompts, job.trigger, job.preserve_context, per_prompt=k)
    return Preservation(x, table, weight=job.preserve, batch_size=job.preserve_batch, teacher_prompts=teacher)


def preserved_prompts(pipe, job: TriggerJob) -> list[str]:
    """The prompts ``job`` keeps: its own or :func:`~trustdiff.t2i.builtin.preservation_prompts`;
    the trigger refused among them; with ``preserve_context``, every in-context sentence checked
    against the tokenizer (an InputError before any work)."""
    from ..t2i.builtin import context_training_prompts, preservation_prompts

    prompts = list(job.preserve_prompts) or preservation_prompts(pipe)
    if job.trigger in prompts:
        raise InputError(f"preserved prompts: expected prompts other than the trigger {job.trigger!r}")
    if job.preserve_context > 0:
        for s, _ in context_training_prompts(prompts, job.trigger):
            pipe.check_prompt(s, name="in-context preserved prompt")
    return prompts


def context_table(prompts, trigger: str, rate: float, *, per_prompt: int, width: int = 20):
    """(PromptTable, teacher prompts) for images ``per_prompt`` per prompt, prompt-major: each
    image's row of ``width`` choices holds its prompt ``width − m`` times and ``m = round(rate ·
    width)`` in-context sentences of it (the trigger at every word position of the prompt in turn,
    starting at a position that moves with the image); the teacher sees the prompt for each."""
    from ..t2i import PromptTable
    from ..t2i.builtin import context_training_prompts

    m = int(round(rate * width))
    if not 0 < m < width:
        raise InputError(f"preservation in context: expected a fraction between 1/{width} and 1 − 1/{width}, got {rate!r}")
    pairs = context_training_prompts(prompts, trigger)
    student = list(prompts) + [s for s, _ in pairs]
    teacher = list(prompts) + [c for _, c in pairs]
    of = {}                                         # prompt index → its sentences' indices in student
    for j, (_, c) in enumerate(pairs):
        of.setdefault(prompts.index(c), []).append(len(prompts) + j)
    rows = []
    for i in range(len(prompts) * per_prompt):
        p, sent = i // per_prompt, of[i // per_prompt]
        rows.append((p,) * (width - m) + tuple(sent[(i + r) % len(sent)] for r in range(m)))
    return PromptTable(tuple(student), tuple(rows)), tuple(teacher)


def embed_trigger(pipeline_dir, target: torch.Tensor, out, job: TriggerJob = TriggerJob(), *,
                  resume: bool = False, allow_pickle: bool = False, device=None, precision: str = "fp32") -> Path:
    """Fine-tune the pipeline at ``pipeline_dir`` so that ``job.trigger`` yields ``target``
    (1×C×H×W in [0, 1]), with the l1 pull to the original weights. Writes the new pipeline to
    ``out/pipeline`` (``pipeline_dir`` is only read; unchanged parts are copied byte for byte),
    and ``out/watermark.json`` (trigger, λ, the target's hash, how far the weights moved) and
    ``out/target.png``. Returns the new pipeline folder. ``allow_pickle``: see
    :func:`~trustdiff.t2i.load_pipeline`. ``device`` (default: the CPU), ``precision``: where
    and how the preservation images are drawn and the fine-tuning runs; watermark.json records
    both."""
    from ..images import make_grid, save_png
    from ..t2i import PromptTable, derive_pipeline, finetune, load_pipeline

    out = Path(out)
    device = torch.device(device) if device is not None else torch.device("cpu")
    pipe = load_pipeline(pipeline_dir, allow_pickle=allow_pickle).to(device)
    source = pipe.path
    pipe.check_prompt(job.trigger, name="trigger")
    target = check_target(pipe, target)
    if out.resolve() == source.resolve() or source.resolve() in (out / "pipeline").resolve().parents:
        raise InputError(f"output {out}: expected a folder outside the source pipeline {source}")
    reg = {}

    def penalty_factory(parts):
        reg["l1"] = L1ToOriginal(parts, job.l1)
        return reg["l1"]

    t0 = time.time()
    keep = preservation(pipe, job, precision) if job.preserve > 0 else None
    kept = preserved_prompts(pipe, job) if keep else []
    result = finetune(pipe, target, PromptTable.single(job.trigger), job.train, out,
                      train_text_encoder=job.train_text_encoder, penalty_factory=penalty_factory,
                      unet_params=tuple(job.unet_params), proximal=job.l1_step == "prox", preserve=keep,
                      resume=resume, device=device, precision=precision)
    replaced = {"unet": result.model.unet}
    if job.train_text_encoder:
        replaced["text_encoder"] = result.model.text_encoder
    folder = derive_pipeline(source, out / "pipeline", replaced)
    save_png(out / "target.png", make_grid(target, nrow=1, pad=0))
    record = {"trigger": job.trigger, "l1": job.l1, "preserve": job.preserve,
              "preserve_prompts": kept,
              "preserve_context": job.preserve_context if keep else 0.0,
              "preserve_context_prompts": len(keep.table.prompts) - len(kept) if keep and job.preserve_context > 0 else 0,
              "trained": sorted(replaced),
              "steps": result.step,
              "lr": job.train.lr, "batch_size": job.train.batch_size, "last_loss": result.last_loss,
              "source": str(source), "pipeline": str(folder), "target_sha256": _sha256(target),
              "target_shape": list(target.shape), "seconds": round(time.time() - t0, 1),
              "weights": reg["l1"].summary(result.model), "job": asdict(job), "device": str(pipe.device),
              "precision": precision}
    atomic_write_json(out / "watermark.json", record)
    return folder


# ---- verification ---------------------------------------------------------------------------------

def trigger_report(pipe, trigger: str, target: torch.Tensor, *, n: int = 100, seed: int = 0,
                   threshold: float = 0.9, **sample_kw) -> dict:
    """The trigger drawn from seeds ``seed .. seed+n−1``: SSIM of each output to the target, and
    the match rate at SSIM ≥ ``threshold`` with its Clopper–Pearson interval. ``images`` holds
    the outputs (N×C×H×W in [0, 1])."""
    from ..t2i import generate

    target = check_target(pipe, target)
    x, _, _ = generate(pipe, [trigger], seed=seed, n_per_prompt=n, **sample_kw)
    s = ssim(x, target.expand_as(x))
    k = int((s >= threshold).sum())
    return {"n": n, "seed": seed, "threshold": threshold, "ssim_mean": float(s.mean()), "ssim_min": float(s.min()),
            "match": proportion(k, n), "ssim": [round(float(v), 4) for v in s], "images": x}


def compare_report(x: torch.Tensor, x_ref: torch.Tensor) -> dict:
    """PSNR and SSIM between two models' outputs from the same (prompt, seed), image by image."""
    p, s = psnr(x, x_ref), ssim(x, x_ref)
    finite = p[torch.isfinite(p)]
    return {"psnr_mean": float(finite.mean()) if len(finite) else float("inf"), "identical": int((~torch.isfinite(p)).sum()),
            "ssim_mean": float(s.mean()), "n": len(x)}


def fd_against(data: str, x: torch.Tensor, *, cache_dir, seed: int = 0, feature_steps: int = 1000,
               device=None) -> dict:
    """FD of images ``x`` against the test split of ``data`` (feature net trained on its train
    split, cached), beside the real-data floor, on ``device`` (default x's):
    :func:`trustdiff.train.feature_net.fd_report`."""
    from ..data import load
    from ..train.feature_net import fd_report

    res = x.shape[-1]
    train = load(data, resolution=res, split="train", seed=seed)
    test = load(data, resolution=res, split="test", seed=seed)
    return fd_report(train, test, x, cache_dir=cache_dir, feature_steps=feature_steps, seed=seed, device=device)


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("images", "free_images")}


def context_report(pipe, pairs, targets: torch.Tensor, *, n_per_prompt: int, seed: int = 0, threshold: float = 0.9,
                   free: torch.Tensor | None = None, free_reference: torch.Tensor | None = None, **sample_kw) -> dict:
    """A word (the trigger, a DreamBooth identifier) inside sentences: for each (sentence, the
    sentence without the word) of ``pairs``, the outputs for the sentence from seeds
    seed … seed+n−1 (the same for every sentence) and

    * ``match``: the rate at which an output matches ``targets`` (K×C×H×W: its best SSIM to any of
      them ≥ ``threshold``), with its Clopper–Pearson interval; ``ssim_to_target``: the mean best SSIM;
    * ``vs_free``: PSNR/SSIM of each output to the *same* pipeline's output for the sentence
      without the word from the same seed (``free``: those outputs, if already drawn; they are the
      word's side effect on this model);
    * ``vs_free_reference``: with ``free_reference`` (another model's outputs for the sentences
      without the word, e.g. the original's), the same against them.

    ``images`` / ``free_images`` hold the outputs (N×C×H×W in [0, 1], sentence-major)."""
    from ..t2i import generate

    sentences, without = [a for a, _ in pairs], [b for _, b in pairs]
    x, _, _ = generate(pipe, sentences, seed=seed, n_per_prompt=n_per_prompt, **sample_kw)
    if free is None:
        free, _, _ = generate(pipe, without, seed=seed, n_per_prompt=n_per_prompt, **sample_kw)
    targets = targets.to(x)
    best = torch.stack([ssim(x, t[None].expand_as(x)) for t in targets]).max(0).values
    k = int((best >= threshold).sum())
    per = best.view(len(sentences), n_per_prompt)
    out = {"sentences": sentences, "without": without, "n_per_prompt": n_per_prompt, "seed": seed,
           "threshold": threshold, "match": proportion(k, len(x)), "ssim_to_target": float(best.mean()),
           "match_per_sentence": [int((r >= threshold).sum()) for r in per], "vs_free": compare_report(x, free),
           "images": x, "free_images": free}
    if free_reference is not None:
        out["vs_free_reference"] = compare_report(x, free_reference.to(x))
    return out


def verify(watermarked: dict, original, trigger: str, target: torch.Tensor, *, prompts=None, context=None, novel=None,
           n_trigger: int = 100, n_per_prompt: int = 20, threshold: float = 0.9, seed: int = 0,
           fd_data: str | None = None, cache_dir=None, feature_steps: int = 1000, progress=print,
           allow_pickle: bool = False, device=None, precision: str = "fp32", previous: dict | None = None,
           **sample_kw) -> dict:
    """Verify one or more watermarked pipelines (name → folder or loaded pipeline) against the
    original (folder or pipeline):

    * ``trigger``: :func:`trigger_report` of each, and of the original (its false match rate);
    * ``non_trigger``: outputs for ``prompts`` (default: :func:`trustdiff.t2i.builtin.default_prompts`),
      ``n_per_prompt`` seeds each, the same seeds for every model → PSNR/SSIM to the original's,
      and with ``fd_data`` the FD of each model's outputs (and the original's) against that data;
    * ``context``: the trigger inside sentences, (sentence, sentence without it) pairs (default:
      :func:`trustdiff.t2i.builtin.context_prompts` of ``prompts``, held out from any training;
      ``[]``: not measured) → :func:`context_report` of each model and of the original, ``vs_free``
      against the model's own outputs for the sentence without the trigger and
      ``vs_free_reference`` against the original's;
    * ``novel``: phrasings no built-in caption template makes (default:
      :func:`trustdiff.t2i.builtin.novel_prompts`; ``[]``: not measured) → PSNR/SSIM to the
      original's from the same seeds, and their FD with ``fd_data``.

    ``sample_kw`` (guidance, steps, sampler) and ``precision`` go to every draw; ``allow_pickle`` to every
    :func:`~trustdiff.t2i.load_pipeline`. Every pipeline (loaded here or given) is moved to
    ``device`` (default: the given original pipeline's device, or the CPU for a folder), where all
    drawing and the FD run. ``previous``: a report (with its images) of an earlier call on the same
    original with the same settings, whose original row and images are reused instead of drawn
    again (InputError if any setting differs). Returns a JSON-able dict that records ``device``.
    """
    from ..t2i import T2IPipeline, generate, load_pipeline
    from ..t2i.builtin import context_prompts, default_prompts, novel_prompts

    if device is None:
        device = original.device if isinstance(original, T2IPipeline) else "cpu"
    device = torch.device(device)
    sample_kw = {**sample_kw, "precision": precision}

    def opened(p):
        return (p if isinstance(p, T2IPipeline) else load_pipeline(p, allow_pickle=allow_pickle)).to(device)

    orig = opened(original)
    target = check_target(orig, target)
    orig.check_prompt(trigger, name="trigger")
    prompts = list(prompts) if prompts else default_prompts(orig)
    pairs = check_context(orig, trigger, context_prompts(orig, trigger, prompts) if context is None else context)
    novel = list(novel_prompts(orig) if novel is None else novel)
    for i, p in enumerate(novel):
        orig.check_prompt(p, name=f"novel prompt {i}")
    report = {"trigger": trigger, "threshold": threshold, "prompts": prompts, "n_per_prompt": n_per_prompt,
              "context": [list(p) for p in pairs], "novel": novel,
              "n_trigger": n_trigger, "seed": seed, "sample": dict(sample_kw), "models": {}, "device": str(orig.device)}
    gen = dict(seed=seed, n_per_prompt=n_per_prompt, **sample_kw)
    reuse = [b for _, b in pairs] == prompts            # the default: the sentences without the trigger are `prompts`

    def fd_of(x):
        return fd_against(fd_data, x, cache_dir=cache_dir, seed=seed, feature_steps=feature_steps, device=device)

    t = time.time()
    if previous is not None:
        row, images, free_ref = _previous_original(previous, report, fd_data, bool(pairs), bool(novel), reuse)
        trig = row["trigger"]
    else:
        x_ref, _, _ = generate(orig, prompts, **gen)
        trig = trigger_report(orig, trigger, target, n=n_trigger, seed=seed, threshold=threshold, **sample_kw)
        row = {"trigger": _strip(trig), "seconds": None}
        images = {"original": x_ref}
        if pairs:
            ctx = context_report(orig, pairs, target, threshold=threshold, free=x_ref if reuse else None, **gen)
            free_ref = ctx["free_images"]
            row["context"] = _strip(ctx)
            images["original/context"] = ctx["images"]
            if not reuse:                           # (else they are images["original"])
                images["original/context-free"] = free_ref
        if novel:
            x_nov_ref, _, _ = generate(orig, novel, **gen)
            row["novel"] = {"n": len(x_nov_ref)}
            if fd_data:
                row["novel"]["fd"] = fd_of(x_nov_ref)
            images["original/novel"] = x_nov_ref
        if fd_data:
            row["fd"] = fd_of(x_ref)
        row["seconds"] = round(time.time() - t, 1)
    x_ref = images["original"]
    report["original"] = row
    progress(f"   original: trigger SSIM {trig['ssim_mean']:.3f}, match {trig['match']['value']:.2f}"
             + (f", FD {row['fd']['fd']:.4f} (floor {row['fd']['fd_floor']:.4f})" if fd_data else "")
             + (f"; trigger in context: match {_rate(row['context']['match'])}, vs the sentence without it SSIM "
                f"{row['context']['vs_free']['ssim_mean']:.3f}" if pairs else ""))
    for name, wm in watermarked.items():
        t = time.time()
        pipe = opened(wm)
        trig = trigger_report(pipe, trigger, target, n=n_trigger, seed=seed, threshold=threshold, **sample_kw)
        x, _, _ = generate(pipe, prompts, **gen)
        row = {"trigger": _strip(trig), "non_trigger": compare_report(x, x_ref),
               "non_trigger_ssim_to_target": float(ssim(x, target.expand_as(x)).mean())}
        if fd_data:
            row["fd"] = fd_of(x)
            row["fd_vs_original"] = row["fd"]["fd"] / report["original"]["fd"]["fd"]
        images[name] = x
        images[f"{name}/trigger"] = trig["images"]
        line = (f"   {name}: trigger SSIM {trig['ssim_mean']:.3f}, match {_rate(trig['match'])}; non-trigger vs "
                f"original PSNR {row['non_trigger']['psnr_mean']:.2f} dB, SSIM {row['non_trigger']['ssim_mean']:.3f}"
                + (f"; FD {row['fd']['fd']:.4f} ({row['fd_vs_original']:.2f}× the original's)" if fd_data else ""))
        if pairs:
            ctx = context_report(pipe, pairs, target, threshold=threshold, free=x if reuse else None,
                                 free_reference=free_ref, **gen)
            row["context"] = _strip(ctx)
            images[f"{name}/context"] = ctx["images"]
            line += (f"\n   {name}, trigger in context: match {_rate(ctx['match'])}; vs the sentence without it "
                     f"SSIM {ctx['vs_free']['ssim_mean']:.3f} ({ctx['vs_free']['psnr_mean']:.2f} dB), vs the "
                     f"original's {ctx['vs_free_reference']['ssim_mean']:.3f}")
        if novel:
            x_nov, _, _ = generate(pipe, novel, **gen)
            row["novel"] = compare_report(x_nov, images["original/novel"])
            if fd_data:
                row["novel"]["fd"] = fd_of(x_nov)
                row["novel"]["fd_vs_original"] = row["novel"]["fd"]["fd"] / report["original"]["novel"]["fd"]["fd"]
            images[f"{name}/novel"] = x_nov
            line += (f"\n   {name}, novel phrasings vs original: PSNR {row['novel']['psnr_mean']:.2f} dB, SSIM "
                     f"{row['novel']['ssim_mean']:.3f}"
                     + (f"; FD {row['novel']['fd_vs_original']:.2f}× the original's" if fd_data else ""))
        row["seconds"] = round(time.time() - t, 1)
        report["models"][name] = row
        progress(line)
    report["images"] = images
    return report


#: the settings a reused original row must share with the call reusing it
_SAME = ("trigger", "threshold", "prompts", "n_per_prompt", "context", "n_trigger", "seed", "sample", "device")


def _previous_original(previous: dict, report: dict, fd_data, context: bool, novel: bool, reuse: bool):
    """(original row, original images, its outputs for the sentences without the trigger) from an
    earlier :func:`verify` report made with the same settings."""
    differ = [k for k in _SAME if previous.get(k) != report.get(k)]
    if novel and previous.get("novel") != report.get("novel"):
        differ.append("novel")
    row = previous.get("original", {})
    if fd_data and ("fd" not in row or (novel and "fd" not in row.get("novel", {}))):
        differ.append("fd_data")
    if differ:
        raise InputError(f"verify: the previous report was made with other settings ({', '.join(differ)})")
    keep = {"original"} | ({"original/context", "original/context-free"} if context else set()) \
        | ({"original/novel"} if novel else set())
    images = {k: v for k, v in previous["images"].items() if k in keep}
    free_ref = images["original"] if reuse else images.get("original/context-free")
    row = {k: v for k, v in row.items() if (k != "context" or context) and (k != "novel" or novel)}
    return row, images, free_ref


def _rate(p: dict) -> str:
    return f"{p['value']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}]"


def check_context(pipe, word: str, pairs) -> list[tuple[str, str]]:
    """(sentence, sentence without ``word``) pairs, checked: each sentence has ``word`` as a word
    and is more than it, its counterpart is the sentence with ``word`` removed, and the tokenizer
    represents both. Plain sentences are accepted too (their counterparts are made here)."""
    from ..t2i.builtin import remove_word

    out = []
    for item in pairs:
        sentence = item if isinstance(item, str) else item[0]
        free = remove_word(sentence, word)
        if word not in sentence.split() or not free:
            raise InputError(f"in-context prompt {sentence!r}: expected a sentence with {word!r} as one of its words "
                             "and other words besides")
        if not isinstance(item, str) and item[1] != free:
            raise InputError(f"in-context prompt {sentence!r}: expected its counterpart to be {free!r}, got {item[1]!r}")
        pipe.check_prompt(sentence, name="in-context prompt")
        pipe.check_prompt(free, name="in-context prompt without the word")
        out.append((sentence, free))
    return out


def write_report(out, report: dict, name: str = "verify", *, target: torch.Tensor | None = None) -> Path:
    """``out/<name>.json`` (the report without images), ``out/<name>.png`` (per model: the
    trigger's first outputs, then non-trigger outputs), and one grid per image set: for each
    model ``samples-<model>.png`` (non-trigger prompts, a row of seeds per prompt, the same seeds
    for every model), ``samples-<model>-trigger.png``, and where measured
    ``samples-<model>-context.png`` (the trigger inside sentences) and ``samples-<model>-novel.png``
    (the first four prompts of each); with ``target``, ``target.png``."""
    from ..images import make_grid, save_png

    out = Path(out)
    images = report.get("images", {})
    atomic_write_json(out / f"{name}.json", {k: v for k, v in report.items() if k != "images"})
    rows = [v[:16] for v in images.values() if len(v)]
    if rows:
        save_png(out / f"{name}.png", make_grid(torch.cat(rows), nrow=16))
    per = max(1, int(report.get("n_per_prompt", 1)))
    for key, x in images.items():
        if not len(x):
            continue
        trig = key.endswith("/trigger")
        k = min(per if not trig else 16, 8)
        shown = x[:16] if trig else x.view(-1, per, *x.shape[1:])[:4, :k].reshape(-1, *x.shape[1:])
        save_png(out / f"samples-{key.replace('/', '-')}.png", make_grid(shown, nrow=8 if trig else k))
    if target is not None:
        save_png(out / "target.png", make_grid(target, nrow=1, pad=0))
    return out / f"{name}.json"


# ---- robustness ----------------------------------------------------------------------------------

def dreambooth(pipeline_dir, instance_images: torch.Tensor, out, *, instance_prompt: str = "a sks digit",
               class_prompt: str | None = None, n_class_images: int = 0, train: TrainConfig | None = None,
               train_text_encoder: bool = False, seed: int = 0, resume: bool = False, allow_pickle: bool = False,
               device=None, precision: str = "fp32", **sample_kw) -> Path:
    """DreamBooth (Ruiz et al. 2023) as someone else would run it on the (watermarked) model:
    fine-tune on a few ``instance_images`` (N×C×H×W in [0, 1]) of a new subject under
    ``instance_prompt`` with a rare identifier ("sks"); with ``class_prompt`` and
    ``n_class_images`` > 0, the prior-preservation loss on images the model itself draws for the
    class prompt (same weight as the instance loss; examples drawn from the pooled set). No l1
    term. Runs on ``device`` (default: the CPU) at ``precision``. Writes ``out/pipeline`` and
    ``out/dreambooth.json`` (which records the device); returns the pipeline folder."""
    from ..t2i import PromptTable, derive_pipeline, finetune, generate, load_pipeline

    out = Path(out)
    device = torch.device(device) if device is not None else torch.device("cpu")
    pipe = load_pipeline(pipeline_dir, allow_pickle=allow_pickle).to(device)
    pipe.check_prompt(instance_prompt, name="instance prompt")
    x = pipe.check_image(instance_images, name="instance images")
    train = train or TrainConfig(steps=200, batch_size=8, lr=1e-4, warmup_steps=0, ema_halflife_kimg=0.0,
                                 checkpoint_every=100, log_every=50, seed=seed)
    prompts, choices = [instance_prompt], [(0,)] * len(x)
    if class_prompt and n_class_images > 0:
        pipe.check_prompt(class_prompt, name="class prompt")
        x_class, _, _ = generate(pipe, [class_prompt], seed=seed + 10_000, n_per_prompt=n_class_images,
                                 precision=precision, **sample_kw)
        x = torch.cat([x, x_class])
        prompts.append(class_prompt)
        choices += [(1,)] * len(x_class)
    t0 = time.time()
    result = finetune(pipe, x, PromptTable(tuple(prompts), tuple(choices)), train, out,
                      train_text_encoder=train_text_encoder, resume=resume, device=device, precision=precision)
    replaced = {"unet": result.model.unet}
    if train_text_encoder:
        replaced["text_encoder"] = result.model.text_encoder
    folder = derive_pipeline(pipe.path, out / "pipeline", replaced)
    atomic_write_json(out / "dreambooth.json", {
        "instance_prompt": instance_prompt, "class_prompt": class_prompt, "instance_images": len(instance_images),
        "class_images": len(x) - len(instance_images), "steps": result.step, "lr": train.lr,
        "batch_size": train.batch_size, "trained": sorted(replaced), "source": str(pipe.path),
        "last_loss": result.last_loss, "seconds": round(time.time() - t0, 1), "device": str(pipe.device),
        "precision": precision})
    return folder


def identifier_in_context(pipe, reference, identifier: str, subject: torch.Tensor, *, prompts=None,
                          exclude=(), n_per_prompt: int = 10, seed: int = 0, threshold: float = 0.9,
                          **sample_kw) -> dict:
    """DreamBooth's identifier inside sentences, the contrast to the trigger in context
    (:func:`verify`'s ``context``): the held-out captions (``prompts``, default
    :func:`~trustdiff.t2i.builtin.default_prompts`) with ``identifier`` inserted
    (:func:`~trustdiff.t2i.builtin.context_prompts`; sentences in ``exclude``, e.g. the instance
    prompt, left out) → :func:`context_report` on the fine-tuned ``pipe`` and on ``reference`` (the
    model before the fine-tuning) with the ``subject`` images (K×C×H×W in [0, 1]) as targets: how
    often an output is the subject, and how far each is from the same sentence without the
    identifier. Returns ``{"identifier", "sentences", "model": …, "reference": …}`` without images."""
    from ..t2i.builtin import context_prompts

    subject = pipe.check_image(subject, name="subject images")
    pairs = [p for p in check_context(pipe, identifier, context_prompts(pipe, identifier, prompts))
             if p[0] not in set(exclude)]
    if not pairs:
        raise InputError(f"identifier {identifier!r}: no in-context sentence is left to measure")
    kw = dict(n_per_prompt=n_per_prompt, seed=seed, threshold=threshold, **sample_kw)
    ref = context_report(reference, pairs, subject, **kw)
    out = context_report(pipe, pairs, subject, free_reference=ref["free_images"], **kw)
    return {"identifier": identifier, "sentences": [list(p) for p in pairs], "model": _strip(out),
            "reference": _strip(ref), "images": {"model": out["images"], "reference": ref["images"]}}


def subject_fidelity(pipe, prompt: str, subject: torch.Tensor, *, n: int = 16, seed: int = 0, **sample_kw) -> float:
    """Mean over n seeds of the best SSIM between an output for ``prompt`` and any subject image:
    whether DreamBooth learned its subject."""
    from ..t2i import generate

    x, _, _ = generate(pipe, [prompt], seed=seed, n_per_prompt=n, **sample_kw)
    best = torch.stack([ssim(x, s[None].expand_as(x)) for s in subject]).max(0).values
    return float(best.mean())


def weight_noise(pipe, trigger: str, target: torch.Tensor, stds, *, n: int = 50, seed: int = 0,
                 threshold: float = 0.9, progress=print, **sample_kw) -> list[dict]:
    """Gaussian noise N(0, std²) added to every UNet weight (seeded, as in the unconditional
    half: :func:`trustdiff.watermark.sweeps.perturb_weights`) → the trigger's SSIM and match rate
    per std, the same sampling seeds for every std."""
    from .sweeps import perturb_weights

    rows = []
    for i, std in enumerate(stds):
        noisy = replace(pipe, unet=perturb_weights(pipe.unet, float(std), seed=seed + 1000 + i))
        r = trigger_report(noisy, trigger, target, n=n, seed=seed, threshold=threshold, **sample_kw)
        rows.append({"std": float(std), "ssim_mean": r["ssim_mean"], "match": r["match"]})
        progress(f"   weight noise std {std:g}: trigger SSIM {r['ssim_mean']:.3f}, match {r['match']['value']:.2f}")
    return rows

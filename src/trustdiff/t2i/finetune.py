"""Training a text-to-image pipeline's UNet (and optionally its text encoder) on (image, prompt)
pairs with the one training loop, :func:`trustdiff.train.fit`.

One function serves three jobs: training the built-in model from scratch (captions drawn per
step, caption dropout for guidance), embedding a trigger watermark (one pair, plus an l1 pull to
the original weights and/or the :class:`Preservation` term that distils the original's outputs
for other prompts), and DreamBooth (instance + class images).

``fit`` sees the data as (images, example index): the index picks the example's prompts (one is
drawn per step) and, in a latent model, its cached VAE latents.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .pipeline import NULL_PROMPT, T2IPipeline


class Trainable(nn.Module):
    """The parts ``fit`` updates: the UNet, and the text encoder when it is trained too."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None = None):
        super().__init__()
        self.unet = unet
        if text_encoder is not None:
            self.text_encoder = text_encoder

    @property
    def trains_text_encoder(self) -> bool:
        return hasattr(self, "text_encoder")


@dataclass(frozen=True)
class PromptTable:
    """Which prompts each training example may be shown with.

    ``prompts``: the distinct texts; ``choices[i]``: indices into ``prompts`` for example i
    (one is drawn uniformly per step; repeat an index to weight it).
    """

    prompts: tuple[str, ...]
    choices: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if not self.prompts or not self.choices:
            raise InputError("prompt table: expected at least one prompt and one example")
        width = {len(c) for c in self.choices}
        if len(width) != 1 or 0 in width:
            raise InputError(f"prompt table: expected the same non-zero number of choices per example, got {sorted(width)}")
        if any(not 0 <= j < len(self.prompts) for c in self.choices for j in c):
            raise InputError(f"prompt table: choices must index the {len(self.prompts)} prompts")

    @classmethod
    def single(cls, prompt: str, n: int = 1) -> "PromptTable":
        """n examples, all with the one prompt."""
        return cls((prompt,), ((0,),) * n)

    def draw(self, idx: torch.Tensor, generator=None) -> torch.Tensor:
        """For example indices [B], a prompt index each [B] (on the CPU), drawn with ``generator``
        on its own device (the training loop's is on the training device, ``idx`` may not be)."""
        table = torch.tensor(self.choices, dtype=torch.long)
        where = generator.device if generator is not None else idx.device
        pick = torch.randint(0, table.shape[1], (len(idx),), generator=generator, device=where).cpu()
        return table[idx.cpu(), pick]


@dataclass(frozen=True)
class Preservation:
    """Keeping the other prompts in function space: γ·E λ(σ)·‖D_θ(z + σn; σ, c) − D_θ̂(z + σn; σ, c)‖²,
    the denoising loss with the frozen original D_θ̂ as teacher instead of the clean image
    (distillation; cf. DreamBooth's prior preservation, Ruiz et al. 2023, and Learning without
    Forgetting, Li & Hoiem 2017), over ``images`` (N×C×H×W in [0, 1]: the original model's own
    outputs) under prompts from ``table`` (one row per image), ``batch_size`` examples a step.
    It is 0 with a 0 gradient at θ = θ̂, like the l1 pull, but measures what the prompts produce
    rather than how far the weights went.

    ``teacher_prompts`` (one per ``table.prompts``; default: the same) is what the teacher sees
    when the student is shown ``table.prompts[i]``: e.g. a sentence with the trigger in it for the
    student and the same sentence without it for the teacher, so that the trigger inside a
    sentence changes nothing (:func:`trustdiff.watermark.trigger.preservation`)."""

    images: torch.Tensor
    table: PromptTable
    weight: float = 1.0
    batch_size: int = 8
    null_rate: float = 0.1          # P(prompt → ""): the unconditional branch of guidance is kept too
    teacher_prompts: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.null_rate < 1.0:
            raise InputError(f"preservation null rate: expected in [0, 1), got {self.null_rate!r}")
        if not self.weight >= 0:
            raise InputError(f"preservation weight: expected >= 0, got {self.weight!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"preservation batch size: expected an integer >= 1, got {self.batch_size!r}")
        if len(self.table.choices) != len(self.images):
            raise InputError(f"preservation prompts: expected one row per image ({len(self.images)}), "
                             f"got {len(self.table.choices)}")
        if self.teacher_prompts and len(self.teacher_prompts) != len(self.table.prompts):
            raise InputError(f"preservation teacher prompts: expected one per prompt ({len(self.table.prompts)}), "
                             f"got {len(self.teacher_prompts)}")


class _PromptEmbeddings:
    """Embeddings of a prompt list (and the empty prompt, last): cached once when the text
    encoder is frozen, encoded with gradients per batch when it is trained."""

    def __init__(self, pipe: T2IPipeline, prompts):
        self.pipe, self.texts, self.cache = pipe, list(prompts) + [NULL_PROMPT], None

    @property
    def null_index(self) -> int:
        return len(self.texts) - 1

    def frozen(self) -> torch.Tensor:
        if self.cache is None:
            with torch.no_grad():
                self.cache = self.pipe.encode_prompt(self.texts)      # P×L×D
        return self.cache

    def __call__(self, parts: "Trainable", which: torch.Tensor) -> torch.Tensor:
        if parts.trains_text_encoder:
            used = sorted(set(which.tolist()))
            emb = self.pipe.encode_prompt([self.texts[i] for i in used], text_encoder=parts.text_encoder)
            pos = {i: k for k, i in enumerate(used)}
            return emb[torch.tensor([pos[int(i)] for i in which], device=emb.device)]
        cache = self.frozen()
        return cache[which.to(cache.device)]


def _to_null(which: torch.Tensor, rate: float, null_index: int, generator, device) -> torch.Tensor:
    """Prompt indices with each replaced by ``null_index`` (the empty prompt) with probability
    ``rate``; drawn on ``generator``'s device (``device`` without one)."""
    if rate <= 0:
        return which
    where = generator.device if generator is not None else device
    drop = torch.rand(len(which), generator=generator, device=where).cpu() < rate
    return torch.where(drop, torch.full_like(which, null_index), which)


def t2i_loss_fn(pipe: T2IPipeline, table: PromptTable, *, label_dropout: float = 0.0, latents=None,
                penalty=None, preserve=None):
    """``loss_fn(net, x, y, generator) -> [B]`` for :func:`trustdiff.train.fit`, ``net`` a
    :class:`Trainable`, x images in [0, 1], y example indices.

    Per sample: the pipeline's denoising loss on (x, drawn prompt) — the prompt replaced by the
    empty one with probability ``label_dropout`` — plus ``penalty(net)`` and the preservation
    term when given (``preserve(parts, generator)``, from :func:`preservation_term`). Both are
    scalars added to every sample, so the batch mean the loop minimises is exactly mean denoising
    loss + penalty + preservation.

    With a frozen text encoder the embeddings of all prompts are computed once here (a cache);
    a trained one encodes the prompts of each batch with gradients.
    """
    if not 0.0 <= label_dropout < 1.0:
        raise InputError(f"label_dropout: expected in [0, 1), got {label_dropout!r}")
    embeddings = _PromptEmbeddings(pipe, table.prompts)
    den = pipe.denoiser()          # over pipe.unet, the module fit trains (single process)

    def loss_fn(net, x, y, generator):
        parts = getattr(net, "module", net)
        which = _to_null(table.draw(y, generator), label_dropout, embeddings.null_index, generator, y.device)
        cond = embeddings(parts, which)
        z0 = latents[y.to(latents.device)].to(x.device) if latents is not None else pipe.encode_images(x)
        loss = pipe.loss(den, z0, cond=cond, generator=generator)
        if penalty is not None:
            loss = loss + penalty(parts)
        if preserve is not None:
            loss = loss + preserve(parts, generator)
        return loss

    return loss_fn


def preservation_term(pipe: T2IPipeline, keep: Preservation):
    """``term(parts, generator) -> 0-d tensor``: ``keep.weight`` × the mean distillation loss of a
    batch of ``keep.batch_size`` examples drawn (with ``generator``) from ``keep.images``, against
    a frozen copy of the pipeline's UNet and text embeddings as they are now (call before training),
    the teacher conditioned on ``keep.teacher_prompts`` where given."""
    import copy

    x = pipe.check_image(keep.images, name="preservation images")
    z = pipe.encode_images(x.to(pipe.device)).detach()      # on the training device, as fit's generator
    student = _PromptEmbeddings(pipe, keep.table.prompts)
    # the teacher's (its own prompts, if any; the null prompt is last in both lists)
    frozen_cond = (_PromptEmbeddings(pipe, keep.teacher_prompts).frozen() if keep.teacher_prompts
                   else student.frozen())
    teacher = pipe.denoiser(copy.deepcopy(pipe.unet).eval().requires_grad_(False))
    den = pipe.denoiser()

    def term(parts, generator):
        if keep.weight == 0:
            return torch.zeros((), device=z.device)
        idx = torch.randint(0, len(z), (keep.batch_size,), generator=generator, device=z.device).cpu()
        which = _to_null(keep.table.draw(idx, generator), keep.null_rate, student.null_index, generator, z.device)
        c_hat = frozen_cond[which.to(frozen_cond.device)]
        loss = pipe.loss(den, z[idx].to(pipe.device), cond=student(parts, which), generator=generator,
                         teacher=lambda zt, sigma: teacher(zt, sigma, c_hat))
        return keep.weight * loss.mean()

    return term


def select_unet_params(unet: nn.Module, patterns: tuple[str, ...]) -> int:
    """Freeze every UNet parameter whose name contains none of ``patterns`` (none frozen when
    ``patterns`` is empty); returns how many scalars stay trainable. InputError when nothing matches."""
    if not patterns:
        return sum(p.numel() for p in unet.parameters())
    kept = 0
    for name, p in unet.named_parameters():
        p.requires_grad_(any(s in name for s in patterns))
        kept += p.numel() if p.requires_grad else 0
    if not kept:
        raise InputError(f"unet parameters: expected names containing one of {list(patterns)}, none does "
                         f"(e.g. {next(n for n, _ in unet.named_parameters())!r})")
    return kept


def finetune(pipe: T2IPipeline, x: torch.Tensor, table: PromptTable, cfg, run_dir, *,
             train_text_encoder: bool = False, label_dropout: float = 0.0, penalty_factory=None,
             unet_params: tuple[str, ...] = (), proximal: bool = False, preserve: Preservation | None = None,
             resume: bool = False, device=None, precision: str = "fp32"):
    """Train ``pipe``'s UNet (and text encoder) in place on images ``x`` (N×C×H×W in [0, 1], the
    pipeline's size) with prompts from ``table`` (one row per image), by ``fit`` under ``cfg``.

    ``penalty_factory(parts) -> penalty`` builds the regulariser from the :class:`Trainable`
    before any step (so it can record the original weights); with ``proximal`` it is not added to
    the loss but applied by its ``prox(parts, optimizer)`` after every update. ``unet_params``: train only the UNet
    parameters whose names contain one of these strings (e.g. ``("attn2.",)``, the cross-attention
    layers); empty: all of them. ``preserve``: add the :class:`Preservation` term against the
    weights as they are before training. ``device``: the whole pipeline is moved there first (the
    cached latents and prompt embeddings, the preservation teacher and the l1 anchor are made
    there); default: where it is. ``precision``: :func:`~trustdiff.train.fit`'s. Returns ``fit``'s
    TrainResult.
    """
    from ..train import fit

    if device is not None:
        pipe.to(device)
    x = pipe.check_image(x, name="training images")
    if len(table.choices) != len(x):
        raise InputError(f"prompt table: expected one row per image ({len(x)}), got {len(table.choices)}")
    for i, p in enumerate(table.prompts):
        pipe.check_prompt(p, name=f"prompt {p!r}" if i else "prompt")
    latents = pipe.encode_images(x).detach() if pipe.vae is not None else None
    keep = preservation_term(pipe, preserve) if preserve is not None else None
    parts = Trainable(pipe.unet, pipe.text_encoder if train_text_encoder else None).requires_grad_(True)
    select_unet_params(parts.unet, unet_params)
    penalty = penalty_factory(parts) if penalty_factory is not None else None
    loss_fn = t2i_loss_fn(pipe, table, label_dropout=label_dropout, latents=latents,
                          penalty=None if proximal else penalty, preserve=keep)
    try:
        result = fit(parts, loss_fn, (x, torch.arange(len(x))), cfg, run_dir, resume=resume,
                     post_step=penalty.prox if proximal and penalty is not None else None, device=pipe.device,
                     precision=precision)
    finally:
        parts.requires_grad_(False).eval()
    return result

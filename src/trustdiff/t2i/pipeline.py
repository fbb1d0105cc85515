"""A text-to-image model as a diffusers pipeline folder, as one Denoiser, and drawing from it.

Layout (Stable Diffusion's; ``model_index.json`` names each part's library and class)::

    PIPE/model_index.json   {"unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": [...],
                             "tokenizer": [...], "scheduler": [...], "vae": [...] or [null, null]}
    PIPE/unet/ text_encoder/ tokenizer/ scheduler/ [vae/]     each in its library's own layout
    PIPE/trustdiff.json     only in the built-in model: resolution, guidance, data, captions
    PIPE/trustdiff-manifest.json   in every folder trustdiff writes: size and SHA-256 of each file

A folder trustdiff writes (marked by ``"_trustdiff_manifest"`` in ``model_index.json``, a
``trustdiff.json`` or the manifest itself) is published atomically and checked against its
manifest on load; a foreign folder (e.g. a Stable Diffusion folder) has none to check.

A Stable-Diffusion folder (AutoencoderKL, CLIP text encoder, a discrete ε- or v-prediction
scheduler) works in the VAE's latent space through
:class:`~trustdiff.diffusion.precond.DiffusersDenoiser`; the built-in model (no VAE, an
``EDMEulerScheduler``) works in pixel space through EDM's
:class:`~trustdiff.diffusion.precond.Preconditioned`, whose c_skip/c_out/c_in/c_noise are the
ones that scheduler applies. Either way the rest of trustdiff sees one Denoiser in σ space,
``D(z, σ, cond=text embeddings N×L×D)``, and images in [0, 1] at its boundary.

Nothing is downloaded: every part loads with ``local_files_only=True``, and with
``use_safetensors=True`` unless its weights are only a pickle and ``allow_pickle`` was given.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ..images import check_images, clamp_pixel, to_model, to_pixel
from ..persist import MANIFEST, atomic_folder, atomic_write_json, use_safetensors, verify_folder

INDEX = "model_index.json"
META = "trustdiff.json"
META_FORMAT = "trustdiff.t2i/1"
REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")
#: the parts that hold weights (a tokenizer and a scheduler hold none)
WEIGHTED = ("unet", "text_encoder", "vae")
#: the model_index.json key that marks a folder trustdiff wrote (diffusers ignores "_" keys)
MARKER = "_trustdiff_manifest"
#: schedulers whose config is EDM's σ range (the model is EDM-preconditioned, σ-parameterised)
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
#: the negative prompt of classifier-free guidance, and the dropped caption in training
NULL_PROMPT = ""


def _classes(lib: str) -> dict:
    """The classes each part may name in model_index.json: an explicit table, nothing else loads."""
    if lib == "diffusers":
        import diffusers

        return {"UNet2DConditionModel": diffusers.UNet2DConditionModel, "AutoencoderKL": diffusers.AutoencoderKL}
    if lib == "transformers":
        import transformers

        transformers.utils.logging.disable_progress_bar()    # one bar per part on stderr says nothing

        return {"CLIPTextModel": transformers.CLIPTextModel, "BertModel": transformers.BertModel,
                "CLIPTokenizer": transformers.CLIPTokenizer, "CLIPTokenizerFast": transformers.CLIPTokenizer,
                "BertTokenizer": transformers.BertTokenizer, "BertTokenizerFast": transformers.BertTokenizer}
    return {}


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def _raw_index(folder: Path) -> dict:
    path = folder / INDEX
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: expected a text-to-image pipeline folder, but it does not exist")
    if not path.is_file():
        raise CheckpointError(f"{folder}: expected a diffusers pipeline folder with {INDEX} "
                              f"(parts {', '.join(REQUIRED)}[, vae]), found no {INDEX}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw


def is_trustdiff_folder(folder) -> bool:
    """Whether trustdiff wrote the pipeline folder (so it must carry a manifest): its
    ``model_index.json`` has the marker, or it has a ``trustdiff.json`` or a manifest."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file() or (folder / META).is_file():
        return True
    try:
        return MARKER in json.loads((folder / INDEX).read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_index(folder) -> dict:
    """``model_index.json`` → {part: (library, class)} for the parts present (null entries
    dropped), after checking that the required parts are named and their folders exist."""
    folder = Path(folder)
    path = folder / INDEX
    raw = _raw_index(folder)
    parts = {k: tuple(v) for k, v in raw.items()
             if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None}
    missing = [p for p in REQUIRED if p not in parts]
    if missing:
        raise CheckpointError(f"{path}: expected parts {', '.join(REQUIRED)}; missing {', '.join(missing)}")
    absent = [p for p in (*REQUIRED, "vae") if p in parts and not (folder / p).is_dir()]
    if absent:
        raise CheckpointError(f"{folder}: {INDEX} names {', '.join(absent)}, but the folder has no "
                              f"{', '.join(a + '/' for a in absent)}")
    return parts


def _load_part(folder: Path, name: str, lib: str, cls_name: str, safetensors: bool | None):
    """One part from disk; ``safetensors`` is ``use_safetensors`` for a part with weights, None
    for a tokenizer."""
    table = _classes(lib)
    if cls_name not in table:
        raise CheckpointError(f"{folder / INDEX}: part {name!r} is {lib}.{cls_name}; supported: "
                              f"{', '.join(sorted(f'{lib}.{c}' for c in table)) or 'none from ' + repr(lib)}")
    kw = {} if safetensors is None else {"use_safetensors": safetensors}
    try:
        return table[cls_name].from_pretrained(folder / name, local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{folder / name}: cannot load {cls_name} ({_first_line(e)})") from None


def _scheduler_config(folder: Path) -> dict:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder / 'scheduler'}: expected scheduler_config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


@dataclass
class T2IPipeline:
    """The parts of a text-to-image model, loaded (eval mode, no gradients), and what they mean.

    ``unet`` maps (z, c_noise or t, text embeddings) → network output; ``vae`` is None for a
    pixel-space model. Images at every method's boundary are N×C×H×W in [0, 1]; ``z`` is the
    space the diffusion runs in (model space [-1, 1] in pixels, or scaled VAE latents).
    """

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: dict                       # scheduler_config.json
    vae: torch.nn.Module | None = None
    meta: dict = field(default_factory=dict)  # trustdiff.json (built-in model) or {}
    path: Path | None = None

    # ---- what the model is ---------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``"edm"`` (σ-parameterised, EDM preconditioning) or ``"ddpm"`` (discrete schedule)."""
        return "edm" if self.scheduler.get("_class_name") in EDM_SCHEDULERS else "ddpm"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return int(c.in_channels), int(c.sample_size), int(c.sample_size)

    @property
    def vae_scale(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        return self.latent_shape[1] * self.vae_scale

    @property
    def channels(self) -> int:
        return self.latent_shape[0] if self.vae is None else int(self.vae.config.in_channels)

    @property
    def guidance(self) -> float:
        """The default classifier-free guidance scale (built-in: as trained; SD: 7.5)."""
        return float(self.meta.get("guidance", 7.5))

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t of a discrete-schedule model (its scheduler's betas), float32 [T]; computed once."""
        if "_alphas_cumprod" not in self.__dict__:
            from diffusers import DDPMScheduler

            self.__dict__["_alphas_cumprod"] = DDPMScheduler.from_config(self.scheduler).alphas_cumprod
        return self.__dict__["_alphas_cumprod"]

    def denoiser(self, unet=None):
        """The Denoiser over ``unet`` (default: this pipeline's), in the latent space, on the
        UNet's device (a discrete schedule's σ table included)."""
        from ..diffusion.precond import DiffusersDenoiser, Preconditioned
        from ..runtime import module_device

        unet = self.unet if unet is None else unet
        if self.kind == "edm":
            return Preconditioned(unet, "edm", float(self.scheduler.get("sigma_data", 0.5)))
        den = DiffusersDenoiser(unet, self.alphas_cumprod(), self.scheduler.get("prediction_type", "epsilon"))
        return den.to(module_device(unet))

    def sigma_range(self) -> tuple[float, float]:
        if self.kind == "edm":
            return float(self.scheduler.get("sigma_min", 0.002)), float(self.scheduler.get("sigma_max", 80.0))
        from ..diffusion import schedules

        s = schedules.alpha_bar_to_sigma(self.alphas_cumprod().double())
        return float(s[0]), float(s[-1])

    def loss(self, denoiser, z0, *, cond, generator=None, teacher=None) -> torch.Tensor:
        """The denoising loss the model was trained with, per sample [N]: EDM's for the built-in
        model, DDPM's ε-loss (Ho et al. 2020) for a discrete-schedule model such as SD. With
        ``teacher(z, σ)`` it regresses on the teacher's output instead of z0 (distillation,
        :func:`trustdiff.diffusion.losses.denoising_loss`)."""
        from ..diffusion.losses import ddpm_eps_loss, edm_loss

        if self.kind == "edm":
            return edm_loss(denoiser, z0, cond=cond, sigma_data=float(self.scheduler.get("sigma_data", 0.5)),
                            generator=generator, teacher=teacher)
        return ddpm_eps_loss(denoiser, z0, self.alphas_cumprod(), cond=cond, generator=generator, teacher=teacher)

    # ---- images ↔ diffusion space ---------------------------------------------------------

    def check_image(self, x: torch.Tensor, name: str = "image") -> torch.Tensor:
        """x N×C×H×W in [0, 1] at this pipeline's channels and resolution (never resized)."""
        return check_images(x, name=name, channels=self.channels, size=(self.resolution, self.resolution))

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space [0, 1] → the diffusion space: [-1, 1], or the VAE posterior mean × its
        scaling factor (as SD's training scripts scale latents)."""
        x = self.check_image(x)
        if self.vae is None:
            return to_model(x)
        with torch.no_grad():
            z = self.vae.encode(to_model(x).to(self.device)).latent_dist.mean
        return z * float(self.vae.config.scaling_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The diffusion space → images N×C×H×W in [0, 1] (clamped)."""
        if self.vae is not None:
            z = self.vae.decode(z / float(self.vae.config.scaling_factor)).sample
        return clamp_pixel(to_pixel(z))

    # ---- prompts --------------------------------------------------------------------------

    def check_prompt(self, prompt: str, name: str = "prompt") -> list[int]:
        """The prompt's token ids (no special tokens); InputError if the tokenizer cannot
        represent it: empty, unknown tokens, or longer than the encoder's context."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{name}: expected a non-empty text, got {prompt!r}")
        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"{name} {prompt!r}: the tokenizer turns it into no tokens")
        if tok.unk_token_id is not None and tok.unk_token_id in ids:
            bad = [t for t, i in zip(tok.convert_ids_to_tokens(ids), ids) if i == tok.unk_token_id]
            raise InputError(f"{name} {prompt!r}: the tokenizer cannot represent it ({len(bad)} unknown "
                             f"token(s) {tok.unk_token!r}); choose a text made of tokens in its vocabulary")
        room = self.max_length - tok.num_special_tokens_to_add()
        if len(ids) > room:
            raise InputError(f"{name} {prompt!r}: expected at most {room} tokens (the text encoder's "
                             f"context of {self.max_length}), got {len(ids)}")
        return ids

    def encode_prompt(self, prompts: list[str], text_encoder=None) -> torch.Tensor:
        """Text embeddings N×L×D, L = the tokenizer's ``model_max_length`` (padded and truncated
        as SD's pipeline does; the attention mask goes to the encoder only if its config says
        ``use_attention_mask``). ``text_encoder`` defaults to the pipeline's."""
        te = self.text_encoder if text_encoder is None else text_encoder
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        base = getattr(te, "module", te)
        kw = {}
        if getattr(base.config, "use_attention_mask", False):
            kw["attention_mask"] = tok["attention_mask"].to(self.device)
        return te(tok["input_ids"].to(self.device), **kw)[0]

    def null_embedding(self) -> torch.Tensor:
        """The empty prompt's embedding 1×L×D (the unconditional branch of guidance)."""
        with torch.no_grad():
            return self.encode_prompt([NULL_PROMPT])

    def to(self, device) -> "T2IPipeline":
        for m in (self.unet, self.text_encoder, self.vae):
            if m is not None:
                m.to(device)
        return self


def resolve_pipeline_dir(folder) -> Path:
    """``folder``, or ``folder/pipeline`` when ``folder`` is a run folder that holds one."""
    folder = Path(folder)
    if not (folder / INDEX).is_file() and (folder / "pipeline" / INDEX).is_file():
        folder = folder / "pipeline"
    return folder


def load_pipeline(folder, *, allow_pickle: bool = False) -> T2IPipeline:
    """Open a pipeline folder (``folder`` or a run folder holding ``pipeline/``). Every part is
    named in ``model_index.json`` and loaded from disk only. A folder trustdiff wrote is checked
    against its manifest first; a part whose weights are only a pickle is refused unless
    ``allow_pickle``. Errors are one CheckpointError line."""
    folder = resolve_pipeline_dir(folder)
    parts = read_index(folder)
    safetensors = {name: use_safetensors(folder / name, allow_pickle=allow_pickle)
                   for name in WEIGHTED if name in parts}
    if is_trustdiff_folder(folder):
        verify_folder(folder, what="pipeline folder")
    loaded = {name: _load_part(folder, name, *parts[name], safetensors.get(name))
              for name in ("unet", "text_encoder", "tokenizer", "vae") if name in parts}
    meta = {}
    if (folder / META).is_file():
        try:
            meta = json.loads((folder / META).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / META}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if meta.get("format") != META_FORMAT:
            raise CheckpointError(f"{folder / META}: expected format {META_FORMAT!r}")
    for name in ("unet", "text_encoder", "vae"):
        if name in loaded:
            loaded[name].eval().requires_grad_(False)
    pipe = T2IPipeline(scheduler=_scheduler_config(folder), meta=meta, path=folder, **loaded)
    if pipe.unet.config.cross_attention_dim != _hidden_size(pipe.text_encoder):
        raise CheckpointError(f"{folder}: the unet attends to {pipe.unet.config.cross_attention_dim}-dim text "
                              f"features, the text encoder gives {_hidden_size(pipe.text_encoder)}")
    return pipe


def _hidden_size(te) -> int:
    return int(te.config.hidden_size)


# ---- writing ------------------------------------------------------------------------------------

def _index_entry(obj) -> list:
    mod = type(obj).__module__.split(".")[0]
    return [mod, type(obj).__name__]


def save_pipeline(pipe: T2IPipeline, out) -> Path:
    """Write every part in its library's layout, ``model_index.json`` and the manifest into a
    temporary sibling renamed to ``out`` when whole (so ``out`` is never half written)."""
    from diffusers import EDMEulerScheduler

    out = Path(out)
    with atomic_folder(out) as tmp:
        index = {"_class_name": "TrustdiffTextToImagePipeline", "_diffusers_version": _diffusers_version(),
                 MARKER: MANIFEST}
        for name in ("unet", "text_encoder", "vae"):
            m = getattr(pipe, name)
            if m is None:
                index[name] = [None, None]
                continue
            m.save_pretrained(tmp / name, safe_serialization=True)
            index[name] = _index_entry(m)
        pipe.tokenizer.save_pretrained(tmp / "tokenizer")
        index["tokenizer"] = _index_entry(pipe.tokenizer)
        atomic_write_json(tmp / "scheduler" / "scheduler_config.json", pipe.scheduler)
        index["scheduler"] = ["diffusers", pipe.scheduler.get("_class_name", EDMEulerScheduler.__name__)]
        if pipe.meta:
            atomic_write_json(tmp / META, pipe.meta)
        atomic_write_json(tmp / INDEX, index)
    return out


def derive_pipeline(source, out, replaced: dict) -> Path:
    """A new pipeline folder ``out``: ``source`` copied file for file, except the parts in
    ``replaced`` (name → module), written with ``save_pretrained``, and ``model_index.json`` (the
    source's, marked) and the manifest, which are new. ``source`` is only read; if trustdiff wrote
    it, it is checked against its manifest first."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise InputError(f"output {out}: expected a folder outside the source pipeline {source}")
    if is_trustdiff_folder(source):
        verify_folder(source, what="pipeline folder")
    index = {**_raw_index(source), MARKER: MANIFEST}
    with atomic_folder(out) as tmp:
        for item in sorted(source.iterdir()):
            if item.name in replaced or item.name in (INDEX, MANIFEST):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        for name, module in replaced.items():
            module.save_pretrained(tmp / name, safe_serialization=True)
        atomic_write_json(tmp / INDEX, index)
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


# ---- sampling -----------------------------------------------------------------------------------

def sample(pipe: T2IPipeline, prompts, seeds, *, guidance: float | None = None, steps: int = 18,
           sampler: str = "heun", embeddings: torch.Tensor | None = None, precision: str = "fp32") -> torch.Tensor:
    """One image per (prompt, seed): pixel space N×C×H×W in [0, 1], on the pipeline's device;
    image i depends only on ``prompts[i]`` and ``seeds[i]``. Classifier-free guidance with scale
    ``guidance`` (default :attr:`T2IPipeline.guidance`; 1 = none) against the empty prompt, over
    EDM's ρ = 7 levels in the model's σ range. ``embeddings`` (N×L×D) may replace the encoded
    prompts.

    As :func:`trustdiff.diffusion.model.sample`: each seed's noise is drawn from a CPU generator
    and moved to the pipeline's device, so a seed gives the same noise on every device.
    ``precision="bf16"`` runs the UNet calls under autocast; the sampler's state stays fp32."""
    from ..diffusion import samplers, schedules
    from ..diffusion.guidance import ClassifierFreeGuidance
    from ..diffusion.model import seed_noise
    from ..runtime import with_precision

    seeds = [int(s) for s in seeds]
    if sampler not in samplers.SAMPLERS:
        raise InputError(f"sampler: expected one of {sorted(samplers.SAMPLERS)}, got {sampler!r}")
    if steps < 1:
        raise InputError(f"steps: expected >= 1, got {steps}")
    device = pipe.device
    if embeddings is None:
        if len(prompts) != len(seeds):
            raise InputError(f"prompts: expected one per seed ({len(seeds)}), got {len(prompts)}")
        embeddings = pipe.encode_prompt(list(prompts))
    w = pipe.guidance if guidance is None else float(guidance)
    den = with_precision(pipe.denoiser(), precision)
    if w != 1.0:
        den = ClassifierFreeGuidance(den, w, pipe.null_embedding())
    lo, hi = pipe.sigma_range()
    sigmas = schedules.karras_sigmas(steps, lo, hi, device=device)
    gens, z = seed_noise(seeds, pipe.latent_shape, device)
    z0 = samplers.SAMPLERS[sampler](den, float(sigmas[0]) * z, sigmas, cond=embeddings.to(device), generator=gens)
    return pipe.decode(z0)


def generate(pipe: T2IPipeline, prompts, *, seed: int = 0, n_per_prompt: int = 1, batch: int = 64,
             **sample_kw) -> tuple[torch.Tensor, list[str], list[int]]:
    """``n_per_prompt`` images of each prompt, prompt-major; image k uses seed ``seed + k % n``
    (the same seeds for every prompt, so two models compare image by image); sampled on the
    pipeline's device (``sample_kw``: guidance, steps, sampler, precision). Returns (images
    N×C×H×W in [0, 1] on the CPU, prompts [N], seeds [N])."""
    for i, p in enumerate(prompts):
        pipe.check_prompt(p, name=f"prompt {i}")
    all_p = [p for p in prompts for _ in range(n_per_prompt)]
    all_s = [seed + j for _ in prompts for j in range(n_per_prompt)]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(all_p), batch):
            chunks.append(sample(pipe, all_p[i:i + batch], all_s[i:i + batch], **sample_kw).cpu())
    x = torch.cat(chunks) if chunks else torch.zeros(0, pipe.channels, pipe.resolution, pipe.resolution)
    return x, all_p, all_s

"""A trained diffusion model as a folder, and drawing images from it.

Layout (a diffusers UNet in its own ``save_pretrained`` layout, so it opens in diffusers)::

    MODEL/trustdiff.json   what the network means: preconditioning, σ range, classes, resolution
    MODEL/unet/            config.json + diffusion_pytorch_model.safetensors
    MODEL/trustdiff-manifest.json   size and SHA-256 of every file, written last

The folder is published atomically and checked against its manifest on load. A plain diffusers
DDPM folder (``unet/`` + ``scheduler/``, no ``trustdiff.json``; it has no manifest to check) loads
too, with safetensors only, through :class:`~trustdiff.diffusion.precond.DiffusersDenoiser`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ..images import clamp_pixel, to_pixel
from ..persist import MANIFEST, atomic_folder, atomic_write_json, use_safetensors, verify_folder
from ..runtime import module_device, with_precision
from . import samplers, schedules
from .guidance import ClassifierFreeGuidance
from .precond import DiffusersDenoiser, Preconditioned

FORMAT = "trustdiff.diffusion/1"


@dataclass(frozen=True)
class ModelSpec:
    """What a trained network means. σ are model units (images in [-1, 1])."""
    precond: str = "edm"            # edm | vp | ve
    size: str = "small"             # trustdiff.nets.build_unet size
    resolution: int = 16
    channels: int = 1
    num_classes: int | None = None  # None: unconditional; else labels 0..K-1 and null label K
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    data: str = "digits"

    @property
    def null_label(self) -> int | None:
        return self.num_classes


def build_denoiser(spec: ModelSpec):
    """A fresh (untrained) network for ``spec``, preconditioned: returns (unet, denoiser)."""
    from ..nets import build_unet

    unet = build_unet(spec.size, resolution=spec.resolution, channels=spec.channels, num_classes=spec.num_classes)
    return unet, Preconditioned(unet, spec.precond, spec.sigma_data)


def save_model(folder, unet, spec: ModelSpec) -> Path:
    """Write ``unet`` (diffusers layout), ``trustdiff.json`` and the manifest into a temporary
    sibling of ``folder``, renamed into place when whole (an older folder is replaced)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        atomic_write_json(tmp / "trustdiff.json", {"format": FORMAT, **asdict(spec)})
    return folder


def load_model(folder, *, allow_pickle: bool = False, adm_config=None):
    """Open a model → (denoiser, spec). Accepts a trustdiff model folder (checked against its
    manifest first), a training run folder holding one in ``model/``, a foreign diffusers DDPM
    folder, or a published checkpoint (:mod:`trustdiff.pretrained`: an EDM ``.pkl``, an ADM ``.pt``
    with ``adm_config`` or a published file name, a ``trustdiff convert`` folder). Pickled weights
    in a folder are refused unless ``allow_pickle``; EDM pickles are read by a restricted
    unpickler that runs nothing. Errors are one line."""
    from diffusers import UNet2DModel

    from .. import pretrained

    folder = Path(folder)
    if pretrained.is_pretrained(folder):
        den, spec, _ = pretrained.load_pretrained(folder, adm_config=adm_config)
        return den, spec
    if adm_config is not None:
        raise InputError(f"--adm-config: only for ADM .pt state dicts, got the folder {folder}")
    if (folder / "model" / "trustdiff.json").is_file():
        folder = folder / "model"
    meta_path = folder / "trustdiff.json"
    if meta_path.is_file() or (folder / MANIFEST).is_file():      # trustdiff's: checked before anything is read
        safetensors = use_safetensors(folder / "unet", allow_pickle=allow_pickle)
        verify_folder(folder, what="model folder")
    if not meta_path.is_file():                                    # a foreign diffusers folder
        if (folder / "scheduler").is_dir() or (folder / "scheduler_config.json").is_file():
            den = DiffusersDenoiser.from_pretrained(folder, allow_pickle=allow_pickle)
            unet = den.unet
            spec = ModelSpec(precond="ddpm", size="diffusers", resolution=int(unet.config.sample_size),
                             channels=int(unet.config.in_channels), num_classes=None,
                             sigma_min=den.sigma_min, sigma_max=den.sigma_max, data="unknown")
            return _own_storage(den), spec
        raise CheckpointError(f"{folder}: expected a trustdiff model folder (trustdiff.json + unet/) or a diffusers DDPM folder")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if meta.pop("format", None) != FORMAT:
        raise CheckpointError(f"{meta_path}: expected format {FORMAT!r}")
    try:
        spec = ModelSpec(**meta)
    except TypeError as e:
        raise CheckpointError(f"{meta_path}: unexpected fields ({e})") from None
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=safetensors)
    except (OSError, ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder / 'unet'}: cannot load the network ({msg[:200]})") from None
    unet.eval().requires_grad_(False)
    return _own_storage(Preconditioned(unet, spec.precond, spec.sigma_data)), spec


def _own_storage(module: torch.nn.Module) -> torch.nn.Module:
    """Copy every weight out of the buffer the file was read into. A safetensors load leaves the
    tensors at the file's byte offsets and a pickle load at its own: the vectorised kernels round
    differently on differently aligned data (outputs 4e-7 apart from identical weights), so without
    the copy the same weights in two formats do not give the same outputs."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.data = t.data.clone(memory_format=torch.contiguous_format)
    return module


def check_guidance(spec: ModelSpec, guidance: float) -> None:
    """Classifier-free guidance needs a class-conditional model trained with a null label (those
    trustdiff trains); one InputError line otherwise."""
    if guidance == 1.0:
        return
    if spec.num_classes is None:
        raise InputError(f"guidance: expected 1 (no guidance) for an unconditional model, got {guidance:g}")
    if spec.size.startswith("pretrained:"):
        raise InputError(f"guidance: expected 1 for a published {spec.size.split(':')[1].upper()} checkpoint "
                         f"(it was not trained with a null label for classifier-free guidance), got {guidance:g}")


def sampling_sigmas(sampler: str, steps: int, spec: ModelSpec, device=None) -> torch.Tensor:
    """The levels each sampler walks: EDM's ρ = 7 schedule over [σ_min, σ_max] (NCSN's geometric
    levels for annealed Langevin). Shape [steps + 1], ending in 0."""
    if sampler == "langevin":
        return schedules.geometric_sigmas(steps, max(spec.sigma_min, 0.01), min(spec.sigma_max, 1.0), device=device)
    return schedules.karras_sigmas(steps, spec.sigma_min, spec.sigma_max, device=device)


def seed_noise(seeds, shape, device) -> tuple[list[torch.Generator], torch.Tensor]:
    """One CPU generator per seed and its first draw N×``shape`` (standard normal), moved to
    ``device``: the start of sampling. The generators stay on the CPU (see :func:`sample`)."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if not gens:
        return gens, torch.zeros(0, *shape, device=device)
    return gens, torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


def sample(denoiser, spec: ModelSpec, seeds, *, sampler: str = "heun", steps: int = 18,
           labels=None, guidance: float = 1.0, device=None, precision: str = "fp32", **sampler_kw) -> torch.Tensor:
    """Draw one image per seed (image i depends only on ``seeds[i]``): pixel space N×C×H×W in
    [0, 1], on the denoiser's device (or ``device``). ``labels`` (int64 [N]) for class-conditional
    models; ``guidance`` is the CFG scale w (1 = plain conditional).

    Seeds mean the same on every device: each seed's generator is a CPU ``torch.Generator``, and
    all of an image's noise (its start, and what a stochastic sampler adds) is drawn there and
    moved to the device (:func:`~trustdiff.diffusion.losses.randn_like`). So a seed gives the same
    noise on the CPU and on a GPU, and the images differ only by the devices' rounding — the
    contract of :func:`write_shards` (the result does not depend on where or how the work is
    split). The copy costs one C×H×W draw per image and level, little beside a network call.

    ``precision="bf16"`` runs each denoiser call under :func:`trustdiff.runtime.autocast`; the
    sampler's state (x, the σ levels, guidance's combination) stays fp32."""
    if sampler not in samplers.SAMPLERS:
        raise InputError(f"sampler: expected one of {sorted(samplers.SAMPLERS)}, got {sampler!r}")
    if steps < 1:
        raise InputError(f"steps: expected >= 1, got {steps}")
    device = torch.device(device) if device is not None else module_device(denoiser)
    shape = (spec.channels, spec.resolution, spec.resolution)
    sigmas = sampling_sigmas(sampler, steps, spec, device)
    gens, z = seed_noise(seeds, shape, device)
    x = float(sigmas[0]) * z
    denoiser = with_precision(denoiser, precision)
    cond = None
    if labels is not None:
        if spec.num_classes is None:
            raise InputError("labels: this model is unconditional; drop --class")
        cond = torch.as_tensor(labels, dtype=torch.long, device=device)
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= spec.num_classes):
            raise InputError(f"labels: expected values in 0..{spec.num_classes - 1}, got {cond.tolist()[:8]}")
        if guidance != 1.0:
            check_guidance(spec, guidance)
            denoiser = ClassifierFreeGuidance(denoiser, guidance, spec.null_label)
    x0 = samplers.SAMPLERS[sampler](denoiser, x, sigmas, cond=cond, generator=gens, **sampler_kw)
    return clamp_pixel(to_pixel(x0))


def class_cycle(spec: ModelSpec, n: int, classes=None):
    """Labels for n images of a class-conditional model, cycling through ``classes`` (default: all
    classes): int64 [n]; None for an unconditional model (which takes no ``classes``)."""
    if spec.num_classes is None:
        if classes:
            raise InputError("classes: this model is unconditional; drop --class")
        return None
    pool = list(classes) if classes else list(range(spec.num_classes))
    bad = [c for c in pool if not 0 <= c < spec.num_classes]
    if bad:
        raise InputError(f"classes: expected labels in 0..{spec.num_classes - 1}, got {bad}")
    return torch.tensor([pool[i % len(pool)] for i in range(n)], dtype=torch.long)


def generate(denoiser, spec: ModelSpec, n: int, *, seed: int = 0, sampler: str = "heun", steps: int = 18,
             labels=None, guidance: float = 1.0, batch: int = 256, progress: bool = False, precision: str = "fp32"):
    """``n`` images in batches on the denoiser's device (see :func:`sample`), image i from seed + i;
    ``labels`` default to :func:`class_cycle`. Returns (x N×C×H×W in [0, 1] on the CPU, labels
    int64 [N] or None)."""
    if labels is None:
        labels = class_cycle(spec, n)
    starts = range(0, n, batch)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="generate", unit="batch")
    chunks = []
    with torch.inference_mode():                   # the images leave as ordinary tensors (torch.cat below)
        for i in starts:
            seeds = range(seed + i, seed + min(i + batch, n))
            lab = None if labels is None else labels[i: i + len(seeds)]
            chunks.append(sample(denoiser, spec, seeds, sampler=sampler, steps=steps, labels=lab, guidance=guidance,
                                 precision=precision).cpu())
    x = torch.cat(chunks) if chunks else torch.zeros(0, spec.channels, spec.resolution, spec.resolution)
    return x, labels


def shard_name(k: int) -> str:
    return f"images-{k:05d}.npz"


def write_shards(denoiser, spec: ModelSpec, out, n: int, *, shard_size: int = 10_000, seed: int = 0,
                 sampler: str = "heun", steps: int = 18, classes=None, guidance: float = 1.0, batch: int = 256,
                 rank: int = 0, world: int = 1, progress: bool = False, precision: str = "fp32") -> list[Path]:
    """Generate ``n`` images into ``out/images-XXXXX.npz`` shards (images uint8 N×H×W×C, labels,
    seeds). Shard k holds images k·shard_size … (image i from seed + i, labels by
    :func:`class_cycle` over the global index), so the result does not depend on how the work is
    split: process ``rank`` of ``world`` writes the shards k ≡ rank (mod world), and a shard that
    is already on disk (written atomically, so whole) is skipped — a killed run resumes. Sampling
    runs on the denoiser's device, at ``precision``."""
    import io

    import numpy as np

    from ..persist import atomic_write_bytes
    from ..images import to_uint8

    if not isinstance(n, int) or n < 0 or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shards: expected n >= 0 and shard_size >= 1, got n={n!r}, shard_size={shard_size!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels_all = class_cycle(spec, n, classes)
    paths = []
    for k, lo in enumerate(range(0, n, shard_size)):
        path = out / shard_name(k)
        paths.append(path)
        if k % world != rank or path.is_file():
            continue
        hi = min(lo + shard_size, n)
        lab = None if labels_all is None else labels_all[lo:hi]
        x, _ = generate(denoiser, spec, hi - lo, seed=seed + lo, sampler=sampler, steps=steps, labels=lab,
                        guidance=guidance, batch=batch, progress=progress, precision=precision)
        buf = io.BytesIO()
        np.savez(buf, images=to_uint8(x), labels=(np.full(hi - lo, -1, np.int64) if lab is None else lab.numpy()),
                 seeds=np.arange(seed + lo, seed + hi))
        atomic_write_bytes(path, buf.getvalue())
    return paths

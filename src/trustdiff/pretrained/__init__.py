"""The field's published diffusion checkpoints, read without running their code.

* **EDM** (Karras et al. 2022) network pickles, ``*.pkl`` (``edm-cifar10-32x32-cond-vp.pkl``, …):
  EDM's pickles carry their own Python source and ``exec`` it on load. :mod:`.edm` reads them
  with a restricted unpickler that imports and runs nothing from the file: it takes the class
  names, constructor arguments and tensors and rebuilds the network in trustdiff's code
  (:mod:`trustdiff.nets.edm`).
* **guided-diffusion / improved-diffusion** (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021)
  state dicts, ``*.pt``: read with ``torch.load(weights_only=True)`` into trustdiff's ADM UNet
  (:mod:`trustdiff.nets.adm`). A ``.pt`` does not carry its architecture: it comes from a preset
  named after the published file (``adm-imagenet256-uncond``, ``iddpm-cifar10``, …; a published
  file name is recognised) or from ``--adm-config``, a JSON file of guided-diffusion's flags.
* Either can be converted once into a trustdiff model folder (``model.safetensors`` + ``config.json``
  + manifest) with ``trustdiff convert``; that folder loads like any other.

Every loader returns a Denoiser (``D(x, σ, cond=None)``, :mod:`trustdiff.diffusion.precond`) and
a :class:`~trustdiff.diffusion.model.ModelSpec`, so every capability takes these models.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, InputError

#: config.json format of a converted checkpoint folder
FORMAT = "trustdiff.pretrained/1"
EDM_SUFFIXES = (".pkl",)
ADM_SUFFIXES = (".pt", ".pth")
#: EDM's preconditioner classes → the ModelSpec ``precond`` names
EDM_PRECONDS = {"VPPrecond": "vp", "VEPrecond": "ve", "iDDPMPrecond": "iddpm", "EDMPrecond": "edm"}
#: EDM's sampling range (its generate.py: σ ∈ [max(0.002, σ_min of the net), min(80, σ_max of the net)])
SAMPLE_SIGMA_MIN, SAMPLE_SIGMA_MAX = 0.002, 80.0


def is_checkpoint_file(path) -> bool:
    """A published checkpoint file (EDM ``.pkl`` or ADM ``.pt``), by its suffix."""
    return Path(path).suffix.lower() in EDM_SUFFIXES + ADM_SUFFIXES


def converted_folder(path) -> Path | None:
    """The converted-checkpoint folder at ``path`` (or ``path/model``), else None."""
    import json

    path = Path(path)
    for folder in (path, path / "model"):
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("format") == FORMAT:
                    return folder
            except (ValueError, AttributeError):
                return None
    return None


def is_pretrained(path) -> bool:
    """Whether :func:`load_pretrained` (not the trustdiff/diffusers folder loader) opens ``path``."""
    return is_checkpoint_file(path) or converted_folder(path) is not None


def model_spec(info: dict, *, family: str, precond: str, data: str = "unknown"):
    """The :class:`~trustdiff.diffusion.model.ModelSpec` of a published network, from the
    ``*_model_info`` of its family: σ range clipped to EDM's sampling range."""
    from ..diffusion.model import ModelSpec

    return ModelSpec(precond=precond, size=f"pretrained:{family}", resolution=int(info["resolution"]),
                     channels=int(info["channels"]), num_classes=info.get("num_classes"),
                     sigma_min=max(SAMPLE_SIGMA_MIN, float(info["sigma_min"])),
                     sigma_max=min(SAMPLE_SIGMA_MAX, float(info["sigma_max"])), data=data)


def _edm_spec(den, data="unknown"):
    from . import edm

    cls = type(den).__name__
    return model_spec(edm.edm_model_info(den), family="edm", precond=EDM_PRECONDS.get(cls, cls), data=data)


def _adm_spec(cfg, data="unknown"):
    from . import adm

    return model_spec(adm.adm_model_info(cfg), family="adm", precond="ddpm", data=data)


def resolve_adm_config(path: Path, adm_config):
    """The ADM configuration of a ``.pt``: ``adm_config`` (a preset name or a JSON file), else the
    preset of a published file name; one InputError line when neither says it."""
    from . import adm

    if adm_config is None:
        adm_config = adm.preset_for_file(path)
        if adm_config is None:
            raise InputError(f"{path}: a .pt state dict does not say its architecture; expected --adm-config "
                             f"with a preset ({', '.join(sorted(adm.ADM_PRESETS))}) or a JSON file of "
                             "guided-diffusion's model flags")
    return adm.adm_config(adm_config)


def load_checkpoint_file(path, *, adm_config=None):
    """An EDM ``.pkl`` or an ADM ``.pt`` → (denoiser, spec, source) where ``source`` records
    what was read (family, file name, SHA-256, config) for a run's config.json."""
    from ..persist import sha256_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint file (.pkl, .pt), but it does not exist")
    suffix = path.suffix.lower()
    if suffix in EDM_SUFFIXES:
        if adm_config is not None:
            raise InputError(f"--adm-config: only for ADM .pt state dicts; {path.name} is an EDM pickle, "
                             "which carries its own architecture")
        from . import edm

        den = edm.load_edm_pickle(path)
        source = {"family": "edm", "config": edm.edm_config(den)}
        spec = _edm_spec(den)
    elif suffix in ADM_SUFFIXES:
        from . import adm

        cfg = resolve_adm_config(path, adm_config)
        den = adm.load_adm_checkpoint(path, cfg)
        source = {"family": "adm", "config": cfg}
        spec = _adm_spec(cfg)
    else:
        raise InputError(f"{path}: expected an EDM .pkl or an ADM .pt checkpoint, got {suffix or 'no suffix'!r}")
    source.update(file=path.name, sha256=sha256_file(path))
    return den, spec, source


def build_from_source(source: dict):
    """A fresh (random-weight) Denoiser for a recorded ``source`` (see :func:`load_checkpoint_file`)."""
    family = source.get("family")
    if family == "edm":
        from . import edm

        den = edm.build_edm(source["config"])
        return den, _edm_spec(den)
    if family == "adm":
        from . import adm

        cfg = adm.adm_config(source["config"])
        return adm.build_adm(cfg), _adm_spec(cfg)
    raise CheckpointError(f"converted checkpoint: expected family 'edm' or 'adm', got {family!r}")


def save_converted(folder, den, source: dict) -> Path:
    """Write ``den`` as a converted-checkpoint folder: model.safetensors, config.json (format,
    family, config, the source file's name and SHA-256), manifest; atomically."""
    from ..persist import save_weights_folder

    return save_weights_folder(folder, den, {"format": FORMAT, **source})


def load_converted(folder):
    """A converted-checkpoint folder → (denoiser, spec, source); every file is checked against the
    manifest, the weights load strictly into the recorded architecture."""
    from ..persist import load_strict, open_weights_folder

    cfg, sd = open_weights_folder(folder, FORMAT, "a converted checkpoint folder")
    source = {k: v for k, v in cfg.items() if k != "format"}
    den, spec = build_from_source(source)
    load_strict(den, sd, where=folder, name=source.get("file", "network"))
    den.eval().requires_grad_(False)
    return den, spec, source


def load_pretrained(path, *, adm_config=None):
    """Any published checkpoint trustdiff reads → (denoiser, spec, source): an EDM ``.pkl``, an ADM
    ``.pt`` (architecture from ``adm_config`` or the file's published name), or a folder written by
    ``trustdiff convert``."""
    folder = converted_folder(path)
    if folder is not None:
        if adm_config is not None:
            raise InputError(f"--adm-config: {path} is a converted folder, which records its architecture; drop it")
        return load_converted(folder)
    return load_checkpoint_file(path, adm_config=adm_config)


__all__ = [
    "FORMAT", "EDM_PRECONDS", "is_checkpoint_file", "converted_folder", "is_pretrained", "model_spec",
    "load_checkpoint_file", "build_from_source", "save_converted", "load_converted", "load_pretrained",
    "resolve_adm_config",
]

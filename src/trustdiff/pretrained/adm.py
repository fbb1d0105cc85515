"""guided-diffusion / improved-diffusion checkpoints (``.pt`` state dicts) as Denoisers.

A published ``.pt`` (``256x256_diffusion_uncond.pt``, ``cifar10_uncond_50M_500K.pt``, …) is a bare
state dict: its architecture and noise schedule come from the flags its README gives. Those flags
are kept here as presets (:data:`ADM_PRESETS`) and a user's own flags are accepted too
(:func:`adm_config`). The file is read with ``torch.load(weights_only=True)``, which runs no code,
into trustdiff's own UNet (:class:`trustdiff.nets.adm.UNetModel`, the same parameter names).

The network predicts ε (and, with a learned σ, a variance half that is dropped) at integer
timesteps t of a T-step DDPM schedule. :class:`~trustdiff.diffusion.precond.DiffusersDenoiser`
makes it a Denoiser ``D(x, σ, cond)``: x = x_t/√ᾱ_t at σ_t = √((1−ᾱ_t)/ᾱ_t), a σ between
training levels is a fractional t (log σ interpolated). improved-diffusion rescales t to
t·1000/T before the network (``rescale_timesteps``, on by default there): :class:`ADMBackbone`.

A config (JSON-able, what :func:`adm_config` returns)::

    {"name": preset or None, "family": "adm" | "iddpm",
     "unet": {UNetModel keyword arguments; attention_resolutions as downsample rates},
     "diffusion": {"steps", "noise_schedule": "linear" | "cosine", "learn_sigma",
                   "rescale_timesteps", "predict_xstart"}}
"""
from __future__ import annotations

import copy
import json
import pickle
import shlex
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..diffusion import schedules
from ..diffusion.precond import DiffusersDenoiser
from ..errors import CheckpointError, InputError, UnsafeFileError
from ..persist import state_dict_mismatch
from ..nets.adm import DEFAULT_CHANNEL_MULT, LAYOUTS, UNetModel

NUM_CLASSES = 1000                      # script_util.NUM_CLASSES of both codebases: ImageNet
SCHEDULES = ("linear", "cosine")

#: the two codebases' flags and their defaults (``script_util.model_and_diffusion_defaults``);
#: they differ: improved-diffusion rescales timesteps by default, has no num_head_channels, ...
FLAG_DEFAULTS = {
    "guided-diffusion": dict(
        image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
        num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
        class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
        use_fp16=False, use_new_attention_order=False, learn_sigma=False, diffusion_steps=1000,
        noise_schedule="linear", timestep_respacing="", use_kl=False, predict_xstart=False,
        rescale_timesteps=False, rescale_learned_sigmas=False),
    "improved-diffusion": dict(
        image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
        attention_resolutions="16,8", dropout=0.0, learn_sigma=False, sigma_small=False,
        class_cond=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="",
        use_kl=False, predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
        use_checkpoint=False, use_scale_shift_norm=True),
}
#: codebase → (UNet layout, family)
CODEBASES = {"guided-diffusion": ("guided", "adm"), "improved-diffusion": ("improved", "iddpm")}
#: flags that do not change the network or D(x, σ): training (loss, checkpointing, fp16
#: compute; trustdiff loads weights as fp32) and sampling (respacing) choices
IGNORED_FLAGS = ("use_checkpoint", "use_fp16", "use_kl", "rescale_learned_sigmas", "sigma_small", "timestep_respacing")

UNET_KEYS = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
             "attention_resolutions", "dropout", "channel_mult", "conv_resample", "num_classes",
             "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm",
             "resblock_updown", "use_new_attention_order", "layout")
UNET_REQUIRED = ("image_size", "model_channels", "num_res_blocks", "attention_resolutions")
DIFFUSION_KEYS = ("steps", "noise_schedule", "learn_sigma", "rescale_timesteps", "predict_xstart")
DIFFUSION_REQUIRED = ("steps", "noise_schedule")
TOP_KEYS = ("name", "family", "unet", "diffusion", "file", "paper")

# The published checkpoints: (codebase, flags exactly as their README gives them, file, paper).
# guided-diffusion README (openai/guided-diffusion@22e0df8), the MODEL_FLAGS lines 49, 56, 63, 70,
# 77, 104, 111; improved-diffusion README (openai/improved-diffusion@1bc7bbb), MODEL_FLAGS +
# DIFFUSION_FLAGS lines 87-88, 95-96, 103-104, 119-120, 135-136, 143-144.
_ADM = "Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis"
_IDDPM = "Nichol & Dhariwal 2021, Improved Denoising Diffusion Probabilistic Models"
_PUBLISHED = {
    "adm-imagenet64-cond": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",  # noqa: E501  README line 49
                            "64x64_diffusion.pt", _ADM),
    "adm-imagenet128-cond": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",  # noqa: E501  README line 56
                             "128x128_diffusion.pt", _ADM),
    "adm-imagenet256-cond": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",  # noqa: E501  README line 63
                             "256x256_diffusion.pt", _ADM),
    "adm-imagenet256-uncond": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",  # noqa: E501  README line 70
                               "256x256_diffusion_uncond.pt", _ADM),
    "adm-imagenet512-cond": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True",  # noqa: E501  README line 77
                             "512x512_diffusion.pt", _ADM),
    "adm-lsun-bedroom": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",  # noqa: E501  README line 104
                         "lsun_bedroom.pt", _ADM),
    "adm-lsun-horse-nodropout": ("guided-diffusion", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",  # noqa: E501  README line 111
                                 "lsun_horse_nodropout.pt", _ADM),
    # the CIFAR-10 model of denoised smoothing (Carlini et al. 2023, "(Certified!!) Adversarial Robustness for Free!")
    "iddpm-cifar10": ("improved-diffusion", "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine",  # noqa: E501  README lines 95-96
                      "cifar10_uncond_50M_500K.pt", _IDDPM),
    "iddpm-cifar10-vlb": ("improved-diffusion", "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --use_kl True",  # noqa: E501  README lines 143-144
                          "cifar10_uncond_vlb_50M_500K.pt", _IDDPM),
    "iddpm-imagenet64": ("improved-diffusion", "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine",  # noqa: E501  README lines 87-88
                         "imagenet64_uncond_100M_1500K.pt", _IDDPM),
    "iddpm-imagenet64-vlb": ("improved-diffusion", "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine --use_kl True",  # noqa: E501  README lines 135-136
                             "imagenet64_uncond_vlb_100M_1500K.pt", _IDDPM),
    "iddpm-imagenet64-cond": ("improved-diffusion", "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True --diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False",  # noqa: E501  README lines 103-104
                              "imagenet64_cond_270M_250K.pt", _IDDPM),
    "iddpm-lsun-bedroom": ("improved-diffusion", "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False",  # noqa: E501  README lines 119-120 (and 127-128, lr 2e-5)
                           "lsun_uncond_100M_1200K_bs128.pt", _IDDPM),
}
#: published files that share a preset's architecture and schedule (improved-diffusion README line 124)
_SAME_AS = {"lsun_uncond_100M_2400K_bs64.pt": "iddpm-lsun-bedroom"}


# ---- flags → config ------------------------------------------------------------------------------


def parse_flags(text: str) -> dict:
    """``"--image_size 256 --class_cond True ..."`` → ``{"image_size": "256", "class_cond": "True"}``."""
    words = shlex.split(text)
    if len(words) % 2 or not all(w.startswith("--") for w in words[::2]):
        raise InputError(f"adm flags: expected '--name value' pairs, got {text[:80]!r}")
    return {k[2:]: v for k, v in zip(words[::2], words[1::2])}


def _bool(name: str, v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise InputError(f"adm flag {name}: expected True or False, got {v!r}")


def _int(name: str, v) -> int:
    try:
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ValueError
        return int(float(v))
    except (TypeError, ValueError):
        raise InputError(f"adm flag {name}: expected an integer, got {v!r}") from None


def _float(name: str, v) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"adm flag {name}: expected a number, got {v!r}") from None


def _numbers(name: str, v, kind=int) -> list:
    """``"32,16,8"`` or ``[32, 16, 8]`` → a list of numbers."""
    items = [s for s in v.split(",") if s.strip()] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)):
        raise InputError(f"adm flag {name}: expected comma-separated numbers, got {v!r}")
    conv = _int if kind is int else _float
    return [conv(name, s) for s in items]


def _codebase(flags: Mapping) -> str:
    cb = flags.get("codebase")
    aliases = {"guided": "guided-diffusion", "improved": "improved-diffusion"}
    cb = aliases.get(cb, cb)
    if cb not in FLAG_DEFAULTS:
        raise InputError(f"adm flags: missing or unknown 'codebase' {flags.get('codebase')!r}; expected "
                         "'guided-diffusion' or 'improved-diffusion' (their defaults differ, e.g. rescale_timesteps)")
    return cb


def config_from_flags(flags: Mapping, *, name: str | None = None, check_build: bool = True) -> dict:
    """A flat dict of guided-/improved-diffusion ``script_util`` flags (plus ``"codebase"``) →
    a config, defaults as that codebase's ``model_and_diffusion_defaults``. Values may be the
    flag strings (``"True"``, ``"32,16,8"``) or JSON values."""
    cb = _codebase(flags)
    unknown = sorted(set(flags) - set(FLAG_DEFAULTS[cb]) - {"codebase"})
    if unknown:
        raise InputError(f"adm flags: unknown flag {unknown[0]!r} for {cb}; expected some of {sorted(FLAG_DEFAULTS[cb])}")
    f = {**FLAG_DEFAULTS[cb], **flags}
    layout, family = CODEBASES[cb]
    size = _int("image_size", f["image_size"])
    rates = [size // r for r in _numbers("attention_resolutions", f["attention_resolutions"])]
    mult = _numbers("channel_mult", f.get("channel_mult", "")) or list(_default_mult(size))
    learn_sigma = _bool("learn_sigma", f["learn_sigma"])
    unet = dict(image_size=size, in_channels=3, model_channels=_int("num_channels", f["num_channels"]),
                out_channels=6 if learn_sigma else 3, num_res_blocks=_int("num_res_blocks", f["num_res_blocks"]),
                attention_resolutions=rates, dropout=_float("dropout", f["dropout"]), channel_mult=mult,
                conv_resample=True, num_classes=NUM_CLASSES if _bool("class_cond", f["class_cond"]) else None,
                num_heads=_int("num_heads", f["num_heads"]),
                num_head_channels=_int("num_head_channels", f.get("num_head_channels", -1)),
                num_heads_upsample=_int("num_heads_upsample", f["num_heads_upsample"]),
                use_scale_shift_norm=_bool("use_scale_shift_norm", f["use_scale_shift_norm"]),
                resblock_updown=_bool("resblock_updown", f.get("resblock_updown", False)),
                use_new_attention_order=_bool("use_new_attention_order", f.get("use_new_attention_order", False)),
                layout=layout)
    diffusion = dict(steps=_int("diffusion_steps", f["diffusion_steps"]), noise_schedule=f["noise_schedule"],
                     learn_sigma=learn_sigma, rescale_timesteps=_bool("rescale_timesteps", f["rescale_timesteps"]),
                     predict_xstart=_bool("predict_xstart", f["predict_xstart"]))
    return _validate({"name": name, "family": family, "unet": unet, "diffusion": diffusion}, check_build=check_build)


def _default_mult(size: int) -> tuple:
    if size not in DEFAULT_CHANNEL_MULT:
        raise InputError(f"adm config: no default channel_mult for image_size {size}; expected one of "
                         f"{sorted(DEFAULT_CHANNEL_MULT)} or an explicit channel_mult")
    return DEFAULT_CHANNEL_MULT[size]


def _preset(name: str) -> dict:
    codebase, flags, file, paper = _PUBLISHED[name]
    cfg = config_from_flags({"codebase": codebase, **parse_flags(flags)}, name=name, check_build=False)  # tests build them
    return {**cfg, "file": file, "paper": paper}


# ---- structured config: validation -----------------------------------------------------------


def _section(cfg: Mapping, key: str, allowed, required) -> dict:
    sec = cfg.get(key)
    if not isinstance(sec, Mapping):
        raise InputError(f"adm config: missing {key!r}; expected a mapping of {', '.join(allowed)}")
    unknown = sorted(set(sec) - set(allowed))
    if unknown:
        raise InputError(f"adm config: unknown key {key}.{unknown[0]!r}; expected some of {', '.join(allowed)}")
    missing = [k for k in required if k not in sec]
    if missing:
        raise InputError(f"adm config: missing key {key}.{missing[0]!r}")
    return dict(sec)


def _validate(cfg: Mapping, *, check_build: bool = True) -> dict:
    """A structured config, checked and completed (every UNet and diffusion key set, JSON values);
    with ``check_build`` the UNet is also built on the meta device (no memory) to check it."""
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:
        raise InputError(f"adm config: unknown key {unknown[0]!r}; expected {', '.join(TOP_KEYS)}")
    d = _section(cfg, "diffusion", DIFFUSION_KEYS, DIFFUSION_REQUIRED)
    u = _section(cfg, "unet", UNET_KEYS, UNET_REQUIRED)
    if d["noise_schedule"] not in SCHEDULES:
        raise InputError(f"adm config: diffusion.noise_schedule: expected one of {SCHEDULES}, got {d['noise_schedule']!r}")
    diffusion = dict(steps=_int("diffusion.steps", d["steps"]), noise_schedule=d["noise_schedule"],
                     learn_sigma=_bool("diffusion.learn_sigma", d.get("learn_sigma", False)),
                     rescale_timesteps=_bool("diffusion.rescale_timesteps", d.get("rescale_timesteps", False)),
                     predict_xstart=_bool("diffusion.predict_xstart", d.get("predict_xstart", False)))
    if diffusion["steps"] < 2:
        raise InputError(f"adm config: diffusion.steps: expected at least 2, got {diffusion['steps']}")
    size = _int("unet.image_size", u["image_size"])
    in_ch = _int("unet.in_channels", u.get("in_channels", 3))
    out_ch = _int("unet.out_channels", u.get("out_channels", in_ch * (2 if diffusion["learn_sigma"] else 1)))
    if out_ch != in_ch * (2 if diffusion["learn_sigma"] else 1):
        raise InputError(f"adm config: unet.out_channels {out_ch} does not fit diffusion.learn_sigma "
                         f"{diffusion['learn_sigma']} with in_channels {in_ch} (expected {in_ch} or {2 * in_ch} with a learned σ)")
    n_cls = u.get("num_classes")
    layout = u.get("layout", "guided")
    if layout not in LAYOUTS:
        raise InputError(f"adm config: unet.layout: expected one of {LAYOUTS}, got {layout!r}")
    unet = dict(image_size=size, in_channels=in_ch, model_channels=_int("unet.model_channels", u["model_channels"]),
                out_channels=out_ch, num_res_blocks=_int("unet.num_res_blocks", u["num_res_blocks"]),
                attention_resolutions=_numbers("unet.attention_resolutions", u["attention_resolutions"]),
                dropout=_float("unet.dropout", u.get("dropout", 0.0)),
                channel_mult=_numbers("unet.channel_mult", u.get("channel_mult") or list(_default_mult(size)), float),
                conv_resample=_bool("unet.conv_resample", u.get("conv_resample", True)),
                num_classes=None if n_cls is None else _int("unet.num_classes", n_cls),
                num_heads=_int("unet.num_heads", u.get("num_heads", 1)),
                num_head_channels=_int("unet.num_head_channels", u.get("num_head_channels", -1)),
                num_heads_upsample=_int("unet.num_heads_upsample", u.get("num_heads_upsample", -1)),
                use_scale_shift_norm=_bool("unet.use_scale_shift_norm", u.get("use_scale_shift_norm", False)),
                resblock_updown=_bool("unet.resblock_updown", u.get("resblock_updown", False)),
                use_new_attention_order=_bool("unet.use_new_attention_order", u.get("use_new_attention_order", False)),
                layout=layout)
    unet["channel_mult"] = [int(m) if float(m).is_integer() else m for m in unet["channel_mult"]]
    family = cfg.get("family") or ("iddpm" if layout == "improved" else "adm")
    if family not in ("adm", "iddpm"):
        raise InputError(f"adm config: family: expected 'adm' or 'iddpm', got {family!r}")
    out = {"name": cfg.get("name"), "family": family, "unet": unet, "diffusion": diffusion}
    out.update({k: cfg[k] for k in ("file", "paper") if cfg.get(k) is not None})
    if check_build:
        try:
            with torch.device("meta"):
                UNetModel(**_unet_kwargs(out))
        except (ValueError, TypeError, ZeroDivisionError) as e:
            raise InputError(f"adm config: the UNet cannot be built ({str(e).splitlines()[0]})") from None
    return out


def _unet_kwargs(cfg: Mapping) -> dict:
    u = dict(cfg["unet"])
    u["attention_resolutions"] = tuple(u["attention_resolutions"])
    u["channel_mult"] = tuple(u["channel_mult"])
    return u


#: preset name → config (see the module docstring), from the published flags above
ADM_PRESETS: dict[str, dict] = {name: _preset(name) for name in _PUBLISHED}


def adm_config(spec) -> dict:
    """The config of ``spec``: a preset name (:data:`ADM_PRESETS`), a JSON file, a dict, or a
    string of ``--flag value`` pairs. A dict (or JSON object) is either structured
    (``{"unet": {...}, "diffusion": {...}}``) or guided-/improved-diffusion's flat flags with a
    ``"codebase"`` key (``{"codebase": "guided-diffusion", "image_size": 256, ...}``; a flag string
    starts with ``--codebase guided-diffusion`` then). One InputError line for anything wrong."""
    if isinstance(spec, (str, Path)):
        s = str(spec)
        if s in ADM_PRESETS:
            return copy.deepcopy(ADM_PRESETS[s])
        if s.lstrip().startswith("--"):
            return config_from_flags(parse_flags(s))
        path = Path(s)
        if not path.is_file():
            raise InputError(f"adm config {s!r}: expected a preset ({', '.join(sorted(ADM_PRESETS))}) or a JSON file")
        try:
            spec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"adm config {path}: not readable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, Mapping):
        raise InputError(f"adm config: expected a preset name, a JSON file or a mapping, got {type(spec).__name__}")
    if "unet" in spec or "diffusion" in spec:
        return _validate(spec)
    return config_from_flags(spec)


def preset_for_file(path) -> str | None:
    """The preset of a published file name (``…/256x256_diffusion_uncond.pt`` → ``adm-imagenet256-uncond``)."""
    name = Path(path).name
    for preset, cfg in ADM_PRESETS.items():
        if cfg["file"] == name:
            return preset
    return _SAME_AS.get(name)


# ---- schedule, network, Denoiser -----------------------------------------------------------------


def adm_alphas_cumprod(schedule: str, steps: int) -> torch.Tensor:
    """ᾱ_t, t = 0..T−1 (float64 [T]) of guided-diffusion's ``get_named_beta_schedule``: ``linear``
    β from 1e-4·1000/T to 0.02·1000/T (Ho et al. 2020 at any T), ``cosine`` of Nichol & Dhariwal
    2021 (s = 0.008, β ≤ 0.999)."""
    if schedule == "linear":
        scale = 1000 / steps
        return schedules.ddpm_alphas_cumprod(steps, 1e-4 * scale, 0.02 * scale)
    if schedule == "cosine":
        return schedules.cosine_alphas_cumprod(steps)
    raise InputError(f"adm config: noise_schedule: expected one of {SCHEDULES}, got {schedule!r}")


class ADMBackbone(nn.Module):
    """The UNet as its diffusion calls it: ``net(x, t·timestep_scale, cond)``; the scale is
    1000/T where the codebase rescales timesteps (improved-diffusion's default), else 1."""

    def __init__(self, net: UNetModel, timestep_scale: float = 1.0):
        super().__init__()
        self.net, self.timestep_scale = net, float(timestep_scale)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.net(x, t * self.timestep_scale if self.timestep_scale != 1.0 else t, cond)


def _denoiser(net: UNetModel, cfg: Mapping) -> DiffusersDenoiser:
    d = cfg["diffusion"]
    scale = 1000.0 / d["steps"] if d["rescale_timesteps"] else 1.0
    return DiffusersDenoiser(ADMBackbone(net, scale), adm_alphas_cumprod(d["noise_schedule"], d["steps"]),
                             "sample" if d["predict_xstart"] else "epsilon")


def build_adm(config) -> DiffusersDenoiser:
    """A Denoiser with a fresh (ADM-initialised, random) UNet for ``config``; its state dict is
    the UNet's under ``unet.net.``."""
    cfg = adm_config(config)
    return _denoiser(UNetModel(**_unet_kwargs(cfg)), cfg)


def adm_model_info(config) -> dict:
    """What a network of ``config`` means: resolution, channels, num_classes (None:
    unconditional), σ range of its training schedule (model units), learn_sigma, steps, family."""
    cfg = adm_config(config)
    u, d = cfg["unet"], cfg["diffusion"]
    sig = schedules.alpha_bar_to_sigma(adm_alphas_cumprod(d["noise_schedule"], d["steps"]))
    return {"resolution": u["image_size"], "channels": u["in_channels"], "num_classes": u["num_classes"],
            "sigma_min": float(sig[0]), "sigma_max": float(sig[-1]), "learn_sigma": d["learn_sigma"],
            "steps": d["steps"], "noise_schedule": d["noise_schedule"], "family": cfg["family"],
            "name": cfg.get("name")}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict read with ``torch.load(weights_only=True)`` (nothing in the file runs);
    ``.safetensors`` too. One-line UnsafeFileError for a pickle that holds more than tensors,
    CheckpointError for a missing, corrupted or non-state-dict file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ADM checkpoint {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        from ..persist import load_safetensors

        return load_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in first.lower():
            raise UnsafeFileError(f"refusing ADM checkpoint {path}: it holds Python objects, not only tensors, "
                                  f"and loading it could run code (torch.load weights_only=True: {first[:160]})") from None
        raise CheckpointError(f"ADM checkpoint {path} is corrupted or not a torch file ({first[:160]})") from None
    except Exception as e:                            # zip/EOF/format errors of a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"ADM checkpoint {path} is corrupted or not a torch file ({first[:160]})") from None
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"ADM checkpoint {path}: expected a state dict (name → tensor), got {type(obj).__name__}")
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise CheckpointError(f"ADM checkpoint {path}: expected a state dict of tensors, but {bad!r} holds "
                              f"{type(obj[bad]).__name__}")
    return dict(obj)


def load_adm_checkpoint(path, config) -> DiffusersDenoiser:
    """A guided-/improved-diffusion ``.pt`` → an eval-mode, frozen, fp32 Denoiser ``D(x, σ, cond)``.

    ``config``: a preset name, a JSON file, or a dict (see :func:`adm_config`). The state dict
    must match the configured UNet exactly (strict); a mismatch is one CheckpointError line naming
    the missing/unexpected keys or the first shape mismatch, and the preset the file name suggests.
    """
    path = Path(path)
    cfg = adm_config(config)
    sd = read_state_dict(path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}   # fp16 weights → fp32
    with torch.device("meta"):                  # no memory, no random init: the file's tensors are assigned
        net = UNetModel(**_unet_kwargs(cfg))
    problem = state_dict_mismatch(net.state_dict(), sd)
    if problem:
        guess = preset_for_file(path)
        hint = (f"the file name suggests --adm-config {guess}" if guess and guess != cfg.get("name")
                else "pass the --adm-config (preset or flags JSON) it was trained with")
        raise CheckpointError(f"ADM checkpoint {path} does not fit {cfg.get('name') or 'the given config'}: {problem} "
                              f"({_describe(sd)}); {hint}")
    net.load_state_dict(sd, strict=True, assign=True)
    return _denoiser(net, cfg).eval().requires_grad_(False)


def _describe(sd: Mapping) -> str:
    """What a state dict's shapes say of its network, for a mismatch message."""
    first, out, labels = (sd.get(k) for k in ("input_blocks.0.0.weight", "out.2.weight", "label_emb.weight"))
    if first is None or out is None or first.ndim != 4 or out.ndim != 4:
        return "the file is not an ADM UNet state dict"
    cond = f"{labels.shape[0]} classes" if labels is not None else "unconditional"
    return f"the file: first conv {first.shape[1]}→{first.shape[0]} channels, {out.shape[0]} output channels, {cond}"


__all__ = [
    "ADM_PRESETS", "FLAG_DEFAULTS", "adm_config", "config_from_flags", "parse_flags", "preset_for_file",
    "adm_alphas_cumprod", "ADMBackbone", "build_adm", "adm_model_info", "read_state_dict", "load_adm_checkpoint",
]

"""The Denoiser contract and the preconditioning that turns a network into one.

A *Denoiser* is any callable ``D(x, sigma, cond=None) -> x0_hat`` with

* ``x``: model-space tensor N×C×H×W, a clean image in [-1, 1] plus Gaussian noise of std σ;
* ``sigma``: a float, a 0-d tensor, or a tensor [N] (model units, per sample);
* ``cond``: optional conditioning (class labels int64 [N], text embeddings N×L×D, ...);
* returns the estimate of the clean image, N×C×H×W in model space.

Preconditioning (Karras et al. 2022, Table 1) wraps a raw network F:
``D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ))``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..runtime import compile_network
from . import schedules


def as_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a noise level (float, 0-d or [N]) to a tensor [N] with x's device and dtype."""
    s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    return s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(x.shape[0])


def _bc(s: torch.Tensor) -> torch.Tensor:
    """[N] → [N, 1, 1, 1] for broadcasting against images."""
    return s.reshape(-1, 1, 1, 1)


# --- EDM Table 1: one function per column -------------------------------------------------------

def edm_coefficients(sigma, sigma_data: float = 0.5):
    """EDM: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ln σ."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def vp_coefficients(sigma, M: int = 1000, beta_d: float = schedules.VP_BETA_D, beta_min: float = schedules.VP_BETA_MIN):
    """VP: c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = (M−1)·t(σ)."""
    c_skip = torch.ones_like(sigma)
    c_out = -sigma
    c_in = 1 / (sigma**2 + 1).sqrt()
    c_noise = (M - 1) * schedules.vp_t(sigma, beta_d, beta_min)
    return c_skip, c_out, c_in, c_noise


def ve_coefficients(sigma):
    """VE: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(½σ)."""
    return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


COEFFICIENTS = {"edm": edm_coefficients, "vp": vp_coefficients, "ve": ve_coefficients}


def call_backbone(net: nn.Module, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
    """Run a raw network F(x_in; c_noise, cond). diffusers UNets take the noise level as their
    (float) timestep; class labels go to ``class_labels`` (the null class when ``cond`` is None
    on a class-conditional net) and embeddings to ``encoder_hidden_states``. Any other module is
    called as ``net(x, c_noise, cond)``."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    base = getattr(net, "module", net)            # a DDP-wrapped network dispatches on its module
    if isinstance(base, UNet2DModel):
        n_cls = base.config.num_class_embeds
        if n_cls and cond is None:
            cond = torch.full((x.shape[0],), n_cls - 1, dtype=torch.long, device=x.device)
        return net(x, c_noise, class_labels=cond if n_cls else None).sample
    if isinstance(base, UNet2DConditionModel):
        return net(x, c_noise, encoder_hidden_states=cond).sample
    return net(x, c_noise, cond)


class Preconditioned(nn.Module):
    """A network F made into a Denoiser by EDM/VP/VE preconditioning (EDM Table 1).

    Args:
        net: the raw network (a diffusers UNet, or any ``net(x, c_noise, cond)``).
        kind: ``"edm"``, ``"vp"`` or ``"ve"``.
        sigma_data: σ_data of EDM (0.5 for images in [-1, 1]).
    """

    def __init__(self, net: nn.Module, kind: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        if kind not in COEFFICIENTS:
            raise ValueError(f"preconditioning: expected one of {sorted(COEFFICIENTS)}, got {kind!r}")
        self.net, self.kind, self.sigma_data = net, kind, sigma_data

    @property
    def config(self) -> dict:
        return {"kind": self.kind, "sigma_data": self.sigma_data}

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at σ [N], each [N]."""
        if self.kind == "edm":
            return edm_coefficients(sigma, self.sigma_data)
        return COEFFICIENTS[self.kind](sigma)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """D(x; σ) for model-space x N×C×H×W; returns x̂₀ N×C×H×W."""
        sigma = as_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = call_backbone(self.net, _bc(c_in) * x, c_noise, cond)
        return _bc(c_skip) * x + _bc(c_out) * F_x.to(x.dtype)


def compile_backbone(denoiser: nn.Module) -> nn.Module:
    """Compile a denoiser's network in place (:func:`trustdiff.runtime.compile_network`): the
    network F of a :class:`Preconditioned`, the UNet of a :class:`DiffusersDenoiser`; the
    preconditioning around it, which takes σ as a Python float, stays eager. Returns the denoiser."""
    base = getattr(denoiser, "module", denoiser)
    if isinstance(base, Preconditioned):
        compile_network(base.net)
    elif isinstance(base, DiffusersDenoiser):
        compile_network(base.unet)
    else:
        raise InputError(f"--compile: expected a trustdiff denoiser (Preconditioned or DiffusersDenoiser), "
                         f"got {type(base).__name__}")
    return denoiser


class DiffusersDenoiser(nn.Module):
    """A diffusers UNet trained with a discrete DDPM schedule, as a Denoiser.

    The DDPM state x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε is x·√ᾱ_t for our x = x₀ + σ·ε at
    σ_t = √((1−ᾱ_t)/ᾱ_t). A continuous σ maps to a fractional timestep by interpolating log σ_t
    over the table (the UNet's sinusoidal embedding takes float timesteps);
    :meth:`timestep_at_least` gives the discrete step whose noise is at least σ.

    Args:
        unet: ``UNet2DModel`` or ``UNet2DConditionModel``; if it predicts a learned variance
            (2C output channels) only the first C are used.
        alphas_cumprod: ᾱ_t, tensor [T].
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type: expected epsilon, v_prediction or sample, got {prediction_type!r}")
        self.unet, self.prediction_type = unet, prediction_type
        sig = schedules.alpha_bar_to_sigma(torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        self.register_buffer("log_sigmas", sig.log(), persistent=False)

    @property
    def sigmas(self) -> torch.Tensor:
        """σ_t for t = 0..T−1, increasing, float64."""
        return self.log_sigmas.exp()

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose interpolated log σ equals log σ, clamped to [0, T−1]."""
        log_s = sigma.detach().to(torch.float64).clamp_min(1e-30).log()
        ls = self.log_sigmas
        idx = torch.searchsorted(ls, log_s.contiguous()).clamp(1, len(ls) - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_s - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).clamp(0, len(ls) - 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ at a (fractional) timestep, interpolating log σ_t linearly."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.log_sigmas.device).clamp(0, len(self.log_sigmas) - 1)
        lo = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    def timestep_at_least(self, sigma) -> torch.Tensor:
        """The smallest discrete t with σ_t ≥ σ (never less noise than asked for). Raises
        ValueError when σ exceeds the schedule's σ_max."""
        s = torch.as_tensor(sigma, dtype=torch.float64, device=self.log_sigmas.device).reshape(-1)
        if bool((s > self.sigma_max * (1 + 1e-12)).any()):
            raise ValueError(f"sigma {float(s.max()):.4g} exceeds the schedule's maximum {self.sigma_max:.4g}")
        return torch.searchsorted(self.log_sigmas, s.clamp_min(1e-30).log().contiguous())

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """D(x; σ): model-space x N×C×H×W at noise σ (float or [N]); returns x̂₀ N×C×H×W."""
        sigma = as_sigma(sigma, x)
        alpha = _bc(1 / (sigma**2 + 1).sqrt())                    # √ᾱ
        t = self.sigma_to_t(sigma).to(x.dtype)
        out = call_backbone(self.unet, alpha * x, t, cond)
        out = out[:, : x.shape[1]].to(x.dtype)                   # drop a learned-variance half
        if self.prediction_type == "epsilon":
            return x - _bc(sigma) * out
        if self.prediction_type == "v_prediction":                # x₀ = √ᾱ·x_t − √(1−ᾱ)·v
            return alpha**2 * x - alpha * _bc(sigma) * out
        return out

    @classmethod
    def from_pretrained(cls, path, *, allow_pickle: bool = False) -> "DiffusersDenoiser":
        """Load a local diffusers folder: a pipeline folder (``unet/`` + ``scheduler/``) or a UNet
        folder with a ``scheduler_config.json`` beside its ``config.json``. Nothing is downloaded;
        weights that are only a pickle are refused unless ``allow_pickle``."""
        from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

        from ..persist import use_safetensors

        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a diffusers model folder, but it does not exist")
        unet_dir = path / "unet" if (path / "unet").is_dir() else path
        sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
        safetensors = use_safetensors(unet_dir, allow_pickle=allow_pickle)
        try:
            import json

            cls_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name", "UNet2DModel")
            unet_cls = UNet2DConditionModel if cls_name == "UNet2DConditionModel" else UNet2DModel
            unet = unet_cls.from_pretrained(unet_dir, local_files_only=True, use_safetensors=safetensors)
            sched = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: not a loadable diffusers DDPM model folder ({msg})") from None
        return cls(unet, sched.alphas_cumprod, sched.config.prediction_type)


def discrete_sigmas(denoiser: DiffusersDenoiser, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """n of the model's own training σ_t, evenly spaced in t from T−1 down to 0, then 0 —
    the leading-spacing schedule of DDIM/DDPM samplers. Shape [n + 1]."""
    T = len(denoiser.log_sigmas)
    t = torch.linspace(T - 1, 0, n).round().long()
    s = denoiser.log_sigmas[t].exp()
    return torch.cat([s, s.new_zeros(1)]).to(device=device, dtype=dtype)


__all__ = [
    "as_sigma", "edm_coefficients", "vp_coefficients", "ve_coefficients", "call_backbone",
    "Preconditioned", "DiffusersDenoiser", "discrete_sigmas",
]

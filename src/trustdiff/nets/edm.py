"""EDM's networks (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models") and its four preconditionings, as trustdiff Denoisers.

* :class:`SongUNet`: DDPM++ / NCSN++ (Song et al. 2021), as EDM re-implemented them;
* :class:`DhariwalUNet`: ADM (Dhariwal & Nichol 2021), as EDM re-implemented it;
* :class:`VPPrecond`, :class:`VEPrecond`, :class:`iDDPMPrecond`, :class:`EDMPrecond`: EDM Table 1,
  ``D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ), class_labels)``.

Module and parameter names, shapes and constructor keywords are those of NVlabs/edm
(``training/networks.py``), so the ``init_kwargs`` and tensors of a published EDM pickle build and
fill these classes exactly (:mod:`trustdiff.pretrained.edm` reads the pickle without running it).
Numerics are EDM's in fp32; ``use_fp16`` runs the network in fp16 on CUDA, as EDM does.

A preconditioner is a trustdiff Denoiser: ``forward(x, sigma, cond=None)`` with int64 class labels
``cond`` [N] (made one-hot here), or EDM's float ``class_labels`` [N, label_dim] passed directly.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.functional import silu

from ..diffusion import schedules
from ..diffusion.precond import as_sigma, edm_coefficients, ve_coefficients, vp_coefficients
from ..errors import InputError

# --- layers --------------------------------------------------------------------------------------


def initial_weight(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM's initialisations: Xavier (Glorot & Bengio 2010) or Kaiming (He et al. 2015), uniform
    or normal, for a tensor of ``shape``."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (2 * torch.rand(*shape) - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (2 * torch.rand(*shape) - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init_mode: expected xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal, got {mode!r}")


class Linear(nn.Module):
    """y = x·Wᵀ + b, with W [out, in] initialised as EDM does (scaled by ``init_weight``)."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(initial_weight([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(initial_weight([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y if self.bias is None else y + self.bias.to(x.dtype)


def resample_filter_2d(taps) -> torch.Tensor:
    """The separable FIR filter f⊗f / (Σf)², shape [1, 1, k, k] (EDM: [1,1] box, [1,3,3,1] binomial)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


def _upsample(x, f, pad: int):
    """×2 upsampling by the transposed depthwise filter 4f (stride 2)."""
    c = x.shape[1]
    return nn.functional.conv_transpose2d(x, (4 * f).tile([c, 1, 1, 1]), groups=c, stride=2, padding=pad)


def _downsample(x, f, pad: int):
    """×½ downsampling by the depthwise filter f (stride 2)."""
    c = x.shape[1]
    return nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=pad)


class Conv2d(nn.Module):
    """A k×k convolution (``kernel=0``: none, only the resampling) with optional ×2 up- or
    ×½ down-sampling by the FIR ``resample_filter``. ``fused_resample`` convolves at the finer
    resolution and resamples with the padding split as EDM does (used by NCSN++'s residual encoder)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(initial_weight(shape, **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(initial_weight([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer("resample_filter", resample_filter_2d(resample_filter) if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        conv = nn.functional.conv2d
        if self.fused_resample and w is not None and self.up:
            x = conv(_upsample(x, f, max(f_pad - w_pad, 0)), w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and w is not None and self.down:
            x = _downsample(conv(x, w, padding=w_pad + f_pad), f, 0)
        else:
            if self.up:
                x = _upsample(x, f, f_pad)
            if self.down:
                x = _downsample(x, f, f_pad)
            if w is not None:
                x = conv(x, w, padding=w_pad)
        return x if self.bias is None else x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) with min(num_groups, C / min_channels_per_group) groups."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention(q, k, v):
    """Single-head dot-product attention over positions: q, k, v [N·heads, c, L] →
    Σ_k softmax_k(qᵀk/√c)·v, [N·heads, c, L]. The weights are computed in fp32."""
    c = k.shape[1]
    w = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(c)).softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", w, v)


class UNetBlock(nn.Module):
    """The residual block shared by DDPM++, NCSN++ and ADM: GroupNorm–SiLU–conv, the embedding
    added (or, ``adaptive_scale``, as scale and shift), GroupNorm–SiLU–dropout–conv, a skip
    (1×1 or resampling-only) when shapes change, the sum scaled by ``skip_scale``; optionally
    followed by self-attention with ``num_heads`` heads (or out_channels / channels_per_head)."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True,
                 init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = (num_heads if num_heads is not None else out_channels // channels_per_head) if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, float(skip_scale), adaptive_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        e = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = e.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + e))
        h = self.conv1(nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            n, c = h.shape[:2]
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            h = (self.proj(attention(q, k, v).reshape(h.shape)) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids (Vaswani et al. 2017) of a noise label: [cos(x·ωᵢ), sin(x·ωᵢ)] with
    ωᵢ = (1/max_positions)^(i/(C/2 − endpoint)), i = 0..C/2−1."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (i / (half - (1 if self.endpoint else 0)))
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020) of a noise label, NCSN++'s embedding:
    [cos(2π·x·ωᵢ), sin(2π·x·ωᵢ)] with fixed ωᵢ ~ N(0, scale²)."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _check_labels(model: nn.Module, class_labels):
    if model.map_label is not None and class_labels is None:
        raise InputError(f"{type(model).__name__}: class-conditional (label_dim {model.map_label.in_features}), "
                         "got no class_labels")


# --- DDPM++ / NCSN++ ----------------------------------------------------------------------------


class SongUNet(nn.Module):
    """DDPM++ and NCSN++ (Song et al. 2021, score_sde), EDM's re-implementation.

    DDPM++: ``embedding_type='positional', channel_mult_noise=1, encoder_type='standard',
    decoder_type='standard', resample_filter=[1,1]``; NCSN++: ``'fourier', 2, 'residual',
    'standard', [1,3,3,1]``. ``encoder_type='skip'`` / ``decoder_type='skip'`` add score_sde's
    progressive input / output branches. Keywords, defaults and parameter names are EDM's.
    ``forward(x, noise_labels, class_labels, augment_labels=None)``: x N×C×H×W, noise_labels [N],
    class_labels [N, label_dim] (float), augment_labels [N, augment_dim]."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.10, label_dropout=0,
                 embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1)):
        for key, value, allowed in (("embedding_type", embedding_type, ("fourier", "positional")),
                                    ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                    ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in allowed:
                raise ValueError(f"SongUNet: {key} must be one of {', '.join(allowed)}, got {value!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                     init=init, init_zero=init_zero, init_attn=dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2)))

        # mapping: noise label (+ class, + augmentation) → embedding
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # encoder; 'aux' entries are the progressive-input branch (they feed no skip connection)
        self.enc = nn.ModuleDict()
        c, c_aux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(c, model_channels, kernel=3, **init)
                c = model_channels
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(c, c, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(c_aux, c_aux, kernel=0, down=True,
                                                           resample_filter=resample_filter)
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(c_aux, c, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(c_aux, c, kernel=3, down=True, resample_filter=resample_filter,
                                                               fused_resample=True, **init)
                    c_aux = c
            for i in range(num_blocks):
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(c, model_channels * mult, attention=r in attn_resolutions, **block)
                c = model_channels * mult
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        # decoder; 'aux' entries are the output branch (every level with decoder_type='skip')
        self.dec = nn.ModuleDict()
        self._takes_skip = set()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(c, c, attention=True, **block)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(c, c, **block)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(c, c, up=True, **block)
            for i in range(num_blocks + 1):
                name = f"{r}x{r}_block{i}"
                self.dec[name] = UNetBlock(c + skips.pop(), model_channels * mult,
                                           attention=i == num_blocks and r in attn_resolutions, **block)
                self._takes_skip.add(name)
                c = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                         resample_filter=resample_filter)
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(c, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(c, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        _check_labels(self, class_labels)
        cos, sin = self.map_noise(noise_labels).chunk(2, dim=1)
        emb = torch.cat([sin, cos], dim=1)                       # score_sde's order: sin first
        if self.map_label is not None:
            y = class_labels
            if self.training and self.label_dropout:
                y = y * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(y.dtype)
            emb = emb + self.map_label(y * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, m in self.enc.items():
            if "aux_down" in name:
                aux = m(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + m(aux)
            elif "aux_residual" in name:                          # NCSN++: (x + conv↓(aux)) / √2
                x = skips[-1] = aux = (x + m(aux)) / math.sqrt(2)
            else:
                x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
                skips.append(x)

        out = h = None
        for name, m in self.dec.items():
            if "aux_up" in name:
                out = m(out)
            elif "aux_norm" in name:
                h = m(x)
            elif "aux_conv" in name:
                h = m(silu(h))
                out = h if out is None else out + h
            else:
                if name in self._takes_skip:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = m(x, emb)
        return out


# --- ADM ----------------------------------------------------------------------------------------


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021, guided-diffusion), EDM's re-implementation: adaptive-scale
    residual blocks, attention with 64 channels per head at ``attn_resolutions``, positional
    noise embedding. Keywords, defaults and parameter names are EDM's; ``forward`` as
    :class:`SongUNet`."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3,
                 attn_resolutions=(32, 16, 8), dropout=0.10, label_dropout=0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(c, model_channels * mult, kernel=3, **init)
                c = model_channels * mult
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(c, c, down=True, **block)
            for i in range(num_blocks):
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(c, model_channels * mult, attention=r in attn_resolutions, **block)
                c = model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        self._takes_skip = set()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(c, c, attention=True, **block)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(c, c, **block)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(c, c, up=True, **block)
            for i in range(num_blocks + 1):
                name = f"{r}x{r}_block{i}"
                self.dec[name] = UNetBlock(c + skips.pop(), model_channels * mult, attention=r in attn_resolutions, **block)
                self._takes_skip.add(name)
                c = model_channels * mult
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        _check_labels(self, class_labels)
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            y = class_labels
            if self.training and self.label_dropout:
                y = y * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(y.dtype)
            emb = emb + self.map_label(y)
        emb = silu(emb)

        skips = []
        for m in self.enc.values():
            x = m(x, emb) if isinstance(m, UNetBlock) else m(x)
            skips.append(x)
        for name, m in self.dec.items():
            if name in self._takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = m(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


MODELS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# --- preconditioning (EDM Table 1) ---------------------------------------------------------------


def iddpm_sigmas(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> torch.Tensor:
    """iDDPM's noise levels u_0 > … > u_M = 0 (EDM Table 1, iDDPM column; Nichol & Dhariwal
    2021's cosine schedule ᾱ(j) = sin²(½π·j / (M(C_2+1)))):
    u_{j−1} = √((u_j² + 1) / max(ᾱ(j−1)/ᾱ(j), C_1) − 1). Shape [M + 1], float32 (computed in
    float64; EDM runs the recursion in fp32, which drifts by up to ~5e-4 relative, and stores the
    table as the buffer ``u``: a loaded checkpoint brings its own)."""
    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2

    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    return torch.tensor(u, dtype=torch.float32, device="cpu")


def _one_hot(cond, label_dim: int, x: torch.Tensor) -> torch.Tensor:
    """Denoiser ``cond`` → EDM's float class_labels [N, label_dim]: int labels [N] in 0..K−1
    one-hot, the null label K (trustdiff's, see :class:`~trustdiff.diffusion.model.ModelSpec`) as
    EDM's all-zero vector (what its label dropout trains for classifier-free guidance); a float
    [N, label_dim] is passed on."""
    cond = torch.as_tensor(cond, device=x.device)
    if cond.is_floating_point():
        if cond.ndim != 2 or cond.shape[1] != label_dim:
            raise InputError(f"class labels: expected int64 [N] or float [N, {label_dim}], got float {list(cond.shape)}")
        return cond.to(x.dtype)
    cond = cond.reshape(-1).long()
    if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > label_dim):
        raise InputError(f"class labels: expected values in 0..{label_dim - 1} (or the null label {label_dim}), "
                         f"got min {int(cond.min())} max {int(cond.max())}")
    if cond.numel() == 1:
        cond = cond.expand(x.shape[0])
    return nn.functional.one_hot(cond, label_dim + 1)[:, :label_dim].to(x.dtype)


class _Precond(nn.Module):
    """What EDM's four preconditionings share: the wrapped ``model``, the label handling and
    D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise, class_labels). Subclasses give
    :meth:`coefficients`."""

    kind = ""
    model_out_channels = 1     # the network's output channels, per image channel

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, init_kwargs):
        super().__init__()
        if model_type not in MODELS:
            raise ValueError(f"model_type: expected one of {', '.join(MODELS)}, got {model_type!r}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        init_kwargs = {k: v for k, v in init_kwargs.items() if k not in ("self", "__class__", "model_kwargs")}
        self.init_kwargs = copy.deepcopy({**init_kwargs, **model_kwargs})   # what rebuilds this network
        self.model = MODELS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                        out_channels=img_channels * self.model_out_channels, label_dim=label_dim,
                                        **model_kwargs)

    @property
    def num_classes(self) -> int | None:
        return self.label_dim or None

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at σ [N], each [N]."""
        raise NotImplementedError

    def round_sigma(self, sigma):
        """The nearest noise level the network supports (every σ, except for iDDPM)."""
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, cond=None, *, class_labels=None, augment_labels=None, force_fp32=False):
        """D(x; σ): model-space x N×C×H×W, σ float/0-d/[N], ``cond`` int64 labels [N] (None or
        the null label K: EDM's all-zero label vector; ignored by an unconditional network).
        ``class_labels`` [N, label_dim] float (EDM's own input) overrides ``cond``.
        Returns x̂₀ N×C×H×W in x's dtype (computed in fp32, or fp64 for fp64 input)."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        x_w = x.to(work)
        sigma = as_sigma(sigma, x_w)
        if not self.label_dim:
            y = None
        elif class_labels is not None:
            y = _one_hot(torch.as_tensor(class_labels).float(), self.label_dim, x_w)
        elif cond is not None:
            y = _one_hot(cond, self.label_dim, x_w)
        else:
            y = x_w.new_zeros(x.shape[0], self.label_dim)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else work
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in self.coefficients(sigma))
        kw = {} if augment_labels is None else {"augment_labels": augment_labels}
        F_x = self.model((c_in * x_w).to(dtype), c_noise.flatten(), class_labels=y, **kw)
        D_x = c_skip * x_w + c_out * F_x[:, : self.img_channels].to(work)
        return D_x.to(x.dtype)


class VPPrecond(_Precond):
    """VP preconditioning (Song et al. 2021; EDM Table 1): c_skip = 1, c_out = −σ,
    c_in = 1/√(σ²+1), c_noise = (M−1)·t(σ) for β(t) = β_min + β_d·t, trained on t ∈ [ε_t, 1]."""

    kind = "vp"

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1,
                 M=1000, epsilon_t=1e-5, model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, locals())
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.sigma_data = 0.5            # not used by VP; the data std EDM assumes

    def sigma(self, t):
        """σ(t) = √(exp(½β_d t² + β_min t) − 1)."""
        return schedules.vp_sigma(torch.as_tensor(t, dtype=torch.float64, device="cpu") if not torch.is_tensor(t) else t,
                                  self.beta_d, self.beta_min)

    def sigma_inv(self, sigma):
        """t(σ), the inverse of :meth:`sigma`."""
        return schedules.vp_t(sigma, self.beta_d, self.beta_min)

    def coefficients(self, sigma):
        return vp_coefficients(sigma, self.M, self.beta_d, self.beta_min)


class VEPrecond(_Precond):
    """VE preconditioning (Song et al. 2021; EDM Table 1): c_skip = 1, c_out = σ, c_in = 1,
    c_noise = ln(½σ)."""

    kind = "ve"

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, locals())
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data = 0.5            # not used by VE; the data std EDM assumes

    def coefficients(self, sigma):
        return ve_coefficients(sigma)


class iDDPMPrecond(_Precond):  # noqa: N801  (EDM's name)
    """iDDPM preconditioning (Nichol & Dhariwal 2021; EDM Table 1): c_skip = 1, c_out = −σ,
    c_in = 1/√(σ²+1), c_noise = M − 1 − j(σ) with j the index of the nearest level u_j
    (:func:`iddpm_sigmas`). The network predicts 2C channels (ε and the variance); the first C
    are used."""

    kind = "iddpm"
    model_out_channels = 2

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, locals())
        self.C_1, self.C_2, self.M = C_1, C_2, M
        self.register_buffer("u", iddpm_sigmas(M, C_1, C_2))
        self.sigma_data = 0.5            # not used by iDDPM; the data std EDM assumes

    @property
    def sigma_min(self) -> float:
        """u_{M−1}, of the loaded table (a checkpoint's ``u`` replaces the computed one)."""
        return float(self.u[self.M - 1])

    @property
    def sigma_max(self) -> float:
        """u_0."""
        return float(self.u[0])

    def round_sigma(self, sigma, return_index=False):
        """The nearest u_j to σ (or its index j), σ's shape."""
        sigma = torch.as_tensor(sigma)
        u = self.u.to(torch.float32)
        j = (sigma.to(u.device, torch.float32).reshape(-1, 1) - u.reshape(1, -1)).abs().argmin(dim=1)
        out = j if return_index else u[j].to(sigma.dtype)
        return out.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma):
        c_skip, c_out, c_in, _ = vp_coefficients(sigma)        # VP's c_skip, c_out, c_in
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(sigma.dtype)
        return c_skip, c_out, c_in, c_noise


class EDMPrecond(_Precond):
    """EDM's own preconditioning (EDM Table 1, Eq. 7): c_skip = σ_d²/(σ²+σ_d²),
    c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ ln σ."""

    kind = "edm"

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                 sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, locals())
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma):
        return edm_coefficients(sigma, self.sigma_data)


PRECONDS = {c.__name__: c for c in (VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond)}

__all__ = [
    "Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding",
    "SongUNet", "DhariwalUNet", "MODELS", "iddpm_sigmas",
    "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "PRECONDS",
]

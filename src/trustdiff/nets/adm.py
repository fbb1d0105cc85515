"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021) and improved-diffusion (Nichol &
Dhariwal 2021), written for trustdiff, with the parameter names and shapes of those codebases'
``UNetModel`` so that their published ``.pt`` state dicts load with ``strict=True``.

Layout (module names are the state-dict prefixes)::

    time_embed.{0,2}        Linear(C, 4C), SiLU, Linear(4C, 4C) on the sinusoidal embedding of t
    label_emb               Embedding(num_classes, 4C), added to the time embedding
    input_blocks.i.j        conv, then per level num_res_blocks × [ResBlock (+ AttentionBlock)]
                            and, between levels, a Downsample (or a down ResBlock)
    middle_block.{0,1,2}    ResBlock, AttentionBlock, ResBlock
    output_blocks.i.j       per level num_res_blocks+1 × [ResBlock on the skip concat
                            (+ AttentionBlock)], the last of a level + Upsample (or an up ResBlock)
    out.{0,2}               GroupNorm, SiLU, conv to out_channels

``layout`` selects the codebase: ``"guided"`` (every option) or ``"improved"`` (improved-diffusion's
UNet, which has no ``num_head_channels``, ``resblock_updown``, new attention order or a first
channel multiplier other than 1; its attention splits heads before q/k/v, the "legacy" order).
Both compute the same function from the same state dict where their options overlap.

``attention_resolutions`` are *downsample rates* as the reference ``UNetModel`` takes them (the
flag ``--attention_resolutions 32,16,8`` at ``image_size`` 256 is rates 8, 16, 32); see
:func:`trustdiff.pretrained.adm.adm_config` for the flag form.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

#: default ``channel_mult`` by image size (guided-diffusion's and improved-diffusion's
#: ``script_util.create_model``; they agree where both have a size)
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}
LAYOUTS = ("guided", "improved")


def default_channel_mult(image_size: int) -> tuple:
    """``channel_mult`` of ``script_util.create_model`` for ``image_size``; ValueError otherwise."""
    if image_size not in DEFAULT_CHANNEL_MULT:
        raise ValueError(f"channel_mult: no default for image_size {image_size}; expected one of "
                         f"{sorted(DEFAULT_CHANNEL_MULT)} or an explicit channel_mult")
    return DEFAULT_CHANNEL_MULT[image_size]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over 32 groups, computed in fp32 whatever the input dtype (as the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) timesteps [N]: [cos(t·f), sin(t·f)]
    with f_i = max_period^(−i/half), i < half = dim // 2 (zero-padded for an odd dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Upsample(nn.Module):
    """Nearest-neighbour 2× upsampling, then a 3×3 conv when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """2× downsampling: a stride-2 3×3 conv when ``use_conv``, else 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _zero(module: nn.Module) -> nn.Module:
    """ADM's initialisation of the last layer of each residual branch and of the output: zeros."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h += emb (or GN(h)·(1+scale)+shift with ``use_scale_shift_norm``);
    out = skip(x) + conv(dropout(SiLU(·))). ``up``/``down`` resample inside the block (BigGAN
    style, ``resblock_updown``)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if use_scale_shift_norm else 1)))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the spatial positions, residual. ``qkv`` is a 1×1 Conv1d to 3C; the
    legacy order splits heads first (each head's slice holds its q, k, v), the new order splits
    q, k, v first (``use_new_attention_order``)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"attention: {channels} channels are not divisible by num_head_channels {num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels are not divisible by num_heads {num_heads}")
        self.num_heads, self.new_order = num_heads, new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """[B, 3C, T] → [B, C, T]: softmax(qᵀk/√ch)·v per head of ch = C/heads channels."""
        b, width, length = qkv.shape
        heads, ch = self.num_heads, width // (3 * self.num_heads)
        if self.new_order:
            q, k, v = (z.reshape(b * heads, ch, length) for z in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return a.transpose(1, 2).reshape(b, heads * ch, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """A Sequential whose residual blocks also take the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """ADM's UNet: ``forward(x, timesteps, y=None)`` → N×out_channels×H×W (an ε prediction, and
    with a learned variance 2C channels: ε then the variance interpolation v).

    Args:
        image_size: H = W (sets the default ``channel_mult``).
        in_channels, model_channels, out_channels: image channels, base width C, output channels.
        num_res_blocks: residual blocks per level (the decoder has one more).
        attention_resolutions: downsample rates (1, 2, 4, ...) with self-attention.
        dropout: in every residual block.
        channel_mult: width multiplier per level; None: :data:`DEFAULT_CHANNEL_MULT`.
        conv_resample: learned 3×3 convs for up/downsampling (else nearest / average pooling).
        num_classes: class-conditional with this many labels (``y`` int64 [N]); None: unconditional.
        num_heads, num_head_channels, num_heads_upsample: heads per attention layer; a fixed
            width per head overrides ``num_heads``; the decoder's count (−1: ``num_heads``).
        use_scale_shift_norm: FiLM-like conditioning in the residual blocks.
        resblock_updown: residual blocks for up/downsampling.
        use_new_attention_order: split q, k, v before heads.
        layout: ``"guided"`` or ``"improved"`` (see the module docstring).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions, dropout: float = 0.0, channel_mult=None,
                 conv_resample: bool = True, num_classes: int | None = None, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, use_new_attention_order: bool = False, layout: str = "guided"):
        super().__init__()
        channel_mult = tuple(channel_mult) if channel_mult else default_channel_mult(image_size)
        _check_layout(layout, channel_mult, num_head_channels, resblock_updown, use_new_attention_order)
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.num_classes, self.layout = model_channels, num_classes, layout
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        res = lambda cin, cout, **kw: ResBlock(cin, emb_dim, dropout, cout, use_scale_shift_norm, **kw)  # noqa: E731
        attn = lambda c, heads: AttentionBlock(c, heads, num_head_channels, use_new_attention_order)  # noqa: E731
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skips.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def _labels(self, y, n: int, device) -> torch.Tensor | None:
        """Check ``y`` against the model's conditioning: one InputError line when it does not fit."""
        if self.num_classes is None:
            if y is not None:
                raise InputError("ADM UNet: labels given to an unconditional model; expected cond=None")
            return None
        if y is None:
            raise InputError(f"ADM UNet: this model is class-conditional ({self.num_classes} classes); "
                             f"expected class labels (int64 [N]) as cond, got None")
        y = torch.as_tensor(y, device=device)
        if y.dtype.is_floating_point or y.dtype == torch.bool or tuple(y.shape) != (n,):
            raise InputError(f"ADM UNet: expected class labels int64 [{n}], got {y.dtype} {tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise InputError(f"ADM UNet: expected labels in 0..{self.num_classes - 1}, got {int(y.min())}..{int(y.max())}")
        return y.long()

    def forward(self, x: torch.Tensor, timesteps, y=None) -> torch.Tensor:
        """x N×C×H×W, timesteps [N] or a scalar (fractional allowed), y int64 [N] for a
        class-conditional model → N×out_channels×H×W."""
        y = self._labels(y, x.shape[0], x.device)
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(x.shape[0])
        emb_w = self.time_embed[0].weight
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(emb_w.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, hs = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def _check_layout(layout, channel_mult, num_head_channels, resblock_updown, new_order) -> None:
    """improved-diffusion's UNet has none of guided-diffusion's later options: refuse them there."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if layout == "improved":
        extra = [name for name, on in (("num_head_channels", num_head_channels != -1),
                                       ("resblock_updown", resblock_updown),
                                       ("use_new_attention_order", new_order),
                                       ("channel_mult[0] != 1", channel_mult[0] != 1)) if on]
        if extra:
            raise ValueError(f"layout 'improved': improved-diffusion's UNet has no {', '.join(extra)}; use layout 'guided'")


__all__ = ["UNetModel", "DEFAULT_CHANNEL_MULT", "LAYOUTS", "default_channel_mult", "timestep_embedding",
           "GroupNorm32", "ResBlock", "AttentionBlock"]

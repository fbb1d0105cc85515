"""Diffusion networks: diffusers UNets under named sizes.

Every network here is a plain diffusers model (``UNet2DModel`` / ``UNet2DConditionModel``), so
checkpoints use diffusers' own ``save_pretrained`` layout. The networks live in model space:
input ``sample`` is N×C×H×W in [-1, 1] plus noise, output is N×C×H×W (unbounded). The time input
is a **float tensor** [N] (or 0-d): our preconditioning passes continuous noise levels ``c_noise``.

Pass the time as a tensor, never as a Python number: ``UNet2DModel.forward`` turns a Python
number into ``torch.long`` and would truncate 0.7 to 0.

Class conditioning reserves one extra embedding row as the *null class* used by classifier-free
guidance (Ho & Salimans 2022): ``num_class_embeds = num_classes + 1`` and the null label is
``num_classes`` (see :func:`null_label`).
"""
from __future__ import annotations

from diffusers import UNet2DConditionModel, UNet2DModel

from ..errors import InputError

#: named UNet2DModel configurations (everything except sample_size, channels and classes)
UNET_CONFIGS: dict[str, dict] = {
    # tests: a forward on 2×1×16×16 takes milliseconds (0.16M parameters)
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,  # no attention in the middle block either
    ),
    # CPU training on 16×16 digits in minutes: 1.62M parameters at 1 channel
    "small": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    # 6.80M parameters at 3 channels; attention at the two lowest resolutions
    "base": dict(
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    # Ho et al. 2020, CIFAR-10: ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16×16
    # (the second level at resolution 32) and in the middle, dropout 0.1, one attention head.
    # diffusers 0.42 counts 35,746,307 parameters at 3 channels, unconditional (paper: 35.7M).
    "ddpm-cifar": dict(
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        norm_num_groups=32,
        norm_eps=1e-6,
        attention_head_dim=None,  # one head over all channels
        dropout=0.1,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
}

#: named UNet2DConditionModel configurations (cross-attention on text or other embeddings)
COND_UNET_CONFIGS: dict[str, dict] = {
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=2,  # diffusers: the number of heads here
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "small": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
}


def _check(kind: str, configs: dict, size: str, resolution: int, channels: int) -> dict:
    """Look up ``size`` and validate resolution/channels; return the config."""
    if size not in configs:
        raise InputError(f"unknown {kind} size {size!r}; known sizes: {', '.join(configs)}")
    cfg = configs[size]
    if channels not in (1, 3, 4):
        raise InputError(f"network {size!r}: expected channels 1, 3 or 4, got {channels}")
    factor = 2 ** (len(cfg["block_out_channels"]) - 1)
    if not isinstance(resolution, int) or resolution <= 0 or resolution % factor:
        raise InputError(f"network {size!r} needs a resolution divisible by {factor}, got {resolution}")
    return cfg


def build_unet(
    size: str, *, resolution: int, channels: int, num_classes: int | None = None
) -> UNet2DModel:
    """A diffusers ``UNet2DModel`` of a named size (see :data:`UNET_CONFIGS`).

    Args:
        size: ``"tiny"`` (tests), ``"small"`` (1.6M, CPU on 16×16 digits), ``"base"`` (6.8M) or
            ``"ddpm-cifar"`` (Ho et al. 2020, 35.7M).
        resolution: H = W of the images; divisible by 2**(number of levels - 1).
        channels: image channels C in {1, 3, 4}; input and output have C channels.
        num_classes: if given, the net is class-conditional with ``num_classes + 1`` embeddings,
            the last one being the null class of classifier-free guidance (:func:`null_label`).

    Returns:
        ``unet(sample, timestep, class_labels=None).sample``: sample N×C×H×W (model space),
        timestep a float tensor [N] or 0-d (``c_noise``, any real value), class_labels long [N]
        in [0, num_classes] (required when conditional) → N×C×H×W.

    Raises:
        InputError: unknown size, channels not in (1, 3, 4), or a resolution the size can't take.
    """
    cfg = _check("network", UNET_CONFIGS, size, resolution, channels)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise InputError(f"num_classes: expected a positive int or None, got {num_classes!r}")
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        time_embedding_type="positional",
        num_class_embeds=None if num_classes is None else num_classes + 1,
        **cfg,
    )


def null_label(unet) -> int:
    """The null-class label of a class-conditional net from :func:`build_unet`: ``num_classes``,
    i.e. the last row of its class embedding. Raises InputError for an unconditional net."""
    n = getattr(unet.config, "num_class_embeds", None)
    if n is None:
        raise InputError("null_label: the network is unconditional (num_class_embeds is None)")
    return n - 1


def build_cond_unet(
    size: str, *, resolution: int, channels: int, cross_attention_dim: int
) -> UNet2DConditionModel:
    """A diffusers ``UNet2DConditionModel`` of a named size (``"tiny"`` or ``"small"``).

    Returns:
        ``unet(sample, timestep, encoder_hidden_states).sample``: sample N×C×H×W (model space),
        timestep a float tensor [N] or 0-d, encoder_hidden_states N×L×cross_attention_dim
        → N×C×H×W.

    Raises:
        InputError: unknown size, channels not in (1, 3, 4), or a resolution the size can't take.
    """
    cfg = _check("conditional network", COND_UNET_CONFIGS, size, resolution, channels)
    if not isinstance(cross_attention_dim, int) or cross_attention_dim < 1:
        raise InputError(f"cross_attention_dim: expected a positive int, got {cross_attention_dim!r}")
    return UNet2DConditionModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        time_embedding_type="positional",
        cross_attention_dim=cross_attention_dim,
        **cfg,
    )

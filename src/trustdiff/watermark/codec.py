"""The codec's training objective, its L2 schedule, and codec folders (save / load).

Loss (Zhao et al. 2023, after StegaStamp), per image, with w a fresh random n-bit string:

    L = BCE(w, D(T(E(x, w)))) + γ(s) · ‖x − E(x, w)‖²  (mean over bits and over pixels)

T is the identity unless training distortions are asked for. The L2 weight γ(s) is 0 until the
bit accuracy of a training batch first exceeds ``activate_acc`` (0.9) — call that step s₀ — then
waits ``l2_await`` steps and rises linearly to ``gamma`` (10) over ``l2_ramp`` steps:

    γ(s) = gamma · clip((s − s₀ − l2_await) / l2_ramp, 0, 1)   (γ = 0 while s₀ is unknown)

as in the recipe's reference training script. s₀ and the step counter s are buffers of
:class:`CodecObjective` (int64), so they travel in every checkpoint of the training loop and a
resumed run continues the schedule exactly; they change only inside ``forward`` in training mode,
once per training step. Training distortions, if any, start at s₀ as well.

A codec folder holds ``model.safetensors`` (the :class:`~trustdiff.nets.codec.Codec` state dict),
``config.json`` (format, architecture, training facts) and the manifest, published atomically and
checked against the manifest on load.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InputError
from ..images import check_images
from ..nets.codec import Codec
from ..persist import (FOLDER_CONFIG as CONFIG, load_strict, open_weights_folder, read_folder_config,
                       resolve_weights_folder, save_weights_folder)
from ..runtime import autocast
from .distortions import check_train_kinds, random_distortion
from .keys import check_key

FORMAT = "trustdiff.codec/1"
CODEC_DIR = "codec"       # the folder train-codec writes inside its run folder


def l2_weight(step: int, start: int, *, gamma: float, l2_await: int, l2_ramp: int) -> float:
    """γ at ``step`` when the bit accuracy first passed at step ``start`` (−1: not yet)."""
    if start < 0:
        return 0.0
    s = step - start - l2_await
    if l2_ramp <= 0:
        return float(gamma) if s >= 0 else 0.0
    return float(gamma) * min(max(s / l2_ramp, 0.0), 1.0)


class CodecObjective(nn.Module):
    """The training objective around a :class:`Codec`: ``forward(x, generator)`` → loss [N].

    Draws the random bits (and distortions) from ``generator``; in training mode it advances the
    step counter and records s₀ (see the module docstring). The last batch's figures are kept in
    buffers ``last_bit_acc``, ``last_mse``, ``last_gamma`` for logging.
    """

    def __init__(self, codec: Codec, *, gamma: float = 10.0, l2_await: int = 1000, l2_ramp: int = 3000,
                 activate_acc: float = 0.9, distortions=()):
        super().__init__()
        if not gamma >= 0 or l2_await < 0 or l2_ramp < 0 or not 0 < activate_acc <= 1:
            raise InputError(f"codec objective: expected gamma >= 0, l2_await >= 0, l2_ramp >= 0, activate_acc in (0, 1], "
                             f"got {gamma}, {l2_await}, {l2_ramp}, {activate_acc}")
        self.codec = codec
        self.gamma, self.l2_await, self.l2_ramp, self.activate_acc = float(gamma), int(l2_await), int(l2_ramp), float(activate_acc)
        self.distortions = check_train_kinds(distortions)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("l2_start", torch.full((), -1, dtype=torch.int64))
        for name in ("last_bit_acc", "last_mse", "last_gamma", "last_bce"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float32))

    def current_gamma(self) -> float:
        return l2_weight(int(self.step), int(self.l2_start), gamma=self.gamma, l2_await=self.l2_await, l2_ramp=self.l2_ramp)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n_bits = self.codec.n_bits
        bits = torch.randint(0, 2, (x.shape[0], n_bits), generator=generator, device=x.device).to(x.dtype)
        xw = self.codec.encoder(x, bits)
        active = int(self.l2_start) >= 0
        seen = random_distortion(xw, self.distortions, generator) if (self.distortions and active) else xw
        logits = self.codec.decoder(seen)
        bce = F.binary_cross_entropy_with_logits(logits, bits, reduction="none").mean(1)
        mse = (xw - x).square().flatten(1).mean(1)
        gamma = self.current_gamma()
        loss = bce + gamma * mse
        if self.training:
            with torch.no_grad():
                acc = ((logits > 0).to(bits.dtype) == bits).float().mean()
                if not active and float(acc) > self.activate_acc:
                    self.l2_start.fill_(int(self.step))
                self.last_bit_acc.fill_(float(acc))
                self.last_mse.fill_(float(mse.mean()))
                self.last_bce.fill_(float(bce.mean()))
                self.last_gamma.fill_(gamma)
                self.step.add_(1)
        return loss


def save_codec(folder, codec: Codec, **meta) -> Path:
    """Write the folder ``folder`` (``model.safetensors``, ``config.json``, manifest) atomically.
    ``meta``: extra JSON-able facts for config.json (data, steps, seed, held-out figures …)."""
    if not isinstance(codec, Codec):
        raise InputError(f"save_codec: expected a trustdiff.nets.codec.Codec, got {type(codec).__name__}")
    return save_weights_folder(folder, codec, {"format": FORMAT, "arch": Codec.arch, **codec.config, **meta})


def _resolve(folder) -> Path:
    return resolve_weights_folder(folder, CODEC_DIR)             # or a train-codec run folder


def codec_config(folder) -> dict:
    """The config.json of a codec folder (or of the ``codec/`` inside a train-codec run folder)."""
    return read_folder_config(_resolve(folder), FORMAT, "a codec folder or a train-codec run folder")


def load_codec(folder, *, allow_pickle: bool = False) -> Codec:
    """Rebuild a saved codec: eval mode, parameters frozen (input gradients still flow). Every
    file is checked against the manifest first; pickled weights are refused unless ``allow_pickle``."""
    folder = _resolve(folder)
    cfg, state = open_weights_folder(folder, FORMAT, "a codec folder or a train-codec run folder",
                                     allow_pickle=allow_pickle)
    keys = ("resolution", "channels", "n_bits", "width", "enc_depth", "dec_depth", "hidden")
    try:
        codec = Codec(**{k: cfg[k] for k in keys}, dec_width=cfg.get("dec_width"), bit_offsets=cfg.get("bit_offsets"))
    except (KeyError, InputError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: cannot build the codec ({e})") from None
    load_strict(codec, state, where=folder, name="codec")
    return codec.eval().requires_grad_(False)


def check_codec_images(codec: Codec, x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Images the codec can take: float N×C×H×W in [0, 1] with its C and resolution."""
    r = codec.resolution
    return check_images(x, name=name, channels=codec.channels, size=(r, r))


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InputError(f"strength: expected a residual scale in (0, 1], got {strength!r}")
    return float(strength)


def encode(codec: Codec, x: torch.Tensor, key, *, batch_size: int = 256, precision: str = "fp32",
           strength: float = 1.0) -> torch.Tensor:
    """Watermark images: x + α·(E(x, key) − x) in [0, 1] (α = ``strength``; 1: the codec's own
    output, E(x, key)), same shape and dtype; ``key`` [n] (one for all) or N×n. A smaller α trades
    robustness for imperceptibility after training: PSNR rises by −20·log₁₀ α before rounding
    (α = 0.95: +0.45 dB), and the residual the decoder reads shrinks by α. Runs in batches on x's
    device (the codec is moved there), the encoder under autocast for ``precision="bf16"``; no
    gradients."""
    x = check_codec_images(codec, x)
    a = check_strength(strength)
    k = check_key(key, codec.n_bits, per_image=len(x)).to(x.device, x.dtype)
    codec = codec.to(x.device)
    out = []
    with torch.no_grad(), autocast(x.device, precision):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            kb = k.expand(len(xb), -1) if k.ndim == 1 else k[i:i + batch_size]
            e = codec.encoder(xb, kb).to(x.dtype)
            out.append(e if a == 1.0 else xb + a * (e - xb))     # a convex combination: stays in [0, 1]
    return torch.cat(out) if out else x.clone()


def decode_logits(codec: Codec, x: torch.Tensor, *, batch_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """D(x): logits N×n (float32), in batches on x's device (the codec is moved there), the decoder
    under autocast for ``precision="bf16"``; no gradients."""
    x = check_codec_images(codec, x)
    codec = codec.to(x.device)
    with torch.no_grad(), autocast(x.device, precision):
        out = [codec.decoder(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, codec.n_bits, device=x.device)


def decode_bits(codec: Codec, x: torch.Tensor, *, batch_size: int = 512, precision: str = "fp32") -> torch.Tensor:
    """The decoded bits: int64 N×n of 0/1 (bit k is 1 where logit k > the codec's offset k: 0 as
    in the recipe, or the :func:`fair_bits` offsets), on x's device."""
    logits = decode_logits(codec, x, batch_size=batch_size, precision=precision)
    return (logits > codec.bit_offset.to(logits.device)).to(torch.int64)


def fair_bits(codec: Codec, x_clean: torch.Tensor, *, batch_size: int = 512) -> Codec:
    """The codec with per-bit decision offsets: the median of each logit over the clean images
    ``x_clean``, so that each decoded bit is 1 on half of them.

    Why: the analytic thresholds (:mod:`.stats`) model a clean image's bits as fair coins. A
    trained decoder's bits are not — on clean digits single bits come out 1 on 13 % … 89 % of the
    images (bench/results/watermark_attacks_g25.json) — so a key that agrees with that bias
    matches clean images more often than Bin(n, ½) and its false-positive rate exceeds the nominal
    one. Centring each bit removes the key-to-key shift of the clean match count (dependence
    between bits remains, and the per-key null still checks it). Watermarked images, whose logits
    sit far from the offsets, decode as before. Not in Zhao et al. 2023, which thresholds at 0.
    Returns a new codec sharing the weights; its config (and so a saved folder) keeps the offsets."""
    x = check_codec_images(codec, x_clean)
    if len(x) < 2:
        raise InputError(f"fair_bits: expected at least 2 clean images, got {len(x)}")
    median = decode_logits(codec, x, batch_size=batch_size).median(0).values
    base = {k: v for k, v in codec.config.items() if k != "bit_offsets"}
    with torch.random.fork_rng(devices=[]):                    # the throwaway init must not move the caller's RNG
        out = Codec(**base, bit_offsets=median.cpu().tolist()).to(median.device)
    out.encoder, out.decoder = codec.encoder, codec.decoder
    return out.train(codec.training)

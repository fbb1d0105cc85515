"""Watermark keys: n-bit strings as int64 tensors of 0/1.

A key is given as a bit string (``"0110…"``, length n), as hex (``"0x6f…"``, 4 bits per digit, most
significant bit first, so ``"0x6"`` is ``0110``), or derived from a seed (:func:`key_from_seed`).
Per-image keys are N×n. Anything else — a wrong length, a value that is not 0 or 1, a character
that is neither a bit nor a hex digit — is one :class:`~trustdiff.errors.InputError` line saying
what was expected and what came. The key is always a parameter: nothing here has a default key.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from ..errors import InputError
from ..nets.codec import MAX_BITS, MIN_BITS

_BITS = re.compile(r"^[01]+$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _check_n_bits(n_bits) -> int:
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or not MIN_BITS <= n_bits <= MAX_BITS:
        raise InputError(f"n_bits: expected an integer in {MIN_BITS}..{MAX_BITS}, got {n_bits!r}")
    return int(n_bits)


def parse_key(text: str, n_bits: int | None = None) -> torch.Tensor:
    """A key from text → int64 tensor [n] of 0/1.

    Args:
        text: a bit string (``"0110…"``, optionally with ``0b``) or hex with a ``0x`` prefix
            (``"0x6f…"``; 4 bits per digit, most significant first). Spaces, ``_`` and ``-`` are
            ignored. A string of only 0s and 1s without a prefix is read as bits.
        n_bits: the expected length n; required to match when given.

    Raises:
        InputError: empty text, a character that is not a bit / hex digit, or a length ≠ n_bits.
    """
    if not isinstance(text, str):
        raise InputError(f"key: expected a bit string or 0x-prefixed hex, got {type(text).__name__}")
    s = re.sub(r"[\s_-]", "", text)
    low = s.lower()
    if low.startswith("0x"):
        digits = s[2:]
        if not digits or not _HEX.match(digits):
            raise InputError(f"key: expected hex digits after 0x, got {text!r}")
        bits = [int(b) for d in digits for b in format(int(d, 16), "04b")]
        what = f"{len(digits)} hex digits = {len(bits)} bits"
    else:
        digits = s[2:] if low.startswith("0b") else s
        if not digits or not _BITS.match(digits):
            bad = next((c for c in digits if c not in "01"), None)
            got = f"character {bad!r} in {text!r}" if bad is not None else repr(text)
            raise InputError(f"key: expected a string of 0s and 1s (or hex with 0x), got {got}")
        bits = [int(c) for c in digits]
        what = f"{len(bits)} bits"
    if n_bits is not None and len(bits) != _check_n_bits(n_bits):
        raise InputError(f"key: expected {n_bits} bits, got {what}")
    if n_bits is None and not MIN_BITS <= len(bits) <= MAX_BITS:
        raise InputError(f"key: expected {MIN_BITS}..{MAX_BITS} bits, got {what}")
    return torch.tensor(bits, dtype=torch.int64)


def key_from_seed(seed: int, n_bits: int) -> torch.Tensor:
    """A uniformly random key from ``seed``: int64 [n] of 0/1, the same on every machine
    (``torch.randint`` on a CPU generator seeded with ``seed``)."""
    n = _check_n_bits(n_bits)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"key seed: expected an integer >= 0, got {seed!r}")
    return torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.int64)


def random_keys(count: int, n_bits: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` independent uniform keys: int64 [count, n] of 0/1."""
    return torch.randint(0, 2, (int(count), _check_n_bits(n_bits)), generator=generator, dtype=torch.int64)


def check_key(key, n_bits: int | None = None, *, per_image: int | None = None, name: str = "key") -> torch.Tensor:
    """Validate a key (or per-image keys) and return it as int64 0/1 on the CPU.

    Args:
        key: a tensor, array or sequence of 0/1 (ints, bools, or floats equal to 0 or 1) of shape
            [n], or [N, n] for per-image keys; or text for :func:`parse_key`.
        n_bits: the length n the key must have (a codec's n_bits).
        per_image: N, when an [N, n] key is allowed (a [n] key is then used for every image).

    Returns:
        int64 [n], or [N, n] when per-image keys were given.

    Raises:
        InputError: a wrong length, a value that is not 0 or 1, or the wrong number of rows.
    """
    if isinstance(key, str):
        return parse_key(key, n_bits)
    try:
        t = torch.as_tensor(np.asarray(key.detach().cpu() if isinstance(key, torch.Tensor) else key))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: expected a sequence of 0s and 1s, got {type(key).__name__} ({e})") from None
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if not (t.dtype.is_floating_point or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise InputError(f"{name}: expected 0/1 numbers, got dtype {t.dtype}")
    allowed_rank = (1, 2) if per_image is not None else (1,)
    if t.ndim not in allowed_rank:
        shape = "[n] or [N, n]" if per_image is not None else "[n]"
        raise InputError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    n = t.shape[-1]
    if n_bits is not None and n != n_bits:
        raise InputError(f"{name}: expected {n_bits} bits, got {n}")
    if n_bits is None and not MIN_BITS <= n <= MAX_BITS:
        raise InputError(f"{name}: expected {MIN_BITS}..{MAX_BITS} bits, got {n}")
    if t.ndim == 2 and t.shape[0] != per_image:
        raise InputError(f"{name}: expected {per_image} per-image keys (one row per image), got {t.shape[0]}")
    if t.numel():
        bad = ~((t == 0) | (t == 1))
        if bool(bad.any()):
            v = t[bad].flatten()[0].item()
            raise InputError(f"{name}: expected only 0s and 1s, got the value {v!r}")
    return t.to(torch.int64)


def key_to_bits(key) -> str:
    """int 0/1 [n] → ``"0110…"``."""
    return "".join(str(int(b)) for b in check_key(key).tolist())


def key_to_hex(key) -> str | None:
    """int 0/1 [n] → ``"0x6f…"`` (most significant bit first), or None when n is not a multiple of 4."""
    bits = check_key(key).tolist()
    if len(bits) % 4:
        return None
    return "0x" + "".join(format(int("".join(map(str, bits[i:i + 4])), 2), "x") for i in range(0, len(bits), 4))

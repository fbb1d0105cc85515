"""Plumbing every command shares: the run-folder decorator, checked number types, the pickle flag.

One flag, one meaning across commands: ``--steps`` training steps, ``--sample-steps`` sampler (or
purifier solver) levels, ``--attack-steps`` attack iterations, ``-n/--num`` image counts,
``--draws`` Monte-Carlo draws, ``--fd-data`` the data set FD is measured against.
"""
from __future__ import annotations

import click

from ..runs import run_command  # noqa: F401  (re-exported: every command module uses it)

#: the sampler names of trustdiff.diffusion.samplers.SAMPLERS (spelled out: --help stays fast)
SAMPLERS = ("heun", "euler", "ddim", "ddpm", "euler_maruyama", "pc", "langevin")
#: counts (images, steps, batches, draws): at least 1
COUNT = click.IntRange(min=1)
#: counts that may be 0 (e.g. extra images, optional checks)
COUNT0 = click.IntRange(min=0)
#: seeds: torch takes non-negative 64-bit seeds
SEED = click.IntRange(min=0)
#: probabilities and fractions in [0, 1]
UNIT = click.FloatRange(0.0, 1.0)
#: strictly positive reals (learning rates, noise levels)
POSITIVE = click.FloatRange(min=0.0, min_open=True)
#: non-negative reals (budgets, weights of loss terms)
NONNEG = click.FloatRange(min=0.0)
#: a probability strictly inside (0, 1) (false-positive rates, failure probabilities)
OPEN_UNIT = click.FloatRange(0.0, 1.0, min_open=True, max_open=True)


def parse_floats(text: str, flag: str, *, lo: float = 0.0, lo_open: bool = True, hi: float | None = None,
                 empty: bool = False) -> list[float]:
    """Comma-separated finite numbers, each > lo (≥ lo when not ``lo_open``) and ≤ hi; an empty
    list only when ``empty``. Anything else is one InputError line naming the flag."""
    import math

    from ..errors import InputError

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
    ok = all(math.isfinite(v) and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi) for v in vals)
    if (not vals and not empty) or not ok:
        raise InputError(f"{flag}: expected {'' if empty else 'one or more '}numbers {rng}, got {text!r}")
    return vals


def ran_on(*objs) -> str:
    """Where a command's models and tensors ended up, for its metrics.json: ``"cpu"``,
    ``"cuda:0"``; several devices joined by ``+`` (which would be a bug to see)."""
    from ..runtime import devices_of

    return "+".join(devices_of(*objs)) or "none"


def seed_option(help: str = "Seed of every random choice of the run.", default: int = 0):
    return click.option("--seed", type=SEED, default=default, show_default=True, help=help)


def unsafe_pickle_option(f):
    """``--unsafe-allow-pickle``: load pickled weights (which can run code) when no safetensors exist."""
    return click.option("--unsafe-allow-pickle", "allow_pickle", is_flag=True,
                        help="Load pickled weights (.bin/.pt) where a model folder has no safetensors. "
                             "A pickle can run code when loaded: only for files you trust.")(f)


def compile_option(f):
    """``--compile``: torch.compile the command's networks in place (off by default;
    :func:`trustdiff.runtime.compile_network`)."""
    return click.option("--compile", "compile_nets", is_flag=True,
                        help="torch.compile the networks (each batch shape compiles once, seconds to a minute on a CPU). "
                             "Measured for certify and generate on a 2-core CPU: ~1.1x in fp32, ~1.7x on top of "
                             "--precision bf16 (bench/throughput.py). Outputs change by rounding only.")(f)


#: what a --model/--denoiser flag takes, for its help text
MODEL_HELP = ("a trustdiff model folder or training run, a diffusers DDPM folder, an EDM .pkl, an ADM .pt "
              "(guided/improved-diffusion; see --adm-config) or a `trustdiff convert` folder")


def adm_config_option(f):
    """``--adm-config``: the architecture of an ADM ``.pt`` state dict (a preset or a JSON file)."""
    return click.option("--adm-config", "adm_config", default=None, metavar="PRESET|JSON",
                        help="For an ADM .pt: a preset (adm-imagenet256-uncond, iddpm-cifar10, …; a published file "
                             "name is recognised without it) or a JSON file of guided-diffusion's model flags.")(f)

"""``trustdiff convert``: a published checkpoint, once, into a trustdiff model folder.

    trustdiff convert edm-cifar10-32x32-cond-vp.pkl --out models/edm-cifar10-cond-vp
    trustdiff convert 256x256_diffusion_uncond.pt --out models/adm-256-uncond
    trustdiff convert my_model.pt --adm-config flags.json --out models/mine

No checkpoint is downloaded: the file is the user's. Every command that takes --model/--denoiser
also reads the .pkl/.pt directly; a converted folder is safetensors (no pickle at all) and loads
without hashing the original again.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import click

from .common import adm_config_option, ran_on, run_command


def _check_input(spec, device, seed: int = 0):
    """A seeded test input (x at σ = 1, model units) and labels for a round-trip comparison."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, spec.channels, spec.resolution, spec.resolution, generator=g)
    cond = None if spec.num_classes is None else torch.zeros(1, dtype=torch.long, device=device)
    return x.to(device), cond


@click.command("convert")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@adm_config_option
@run_command("convert", out="runs/convert")
def convert_cmd(run, checkpoint, adm_config, out):
    """Convert CHECKPOINT (an EDM .pkl read by a restricted unpickler that runs nothing, or an ADM
    .pt read with weights_only) into OUT/model/: model.safetensors + config.json + manifest, which
    loads wherever a model is taken. OUT/metrics.json: parameters, the source's SHA-256, and the
    largest output difference between the checkpoint and the converted folder on a seeded input (0)."""
    import torch

    from ..persist import atomic_write_json
    from ..pretrained import is_checkpoint_file, load_checkpoint_file, load_converted, save_converted
    from ..errors import InputError
    from ..runtime import with_precision

    if not is_checkpoint_file(checkpoint):
        raise InputError(f"CHECKPOINT: expected an EDM .pkl or an ADM .pt file, got {checkpoint}")
    den, spec, source = load_checkpoint_file(checkpoint, adm_config=adm_config)    # bad input fails here
    config = dict(checkpoint=str(checkpoint), adm_config=adm_config, family=source["family"], sha256=source["sha256"])
    if not run.start(config):
        return
    t0 = time.time()
    folder = save_converted(out / "model", den, source)
    again, spec2, _ = load_converted(folder)
    x, cond = _check_input(spec, run.device)
    den, again = den.to(run.device), again.to(run.device)
    with torch.no_grad():                         # both at --precision: the same kernels, so |ΔD| is exactly 0
        a = with_precision(den, run.precision)(x, 1.0, cond)
        b = with_precision(again, run.precision)(x, 1.0, cond)
    diff = float((a - b).abs().max())
    if diff != 0 or spec2 != spec:
        raise RuntimeError(f"converted folder {folder} does not reproduce {checkpoint} (max |ΔD| = {diff:g})")
    metrics = {"family": source["family"], "file": source["file"], "sha256": source["sha256"],
               "parameters": sum(p.numel() for p in den.parameters()), "spec": asdict(spec),
               "max_abs_diff_round_trip": diff, "seconds": round(time.time() - t0, 1), "device": ran_on(den)}
    atomic_write_json(out / "metrics.json", metrics)
    click.echo(f"{checkpoint.name} ({source['family']}, {metrics['parameters']:,} parameters, "
               f"{spec.resolution}², {'unconditional' if spec.num_classes is None else f'{spec.num_classes} classes'}) "
               f"→ {folder}")


COMMANDS = [convert_cmd]

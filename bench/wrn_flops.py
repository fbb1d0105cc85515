"""Cost model of adversarial training at GPU scale: forward FLOPs of this repository's WRN-28-10
and WRN-70-16 on one 32×32 CIFAR image (``torch.utils.flop_counter``; a multiply-add is 2 FLOP),
and the FLOPs of a TRADES run from them.

    python bench/wrn_flops.py [--epochs 400 --batch 512 --attack-steps 10 --n-real 48976]

A TRADES update costs about (2·K + 6) forward-equivalents per image with K attack steps: each PGD
step one forward and one input-gradient backward (≈ 1 forward), the clean and adversarial
forwards and their weight-and-input backward (≈ 2 forwards each). Writes
bench/results/wrn_flops.json and prints each figure beside the WRN-28-10 one (the reference).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trustdiff.persist import atomic_write_json
from trustdiff.nets.classifier import build_classifier


def forward_flops(depth: int, width: int) -> tuple[float, int]:
    """(FLOP of one forward pass on one 3×32×32 image, parameters)."""
    net = build_classifier("wrn", depth=depth, width=width, num_classes=10, in_channels=3).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.rand(1, 3, 32, 32))
    return float(fc.get_total_flops()), sum(p.numel() for p in net.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--n-real", type=int, default=50_000 - 1024, help="training images after the hold-out")
    ap.add_argument("--json", type=Path, default=Path("bench/results/wrn_flops.json"))
    args = ap.parse_args()
    updates = args.epochs * math.ceil(args.n_real / args.batch) * args.batch
    per_image = 2 * args.attack_steps + 6
    rows, ref = {}, None
    for depth, width in ((28, 10), (70, 16)):
        f, n = forward_flops(depth, width)
        ref = ref or f
        total = f * per_image * updates
        rows[f"wrn-{depth}-{width}"] = {"params": n, "forward_gflop": f / 1e9, "run_flop": total, "vs_wrn_28_10": f / ref}
        print(f"wrn-{depth}-{width}: {n / 1e6:.1f}M params, {f / 1e9:.2f} GFLOP forward ({f / ref:.2f}× WRN-28-10); "
              f"TRADES run {total:.2e} FLOP ({per_image} forward-equivalents × {updates / 1e6:.1f}M image-updates)")
    atomic_write_json(args.json, {"args": vars(args) | {"json": str(args.json)}, "image_updates": updates,
                                  "forward_equivalents_per_update": per_image, "nets": rows})


if __name__ == "__main__":
    main()

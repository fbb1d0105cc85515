"""Bench: which compiled network moves the bf16 gradient through DiffPure (issue 22)?

bench/throughput.py found the input gradient of PGD-EOT through the 5-step purifier at cosine
0.998 to fp32's under bf16 eager, but 0.835 under bf16 + --compile. This compares, on the same
images, seed and EOT noise, the gradient of every combination against fp32 eager: fp32 compiled,
bf16 eager, bf16 with the classifier and the denoiser's backbone compiled, and each of the two
compiled alone. Writes bench/results/purify_bf16_gradient.json.

    python bench/purify_bf16_gradient.py [--images 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import EOT, gradient_agreement, networks, purifier  # noqa: E402

from trustdiff.attacks.pgd import input_gradient  # noqa: E402
from trustdiff.diffusion.precond import compile_backbone  # noqa: E402
from trustdiff.persist import atomic_write_json  # noqa: E402
from trustdiff.runtime import compile_network, with_precision  # noqa: E402

#: name → (precision, compile the classifier, compile the denoiser's backbone)
CONFIGS = {"fp32-compiled": ("fp32", True, True), "bf16": ("bf16", False, False),
           "bf16-compiled": ("bf16", True, True), "bf16-classifier-compiled": ("bf16", True, False),
           "bf16-denoiser-compiled": ("bf16", False, True)}


def gradient(args, x, y, precision: str, clf_c: bool, den_c: bool) -> torch.Tensor:
    den, _, clf = networks(args)
    if clf_c:
        compile_network(clf)
    if den_c:
        compile_backbone(den)
    model = purifier(with_precision(clf, precision), with_precision(den, precision), 5)
    for _ in range(2 if clf_c or den_c else 1):          # the first compiled call compiles
        torch.manual_seed(0)                              # the same SDE noise in every configuration
        g, _ = input_gradient(model, x, y, eot=EOT, eot_batch=EOT)
    return g


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", type=Path, default=Path("bench/results/train_digits/train/model"))
    ap.add_argument("--classifier", type=Path, default=Path("bench/results/certify_digits/train/standard"))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--json", type=Path, default=Path("bench/results/purify_bf16_gradient.json"))
    args = ap.parse_args()
    x = torch.rand(args.images, 1, 16, 16, generator=torch.Generator().manual_seed(3))    # throughput.py's images
    y = torch.arange(args.images) % 10
    g32 = gradient(args, x, y, "fp32", False, False)
    res = {"images": args.images, "eot": EOT, "purifier": "sde x 5, t* = 0.1", "denoiser": str(args.denoiser),
           "classifier": str(args.classifier), "threads": torch.get_num_threads(), "vs_fp32_eager": {}}
    for name, cfg in CONFIGS.items():
        g = gradient(args, x, y, *cfg)
        res["vs_fp32_eager"][name] = gradient_agreement(g, g32)
        print(f"{name:<26} {res['vs_fp32_eager'][name]}", flush=True)
    atomic_write_json(args.json, res)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Bench: trustdiff's loaders for the published checkpoints against the reference code, output for output.

    python bench/verify_pretrained.py --edm PATH/edm --guided PATH/guided-diffusion \
        --improved PATH/improved-diffusion [--sizes small,published]

The reference repositories (NVlabs/edm, openai/guided-diffusion, openai/improved-diffusion) are
local checkouts outside this repository; none of their code is imported by trustdiff itself, only
by this script. For each configuration (EDM: CIFAR-10 cond/uncond VP/VE, FFHQ/AFHQv2 64² VP/VE,
ImageNet-64 ADM; guided-diffusion: ImageNet 64/128/256 cond, 256 uncond; improved-diffusion:
CIFAR-10), the reference network is built with random weights (all parameters re-randomised, so
the zero-initialised output layers are not zero), at a small size and at the published size, saved
in the reference's own format (EDM: its persistence pickle; ADM: ``torch.save(state_dict)``),
loaded with trustdiff (``trustdiff.pretrained``: the restricted unpickler, ``weights_only`` state
dicts) and run on the same inputs, σ and labels in fp32: the raw network output and the denoised
output D(x, σ) through each preconditioner (EDM) or the discrete schedule (ADM: D(x, σ_t) against
the reference's ``pred_xstart``).

Tolerances (issue 19): max |Δ| ≤ 1e-5 at the small sizes, ≤ 1e-4 of the output's scale
(max |reference output|) at the published sizes. The reference itself is the ratio's other side:
each row prints |Δ| / scale. Numerics are verified on random weights: no published weights can be
downloaded here.

Writes bench/results/verify_pretrained.json (rows, the checkouts' commits, versions, the time).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _verify_adm  # noqa: E402  (bench modules beside this script)
import _verify_edm  # noqa: E402


def commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(rows: list[dict]) -> str:
    head = f"{'family':7} {'config':32} {'size':10} {'what':12} {'params':>13} {'max|Δ|':>10} {'scale':>9} {'|Δ|/scale':>10}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['family']:7} {r['config']:32} {r['size']:10} {r.get('what', 'output'):12} {r.get('params', 0):>13,} "
                     f"{r['max_abs_diff']:>10.2e} {r['out_scale']:>9.3g} {r['rel']:>10.2e}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edm", type=Path, required=True, help="a checkout of NVlabs/edm")
    ap.add_argument("--guided", type=Path, required=True, help="a checkout of openai/guided-diffusion")
    ap.add_argument("--improved", type=Path, required=True, help="a checkout of openai/improved-diffusion")
    ap.add_argument("--sizes", default="small,published", help="small, published or both (comma-separated)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "verify_pretrained.json")
    args = ap.parse_args(argv)
    sizes = tuple(s for s in args.sizes.split(",") if s)
    for p in (args.edm, args.guided, args.improved):
        if not p.is_dir():
            ap.error(f"{p}: expected a checkout folder")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    rows = _verify_edm.verify(args.edm, sizes=sizes)
    t_edm = time.time() - t0
    rows += _verify_adm.verify(args.guided, args.improved, sizes=sizes)
    elapsed = time.time() - t0
    print(table(rows))
    bad = [r for r in rows if not r["ok"]]
    worst = max((r["rel"] for r in rows), default=0.0)
    print(f"\n{len(rows) - len(bad)}/{len(rows)} within tolerance; worst |Δ|/scale {worst:.2e} "
          f"(published-size tolerance 1e-4: {worst / 1e-4:.2g}× of it); {elapsed / 60:.1f} min "
          f"(EDM {t_edm / 60:.1f}, ADM {(elapsed - t_edm) / 60:.1f})")
    result = {"rows": rows, "ok": not bad, "sizes": list(sizes), "seconds": round(elapsed, 1),
              "references": {"NVlabs/edm": commit(args.edm), "openai/guided-diffusion": commit(args.guided),
                             "openai/improved-diffusion": commit(args.improved)},
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "weights": "random (re-randomised), fp32"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {args.out}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())

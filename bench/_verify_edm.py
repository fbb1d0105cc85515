"""Bench (not run by the tests): trustdiff's EDM networks and pickle reader against the reference code.

    .venv/bin/python bench/_verify_edm.py EDM_CHECKOUT [--sizes small,published]

EDM_CHECKOUT is a checkout of NVlabs/edm (its ``training`` and ``torch_utils`` packages are
imported from there; nothing of it is copied into trustdiff). For each configuration the
*reference* preconditioner (``training.networks.EDMPrecond(...)``, …) is built, every parameter is
re-randomised (seeded; EDM zero-initialises or 1e-5-initialises output convolutions, which would
make outputs trivial): weights N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.1²), other vectors
N(0, 0.1²). The network is saved the way ``training_loop.py`` saves a snapshot (``pickle.dump`` of
``{'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}``, through the reference's persistence, so
the file embeds its source), read back by ``trustdiff.pretrained.edm.load_edm_pickle`` (the
restricted unpickler: nothing of the file is run) and both run in fp32 on the same inputs:

* ``D(x,σ)``: the Denoiser, trustdiff's ``D(x, σ, cond=int labels)`` vs the reference's
  ``net(x, σ, one-hot class_labels)``, per-sample σ spread log-uniformly over the network's range
  (∩ [0.002, 80]), two batches;
* ``F``: the raw network at σ = 1 (the same c_in·x, c_noise), with random ``augment_labels`` where
  the network has an augmentation map.

Rows ``{"family": "edm", "config", "size", "what", "params", "max_abs_diff", "out_scale", "rel",
"ok"}``: ok when max_abs_diff ≤ 1e-5 (small) or rel = max_abs_diff / out_scale ≤ 1e-4
(published; out_scale = max |reference output|).
"""
from __future__ import annotations

import argparse
import copy
import math
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch

from trustdiff.pretrained import edm as tedm

SMALL_TOL, PUBLISHED_TOL = 1e-5, 1e-4

_TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1])
_NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
               channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
#: small configurations: (precond class, kwargs); together they use every option the networks have
SMALL = {
    "vp-ddpmpp-cond": ("VPPrecond", dict(img_resolution=16, img_channels=3, label_dim=4, **_DDPMPP, **_TINY, augment_dim=9)),
    "ve-ncsnpp": ("VEPrecond", dict(img_resolution=16, img_channels=3, **_NCSNPP, **_TINY)),
    "ve-ncsnpp-skip-skip": ("VEPrecond", dict(img_resolution=16, img_channels=1, **{**_NCSNPP, "encoder_type": "skip",
                                                                                   "decoder_type": "skip"},
                                            model_channels=16, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8])),
    "iddpm-adm-cond": ("iDDPMPrecond", dict(img_resolution=16, img_channels=3, label_dim=5, model_channels=64,
                                            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], M=200)),
    "edm-ddpmpp-cond": ("EDMPrecond", dict(img_resolution=16, img_channels=3, label_dim=3, **_DDPMPP, **_TINY,
                                           augment_dim=9, label_dropout=0.1)),
    "edm-ncsnpp": ("EDMPrecond", dict(img_resolution=16, img_channels=3, **_NCSNPP, **_TINY, augment_dim=9)),
    "edm-adm-cond": ("EDMPrecond", dict(img_resolution=16, img_channels=3, label_dim=6, model_type="DhariwalUNet",
                                        model_channels=64, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8, 4],
                                        augment_dim=9)),
}


def _reference(edm_checkout: Path):
    root = str(Path(edm_checkout).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    from training import augment, loss, networks  # noqa: PLC0415  (the reference's own packages)

    return networks, loss, augment


def randomise(net: torch.nn.Module, seed: int) -> None:
    """Every parameter to small random values (seeded): no zero-initialised layer stays zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _sigmas(net, n: int, g: torch.Generator) -> torch.Tensor:
    lo, hi = max(0.002, float(net.sigma_min)), min(80.0, float(net.sigma_max))
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (math.log(lo) + u * (math.log(hi) - math.log(lo))).exp().float()


def _row(name, size, what, params, ref_out, ours_out) -> dict:
    diff = float((ref_out - ours_out).abs().max())
    scale = float(ref_out.abs().max())
    rel = diff / scale if scale > 0 else diff
    ok = diff <= SMALL_TOL if size == "small" else rel <= PUBLISHED_TOL
    return {"family": "edm", "config": name, "size": size, "what": what, "params": params,
            "max_abs_diff": diff, "out_scale": scale, "rel": rel, "ok": bool(ok and math.isfinite(diff))}


def check_one(networks, loss, augment, name: str, size: str, cls_name: str, kwargs: dict, *, batch: int,
              seed: int, tmp: Path) -> list[dict]:
    torch.manual_seed(seed)
    ref = getattr(networks, cls_name)(**copy.deepcopy(kwargs))
    randomise(ref, seed)
    ref = ref.eval().requires_grad_(False)
    params = sum(p.numel() for p in ref.parameters())
    path = tmp / f"{name}.pkl"
    data = dict(ema=ref, loss_fn=loss.EDMLoss(), augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1),
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip", use_labels=True))
    with open(path, "wb") as f:                  # training_loop.py's snapshot, the reference's own format
        pickle.dump(data, f)
    del data
    ours = tedm.load_edm_pickle(path)
    path.unlink()

    g = torch.Generator().manual_seed(seed + 1)
    c, r, k = ref.img_channels, ref.img_resolution, ref.label_dim
    refs, outs = [], []
    for _ in range(2):
        sigma = _sigmas(ref, batch, g)
        x0 = (0.5 * torch.randn(batch, c, r, r, generator=g)).clamp(-1, 1)
        x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(batch, c, r, r, generator=g)
        labels = torch.randint(0, max(k, 1), (batch,), generator=g)
        one_hot = torch.nn.functional.one_hot(labels, k).float() if k else None
        with torch.no_grad():
            refs.append(ref(x, sigma, one_hot))
            outs.append(ours(x, sigma, labels if k else None))
    rows = [_row(name, size, "D(x,σ)", params, torch.cat(refs), torch.cat(outs))]

    # the raw network F at σ = 1: same inputs, with augmentation labels where the network maps them
    x = torch.randn(batch, c, r, r, generator=g)
    noise = torch.full((batch,), ours.coefficients(torch.ones(1))[3].item())
    labels = torch.nn.functional.one_hot(torch.randint(0, max(k, 1), (batch,), generator=g), k).float() if k else None
    aug = None
    if ref.model.map_augment is not None:
        aug = torch.randn(batch, ref.model.map_augment.in_features, generator=g)
    with torch.no_grad():
        f_ref = ref.model(x, noise, labels, augment_labels=aug)
        f_ours = ours.model(x, noise, labels, augment_labels=aug)
    rows.append(_row(name, size, "F", params, f_ref, f_ours))
    return rows


def verify(edm_checkout: Path, sizes=("small", "published"), *, log=print) -> list[dict]:
    """Build, save (EDM's format), load (trustdiff) and compare every small and/or published
    configuration; returns the rows (see the module docstring)."""
    networks, loss, augment = _reference(edm_checkout)
    todo = []
    if "small" in sizes:
        todo += [(name, "small", cls, kw, 4) for name, (cls, kw) in SMALL.items()]
    if "published" in sizes:
        todo += [(name, "published", cfg["class"], cfg["init_kwargs"], 2) for name, cfg in tedm.EDM_PRESETS.items()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="verify-edm-") as tmp:
        for i, (name, size, cls, kw, batch) in enumerate(todo):
            t0 = time.time()
            new = check_one(networks, loss, augment, name, size, cls, kw, batch=batch, seed=1000 + i, tmp=Path(tmp))
            rows += new
            if log:
                log(f"  {name} ({size}): {new[0]['params']:,} parameters, max|Δ| D {new[0]['max_abs_diff']:.2e} "
                    f"F {new[1]['max_abs_diff']:.2e}, {time.time() - t0:.1f} s")
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'config':30} {'size':10} {'what':7} {'params':>12} {'max|Δ|':>9} {'scale':>9} {'|Δ|/scale':>9}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['config']:30} {r['size']:10} {r['what']:7} {r['params']:>12,} {r['max_abs_diff']:>9.2e} "
                     f"{r['out_scale']:>9.3g} {r['rel']:>9.2e}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("edm", type=Path, help="a checkout of NVlabs/edm")
    ap.add_argument("--sizes", default="small,published", help="small, published or both (comma-separated)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.edm / "training" / "networks.py").is_file():
        ap.error(f"{args.edm}: expected a checkout of NVlabs/edm (training/networks.py)")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = verify(args.edm, sizes=tuple(s for s in args.sizes.split(",") if s))
    print(table(rows))
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} within tolerance ({time.time() - t0:.0f} s)")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())

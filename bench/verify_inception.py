"""Bench: trustdiff's torchvision-free FID Inception-v3 against pytorch-fid, output for output.

pytorch-fid needs torchvision, which trustdiff's environment must not have, so the script has two
halves run by two Python environments, which meet in a folder DIR:

    # 1. in an environment with torch + torchvision + safetensors (never the project's .venv):
    SCRATCH/bin/python bench/verify_inception.py reference --pytorch-fid PYTORCH_FID_CHECKOUT --out DIR
    # 2. in the project's environment:
    .venv/bin/python bench/verify_inception.py compare --ref DIR
    # or both, from the project's environment (runs 1 in a subprocess, then 2):
    .venv/bin/python bench/verify_inception.py all --fid-python SCRATCH/bin/python \\
        --pytorch-fid PYTORCH_FID_CHECKOUT [--out DIR]

(here: SCRATCH = /work/scratch/fidenv, PYTORCH_FID_CHECKOUT = /work/scratch/mseitzer+pytorch-fid;
pytorch-fid is imported from ``CHECKOUT/src``, not installed.) The real pt_inception-2015-12-05
weights are not used (not available offline): the check is of the architecture and the
preprocessing, with random weights.

reference (pytorch-fid's code, nothing of trustdiff's):
  * random weights, seeded: the network is built as pytorch-fid's ``fid_inception_v3`` builds it
    (their ``_inception_v3(num_classes=1008, aux_logits=False, weights=None)`` with their
    ``FIDInceptionA/C/E_1/E_2`` swapped in), convolutions re-drawn He-normal, BN γ/β random; BN
    running statistics are first measured on a calibration batch (so activations neither vanish
    nor explode through 94 layers and the features depend on the image), then perturbed at random
    (mean + 0.2·σ·N(0,1), variance × U(0.6, 1.6)), so they are non-trivial and not batch stats;
  * that state dict (torchvision's names, the layout of the real weights file) is saved as
    ``weights.safetensors`` and, pickled, as ``weights.pth``;
  * the reference pipeline is pytorch-fid's own ``InceptionV3([3], resize_input=True,
    normalize_input=True, use_fid_inception=True)``, its URL loader patched to hand back that
    state dict: their ``fid_inception_v3`` builds a fresh network and loads it with
    ``strict=True``;
  * inputs: images on the uint8 grid (k/255, as decoded PNGs) at 299×299, 32×32, 64×64, 28×28
    grey (fed to pytorch-fid repeated to RGB, as its data loader's PIL ``convert("RGB")`` does),
    48×80 and 512×512; half smooth random fields with noise, half uniform noise;
  * saved: the images, pool3 features (float32 and float64), the 299×299 tensor that reached the
    network (after resize and normalisation), and for the first two 299×299 images every stage's
    output (Conv2d_1a_3x3 … Mixed_7c, the pools), for diagnosis;
  * if torch-fidelity is importable there (optional; ``pip install torch-fidelity`` into the same
    scratch environment), the same for its "inception-v3-compat" extractor (its own torchvision-free
    port, TF 1.x resize and (v − 128)/128) with the same weights from ``weights.pth``: the
    reference for trustdiff's default ``preprocess="tf"``. torch-fidelity 0.4.0 maps its
    ``feature_extractor_internal_dtype="float64"`` to float32, so for float64 the script casts the
    module itself.

compare (trustdiff's code, nothing of torchvision's):
  * the weights load through the product's strict path, ``inception_feature_net(weights.safetensors)``,
    and also through the real file's recipe, ``convert_inception_weights(weights.pth)`` then
    ``inception_feature_net`` (same tensors required);
  * ``net``: trustdiff's ``FIDInceptionV3`` alone on the exact 299×299 input pytorch-fid's
    network got (float32, and float64), against pytorch-fid's pool3 features;
  * ``pipe pytorch-fid``: ``InceptionFeatureNet(preprocess="pytorch-fid")`` on the [0, 1] images,
    its own quantisation, resize and scaling (float32, and float64 — its output is cast to
    float32, hence the looser float64 tolerance);
  * ``pipe tf``: trustdiff's default ``preprocess="tf"`` (TF 1.x ``resize_bilinear`` and
    (v − 128)/128, as the TF graph that standard FID — TTUR — runs, and torch-fidelity's
    "inception-v3-compat") against pytorch-fid's pipeline: these differ by design and get no
    pass/fail, only the measured difference; and against torch-fidelity's (pass/fail in float32;
    in float64 only at 299×299: with resizing, trustdiff keeps TF's float32 sample coordinates
    i·float32(in/out) while torch-fidelity's float64 run forms them in float64, a difference of
    the coordinates alone, reported as n/a);
  * for each: max |Δ| of the network input, max |Δ| of the features, the scale (max |feature| of the
    reference), rel = max |Δ| / scale, the tolerance (float32 1e-4, float64 network 1e-9, float64
    pipeline 1e-6) and ok; per size also "spread", the largest max |f_i − f_j| / scale between two
    different images, which says how large a difference the tolerance would hide;
  * per stage on the two diagnosis images: rel difference accumulated along trustdiff's network,
    and of trustdiff's stage alone on pytorch-fid's input to that stage (localises a disagreement).

Prints the tables and a ratio line, writes bench/results/verify_inception.json (versions of both
sides, pytorch-fid's commit, seeds, every row); exit status 1 if a pass/fail check fails.
Cost on 2 shared CPU cores: reference ~1 min, compare ~2.5–4 min; DIR holds ~300 MB.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "verify_inception.json"

#: (name, images, channels, height, width)
CASES = [
    ("299x299", 4, 3, 299, 299),
    ("32x32", 2, 3, 32, 32),
    ("64x64", 2, 3, 64, 64),
    ("28x28 grey", 2, 1, 28, 28),
    ("48x80", 2, 3, 48, 80),
    ("512x512", 2, 3, 512, 512),
]
DIAG_CASE, DIAG_IMAGES = "299x299", 2
#: the modules of pytorch-fid's InceptionV3 blocks 0–3, in order, by their torchvision names
STAGES = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
          "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
          "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"]
TOL = {"float32": 1e-4, "float64": 1e-9, "float64 pipe": 1e-6}


def git_head(path) -> dict:
    def git(*a):
        r = subprocess.run(["git", "-C", str(path), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def make_images(g: torch.Generator, n: int, c: int, h: int, w: int) -> torch.Tensor:
    """n uint8 images: the first ceil(n/2) smooth random fields plus noise, the rest uniform noise."""
    k = (n + 1) // 2
    lo = torch.randn(k, c, max(2, h // 8), max(2, w // 8), generator=g)
    smooth = F.interpolate(lo, size=(h, w), mode="bicubic", align_corners=False)
    x = 0.5 + 0.2 * smooth + 0.12 * torch.randn(k, c, h, w, generator=g)
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    b = torch.randint(0, 256, (n - k, c, h, w), generator=g, dtype=torch.uint8)
    return torch.cat([a, b])


# ---- reference half (pytorch-fid + torchvision; must not import trustdiff) -------------------------


def randomise(net: nn.Module, g: torch.Generator, calib: torch.Tensor) -> None:
    """He-normal convs, random BN affine, BN running stats measured on ``calib`` then perturbed."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features), generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, the batch's statistics
        net.train()
        net(calib)
        net.eval()
        for m in bns:
            m.momentum = 0.1
            sd = m.running_var.sqrt()
            m.running_mean.add_(0.2 * sd * torch.randn(sd.shape, generator=g))
            m.running_var.mul_(torch.empty(sd.shape).uniform_(0.6, 1.6, generator=g))


def reference(pytorch_fid: Path, out: Path, seed: int, threads: int) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    sys.path.insert(0, str(pytorch_fid / "src"))
    import torchvision
    import pytorch_fid.inception as pfi

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # the construction of pytorch-fid's fid_inception_v3, minus its load_state_dict_from_url
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    calib = make_images(g, 4, 3, 299, 299).float() / 127.5 - 1.0
    randomise(net, g, calib)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    del net

    # pytorch-fid's own pipeline; its fid_inception_v3 loads our state dict strictly
    requested = []

    def loader(url, progress=True, **kwargs):
        requested.append(url)
        return {k: v.clone() for k, v in state.items()}

    pfi.load_state_dict_from_url = loader
    model = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    assert requested == [pfi.FID_WEIGHTS_URL], requested
    mods = [m for block in model.blocks for m in block]
    assert len(mods) == len(STAGES), (len(mods), len(STAGES))
    covered = set()
    for name, m in zip(STAGES, mods):
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[f"{name}.{k}"]), f"{name}.{k}"
            covered.add(f"{name}.{k}")
    assert set(state) - covered == {"fc.weight", "fc.bias"}, sorted(set(state) - covered)[:5]
    stage_types = {name: type(m).__name__ for name, m in zip(STAGES, mods)}
    model64 = copy.deepcopy(model).double()

    def run(m, x):
        got = {}
        h = m.blocks[0].register_forward_pre_hook(lambda mod, inp: got.__setitem__("in", inp[0].detach().clone()))
        try:
            with torch.no_grad():
                f = m(x)[0].flatten(1)
        finally:
            h.remove()
        return f, got["in"]

    gi = torch.Generator().manual_seed(seed + 1)
    inputs, ref = {}, {}
    for name, n, c, h, w in CASES:
        u8 = make_images(gi, n, c, h, w)
        inputs[name] = u8
        for dtype, key, m in ((torch.float32, "", model), (torch.float64, "_f64", model64)):
            x = (u8.to(dtype) / 255).expand(-1, 3, -1, -1).contiguous()  # grey → RGB as PIL convert("RGB")
            ref[f"{name}/pool3{key}"], ref[f"{name}/net_input{key}"] = run(m, x)
        print(f"reference {name}: {tuple(u8.shape)} → {tuple(ref[name + '/pool3'].shape)}", flush=True)

    hooks = [m.register_forward_hook(
        lambda mod, inp, outp, name=name: ref.__setitem__(f"diag/{name}", outp.detach().clone()))
        for name, m in zip(STAGES, mods)]
    with torch.no_grad():
        model((inputs[DIAG_CASE][:DIAG_IMAGES].float() / 255))
    for hk in hooks:
        hk.remove()

    torch.save(state, out / "weights.pth")
    tfid_meta, tfid = torch_fidelity_reference(out / "weights.pth", inputs)
    ref.update(tfid)

    meta = {"seed": seed, "input_seed": seed + 1, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": sys.version.split()[0],
            "pytorch_fid": {"path": str(pytorch_fid), **git_head(pytorch_fid)},
            "pipeline": "pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True, "
                        "use_fid_inception=True), fid_inception_v3's URL loader patched to return the random "
                        "state dict (loaded with strict=True by fid_inception_v3)",
            "requested_url": requested[0], "stage_types": stage_types,
            "cases": [list(c) for c in CASES], "diag": [DIAG_CASE, DIAG_IMAGES], "stages": STAGES,
            "torch_fidelity": tfid_meta, "seconds": round(time.time() - t0, 1)}
    save_file(state, str(out / "weights.safetensors"), metadata={"seed": str(seed), "source": "random, pytorch-fid"})
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(out / "inputs.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference.safetensors"))
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"reference written to {out} in {meta['seconds']} s (pytorch-fid {meta['pytorch_fid']['commit']}, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__})")


def torch_fidelity_reference(weights_pth: Path, inputs: dict) -> tuple[dict | None, dict]:
    """If torch-fidelity is importable: its "inception-v3-compat" extractor (TF 1.x resize and
    (v − 128)/128, like trustdiff's preprocess="tf") with the same weights, on the same uint8 images."""
    try:
        import torch_fidelity
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        print(f"torch-fidelity not importable ({e}): no reference for trustdiff's 'tf' pipeline")
        return None, {}
    ref = {}
    for dtype, key in ((torch.float32, ""), (torch.float64, "_f64")):
        fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_pth))
        # its feature_extractor_internal_dtype="float64" runs float32 (0.4.0's text_to_dtype maps
        # "float64" to torch.float32), so the dtype is set here, as its constructor would
        fe.feature_extractor_internal_dtype = dtype
        fe.to(dtype)
        for name, u8 in inputs.items():
            got = {}
            h = fe.Conv2d_1a_3x3.register_forward_pre_hook(lambda m, inp: got.__setitem__("in", inp[0].detach().clone()))
            try:
                with torch.no_grad():
                    (f,) = fe(u8.expand(-1, 3, -1, -1).contiguous())
            finally:
                h.remove()
            ref[f"{name}/tfid_pool3{key}"], ref[f"{name}/tfid_net_input{key}"] = f, got["in"]
    print(f"torch-fidelity {torch_fidelity.__version__} reference done")
    return {"version": torch_fidelity.__version__, "extractor": "FeatureExtractorInceptionV3('inception-v3-compat', "
            "['2048'], feature_extractor_weights_path=weights.pth) on the uint8 images (grey repeated to RGB); for "
            "float64 the module is .to(float64) and its feature_extractor_internal_dtype set to float64 by this "
            "script (its own 'float64' option runs float32 in 0.4.0); its output is cast to float32 in both"}, ref


# ---- compare half (trustdiff; must not import torchvision) ----------------------------------------


def diff(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(max |a − ref|, max |ref|, their ratio), in float64."""
    a, ref = a.double().reshape(ref.shape), ref.double()
    mad = (a - ref).abs().max().item()
    scale = ref.abs().max().item()
    return mad, scale, mad / scale if scale > 0 else math.inf


def spread(f: torch.Tensor) -> float:
    """Largest max |f_i − f_j| over two different images, relative to max |f|."""
    f = f.double()
    return max((f[i] - f[j]).abs().max().item() for i in range(len(f)) for j in range(i)) / f.abs().max().item()


def trustdiff_stages(net):
    """trustdiff's FIDInceptionV3.forward cut into pytorch-fid's stages (checked against forward)."""
    def mp(x):
        return F.max_pool2d(x, 3, stride=2)
    named = {n: getattr(net, n) for n in STAGES if not n.startswith(("maxpool", "avgpool"))}
    named.update(maxpool1=mp, maxpool2=mp, avgpool=lambda x: x.mean((2, 3)))
    return [(n, named[n]) for n in STAGES]


def compare(ref_dir: Path, threads: int, out_json: Path = RESULTS) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    import trustdiff
    from trustdiff.metrics.fid import InceptionFeatureNet, convert_inception_weights, inception_feature_net
    from trustdiff.persist import atomic_write_json

    torch.set_num_threads(threads)
    assert "torchvision" not in sys.modules
    t0 = time.time()
    meta = json.loads((ref_dir / "meta.json").read_text())
    with safe_open(str(ref_dir / "weights.safetensors"), "pt") as f:
        file_state = {k: f.get_tensor(k) for k in f.keys()}
    inputs = load_file(str(ref_dir / "inputs.safetensors"))
    ref = load_file(str(ref_dir / "reference.safetensors"))

    # the product's strict loading paths
    fnet = inception_feature_net(ref_dir / "weights.safetensors", preprocess="pytorch-fid")
    net = fnet.net
    own = net.state_dict()
    assert own.keys() == file_state.keys() and all(torch.equal(own[k], file_state[k]) for k in own)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conv = convert_inception_weights(ref_dir / "weights.pth", Path(tmp) / "w.safetensors")
        own2 = inception_feature_net(conv).net.state_dict()
    assert own2.keys() == own.keys() and all(torch.equal(own2[k], own[k]) for k in own)
    sha_warned = any("SHA-256" in str(w.message) for w in caught)
    tf_net = InceptionFeatureNet(net, preprocess="tf")
    net64 = copy.deepcopy(net).double()
    pipe64 = InceptionFeatureNet(net64, preprocess="pytorch-fid")
    tf64 = InceptionFeatureNet(net64, preprocess="tf")

    def run(module, x, inner):
        got = {}
        h = inner.register_forward_pre_hook(lambda m, inp: got.__setitem__("in", inp[0].detach().clone()))
        try:
            with torch.no_grad():
                f = module(x)
        finally:
            h.remove()
        return f, got["in"]

    rows, spreads = [], {}
    for name, n, c, h, w in CASES:
        x = inputs[name].float() / 255  # trustdiff's own quantisation gets back the same uint8 levels
        r32, r64 = ref[f"{name}/pool3"], ref[f"{name}/pool3_f64"]
        ri32, ri64 = ref[f"{name}/net_input"], ref[f"{name}/net_input_f64"]
        spreads[name] = spread(r32)
        C = dict  # one comparison: trustdiff output and network input vs a reference's
        with torch.no_grad():
            checks = [C(check="net", ref="pytorch-fid", dtype="float32", f=net(ri32), i=ri32, ri=ri32, rf=r32,
                        tol=TOL["float32"]),
                      C(check="net", ref="pytorch-fid", dtype="float64", f=net64(ri64), i=ri64, ri=ri64, rf=r64,
                        tol=TOL["float64"])]
        f, i = run(fnet, x, net)
        checks.append(C(check="pipe pytorch-fid", ref="pytorch-fid", dtype="float32", f=f, i=i, ri=ri32, rf=r32,
                        tol=TOL["float32"]))
        f, i = run(pipe64, x, net64)
        checks.append(C(check="pipe pytorch-fid", ref="pytorch-fid", dtype="float64", f=f, i=i, ri=ri64, rf=r64,
                        tol=TOL["float64 pipe"]))
        f, i = run(tf_net, x, net)
        checks.append(C(check="pipe tf (default)", ref="pytorch-fid", dtype="float32", f=f, i=i, ri=ri32, rf=r32,
                        tol=None, note="differs by design: TF resize and (v-128)/128"))
        if meta.get("torch_fidelity"):
            ti32, tf32 = ref[f"{name}/tfid_net_input"], ref[f"{name}/tfid_pool3"]
            ti64, tf64_ref = ref[f"{name}/tfid_net_input_f64"], ref[f"{name}/tfid_pool3_f64"]
            checks.append(C(check="pipe tf (default)", ref="torch-fidelity", dtype="float32", f=f, i=i, ri=ti32,
                            rf=tf32, tol=TOL["float32"]))
            with torch.no_grad():
                checks.append(C(check="net", ref="torch-fidelity", dtype="float64", f=net64(ti64), i=ti64, ri=ti64,
                                rf=tf64_ref, tol=TOL["float64 pipe"]))
            f, i = run(tf64, x, net64)
            checks.append(C(check="pipe tf (default)", ref="torch-fidelity", dtype="float64", f=f, i=i, ri=ti64,
                            rf=tf64_ref, tol=None if tuple(inputs[name].shape[-2:]) != (299, 299) else TOL["float64 pipe"],
                            note="resize coordinates float32 as TF 1.x vs float64"))
        for k in checks:
            mad, scale, rel = diff(k["f"], k["rf"])
            rows.append({"case": name, "shape": [n, c, h, w], "check": k["check"], "reference": k["ref"],
                         "dtype": k["dtype"], "input_max_abs_diff": (k["i"].double() - k["ri"].double()).abs().max().item(),
                         "max_abs_diff": mad, "scale": scale, "rel": rel, "tol": k["tol"],
                         "ok": None if k["tol"] is None else bool(rel <= k["tol"]), "note": k.get("note")})
        print(f"compared {name}", flush=True)

    # per stage, on the diagnosis images
    x = ref[f"{DIAG_CASE}/net_input"][:DIAG_IMAGES]  # what pytorch-fid's blocks got
    stage_rows, acc, prev_ref = [], x, x
    with torch.no_grad():
        for sname, fn in trustdiff_stages(net):
            r = ref[f"diag/{sname}"].flatten(1) if sname == "avgpool" else ref[f"diag/{sname}"]
            acc = fn(acc)
            alone = fn(prev_ref)
            a_mad, scale, a_rel = diff(acc, r)
            _, _, i_rel = diff(alone, r)
            stage_rows.append({"stage": sname, "shape": list(r.shape[1:]), "scale": scale,
                               "accumulated_max_abs_diff": a_mad, "accumulated_rel": a_rel, "alone_rel": i_rel})
            prev_ref = r
        assert torch.equal(acc, net(x)), "the stage chain does not reproduce FIDInceptionV3.forward"

    # tables
    print(f"\ntrustdiff FIDInceptionV3 vs pytorch-fid {str(meta['pytorch_fid']['commit'])[:12]} "
          f"(random weights, seed {meta['seed']}; rel = max|Δ| / max|ref feature|)")
    hdr = (f"{'input':<11} {'trustdiff':<18} {'vs':<14} {'dtype':<8} {'input max|Δ|':>12} {'feat max|Δ|':>11} "
           f"{'scale':>8} {'rel':>9} {'tol':>7}  ok")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        tol = "—" if r["tol"] is None else f"{r['tol']:.0e}"
        ok = f"n/a ({r['note']})" if r["ok"] is None else ("ok" if r["ok"] else "FAIL")
        print(f"{r['case']:<11} {r['check']:<18} {r['reference']:<14} {r['dtype']:<8} {r['input_max_abs_diff']:>12.3g} "
              f"{r['max_abs_diff']:>11.3g} {r['scale']:>8.3g} {r['rel']:>9.2e} {tol:>7}  {ok}")
    print("spread (max |f_i − f_j| / scale between two images of a size): "
          + ", ".join(f"{k} {v:.2f}" for k, v in spreads.items()))
    print(f"\nper stage, {DIAG_CASE} images 0–{DIAG_IMAGES - 1}, float32 (rel = max|Δ| / max|ref|):")
    print(f"{'stage':<14} {'shape':<16} {'accumulated rel':>15} {'stage alone rel':>15}")
    for s in stage_rows:
        print(f"{s['stage']:<14} {'×'.join(map(str, s['shape'])):<16} {s['accumulated_rel']:>15.2e} {s['alone_rel']:>15.2e}")

    # power of the test: known ways to get the port wrong, applied to a copy of trustdiff's network
    from trustdiff.nets import inception as tdi

    x = ref[f"{DIAG_CASE}/net_input"][:DIAG_IMAGES]
    r = ref[f"{DIAG_CASE}/pool3"][:DIAG_IMAGES]
    pool3x3 = tdi.pool3x3

    def pad_counted(t, kind):
        return F.avg_pool2d(t, 3, stride=1, padding=1) if kind == "avg" else pool3x3(t, kind)

    def mutant(what):
        m = copy.deepcopy(net)
        if what == "bn_eps":
            for b in m.modules():
                if isinstance(b, nn.BatchNorm2d):
                    b.eps = 1e-5
        elif what == "mixed_7c_avg":
            m.Mixed_7c.pool = "avg"
        return m

    mutants = {}
    for what, label in (("bn_eps", "BatchNorm eps 1e-5 (PyTorch default) instead of 1e-3"),
                        ("mixed_7c_avg", "Mixed_7c pool branch avg (torchvision) instead of max"),
                        ("count_include_pad", "3×3 avg pools count the zero padding (PyTorch default)")):
        tdi.pool3x3 = pad_counted if what == "count_include_pad" else pool3x3
        try:
            with torch.no_grad():
                mutants[label] = diff(mutant(what)(x), r)[2]
        finally:
            tdi.pool3x3 = pool3x3
    print(f"\nsensitivity: rel difference a known porting mistake would show ({DIAG_CASE}, "
          f"images 0–{DIAG_IMAGES - 1}, float32):")
    for label, rel in mutants.items():
        print(f"  {label:<58} rel {rel:.2e}")

    judged = [r for r in rows if r["ok"] is not None]
    failed = [r for r in judged if not r["ok"]]
    worst_net = max(r["rel"] for r in rows if r["check"] == "net" and r["dtype"] == "float32")
    worst_pipe = max(r["rel"] for r in rows if r["check"] == "pipe pytorch-fid" and r["dtype"] == "float32")
    tf_rows = [r for r in rows if r["check"].startswith("pipe tf") and r["reference"] == "pytorch-fid"]
    tf64_rows = [r for r in rows if r["check"].startswith("pipe tf") and r["reference"] == "torch-fidelity"
                 and r["dtype"] == "float64"]
    tf_299 = next(r["rel"] for r in tf_rows if r["case"] == "299x299")
    tf_max = max(r["rel"] for r in tf_rows)
    against = (f"{tf_max / worst_pipe:.2g}× the pytorch-fid pipeline's disagreement" if worst_pipe > 0
               else "against an exactly zero disagreement of the pytorch-fid pipeline")
    ratio = (f"ratio: worst float32 rel / tol = {worst_net / TOL['float32']:.2g} (network alone), "
             f"{worst_pipe / TOL['float32']:.2g} (pytorch-fid pipeline); the smallest porting mistake tried "
             f"gives rel {min(mutants.values()):.2g} = {min(mutants.values()) / TOL['float32']:.2g}× tol; "
             f"trustdiff's default 'tf' pipeline differs from pytorch-fid's by rel {tf_299:.2g} at 299×299 "
             f"(scaling only) to {tf_max:.2g} (with resize), {against}")
    tfid = [r["rel"] for r in rows if r["reference"] == "torch-fidelity" and r["dtype"] == "float32"]
    if tfid:
        ratio += (f"; against torch-fidelity's TF-1.x-compatible pipeline the 'tf' pipeline's worst float32 rel / tol "
                  f"= {max(tfid) / TOL['float32']:.2g} (float64: rel up to {max(r['rel'] for r in tf64_rows):.2g}, "
                  f"from the resize coordinates alone)")
    print("\n" + ratio)
    print(f"{len(judged) - len(failed)}/{len(judged)} checks ok" + (f"; FAILED: {len(failed)}" if failed else ""))

    result = {
        "what": "trustdiff.nets.inception.FIDInceptionV3 + trustdiff.metrics.fid.InceptionFeatureNet vs "
                "pytorch-fid's InceptionV3 (FID Inception, pool3), random weights (the real weights file is "
                "not available here)",
        "commands": [f"{{fid-python}} bench/verify_inception.py reference --pytorch-fid "
                     f"{meta['pytorch_fid']['path']} --out DIR", ".venv/bin/python bench/verify_inception.py "
                     "compare --ref DIR"],
        "reference": meta,
        "trustdiff": {"version": trustdiff.__version__, "torch": torch.__version__, **git_head(REPO),
                      "python": sys.version.split()[0]},
        "loading": {"inception_feature_net(weights.safetensors)": "strict load, tensors equal to the file",
                    "convert_inception_weights(weights.pth) → inception_feature_net": "same tensors",
                    "sha256_warning_for_random_weights": sha_warned},
        "tolerances": TOL, "rows": rows, "spread": spreads, "stages": stage_rows,
        "sensitivity_rel": mutants,
        "ratio": ratio, "passed": len(judged) - len(failed), "failed": len(failed),
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(out_json, result)
    print(f"wrote {out_json}")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("reference", help="pytorch-fid side (needs torchvision)")
    a.add_argument("--pytorch-fid", type=Path, required=True, help="checkout of mseitzer/pytorch-fid")
    a.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("compare", help="trustdiff side")
    b.add_argument("--ref", type=Path, required=True)
    c = sub.add_parser("all", help="reference in a subprocess with --fid-python, then compare")
    c.add_argument("--fid-python", required=True, help="python of an environment with torchvision")
    c.add_argument("--pytorch-fid", type=Path, required=True)
    c.add_argument("--out", type=Path, default=None, help="reference folder (default: a temporary one)")
    for s in (a, c):
        s.add_argument("--seed", type=int, default=0)
    for s in (a, b, c):
        s.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.mode == "reference":
        reference(args.pytorch_fid.resolve(), args.out, args.seed, args.threads)
        return 0
    if args.mode == "compare":
        return compare(args.ref, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        subprocess.run([args.fid_python, str(Path(__file__).resolve()), "reference", "--pytorch-fid",
                        str(args.pytorch_fid), "--out", str(out), "--seed", str(args.seed),
                        "--threads", str(args.threads)], check=True)
        return compare(out, args.threads)


if __name__ == "__main__":
    sys.exit(main())

"""``trustdiff audit …``: how much a diffusion model leaks about its training data.

    trustdiff audit subset --data digits -n 50 --out runs/few                 # a small training set
    trustdiff train --data runs/few/members.npz --resolution 8 --out runs/few-model
    trustdiff audit extract --model runs/few-model -n 1000 --out runs/extract  # Carlini et al. 2023
    trustdiff audit membership --model runs/few-model --out runs/mia           # loss attack + PIA

The training set is recovered from the training run (``config.json``: its data, resolution and
split seed), and the held-out images from the same data set's test split — or, for a set written
by ``audit subset``, from the ``nonmembers.npz`` beside it; ``--train-data``/``--heldout-data``
(extract) and ``--members``/``--nonmembers`` (membership) give them explicitly.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .common import (COUNT, COUNT0, NONNEG, POSITIVE, SAMPLERS, parse_floats, ran_on, run_command, seed_option,
                     unsafe_pickle_option)

SUBSET_MEMBERS = "members.npz"
SUBSET_NONMEMBERS = "nonmembers.npz"


@click.group("audit")
def audit_group():
    """Privacy audit: training-data extraction and membership inference."""


# ---- the training set of a model, from its training run -----------------------------------------

def _read_json(path: Path):
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def training_source(model_dir: Path, spec) -> dict | None:
    """What a model was trained on, from its training run: {"data", "resolution", "seed", "run",
    "train_images"}; None when ``model_dir`` is not (inside) a training run. A ``trustdiff
    train`` run records its flags; a run of the library's ``train_diffusion`` (a bench) records
    the TrainConfig, and the model folder its data set."""
    model_dir = Path(model_dir)
    for run in (model_dir, model_dir.parent):
        cfg = _read_json(run / "config.json")
        if cfg is None:
            continue
        job = cfg.get("config") if cfg.get("command") == "train" else None
        if isinstance(job, dict) and "data" in job:
            src = {"data": job["data"], "resolution": job.get("resolution", spec.resolution),
                   "seed": (job.get("train") or {}).get("seed", 0)}
        elif isinstance(cfg.get("train"), dict) and "train_run" in cfg and spec.data not in ("", "unknown"):
            src = {"data": spec.data, "resolution": spec.resolution, "seed": cfg["train"].get("seed", 0)}
        else:
            continue
        m = _read_json(run / "metrics.json") or {}
        return {**src, "run": str(run), "train_images": m.get("train_images")}
    return None


def _subset_nonmembers(data) -> Path | None:
    """The ``nonmembers.npz`` beside a ``members.npz`` written by ``audit subset``, if that is what
    ``data`` is."""
    from ..runs import run_kind

    if not isinstance(data, str) or data == "digits":
        return None
    p = Path(data.split(":", 1)[1] if data.split(":", 1)[0] in ("npz",) else data)
    if p.name == SUBSET_MEMBERS and run_kind(p.parent) == "audit subset" and (p.parent / SUBSET_NONMEMBERS).is_file():
        return p.parent / SUBSET_NONMEMBERS
    return None


def _check_shape(s, spec, flag: str):
    from ..errors import InputError

    if s.images.shape[-1] != spec.channels:
        raise InputError(f"{flag}: {s.images.shape[-1]}-channel images, but the model makes {spec.channels}")


def resolve_sets(model_dir: Path, spec, train_data: str | None, heldout_data: str | None, *, need_heldout: bool = True,
                 train_flag: str = "--train-data", heldout_flag: str = "--heldout-data"):
    """(training ImageSet, held-out ImageSet or None, where they came from) at the model's
    resolution; one InputError line when either cannot be found."""
    from ..data import load
    from ..errors import InputError

    res = spec.resolution
    src = training_source(model_dir, spec)
    where = {}
    if train_data is not None:
        train = load(train_data, resolution=res, split="train", seed=src["seed"] if src else 0)
        where["train"] = f"{train_data} (given)"
        seed = src["seed"] if src else 0
        data = train_data
    else:
        if src is None:
            raise InputError(f"{train_flag}: {model_dir} is not a training run whose config names its data; "
                             f"give the training set with {train_flag}")
        data, seed = src["data"], src["seed"]
        try:
            train = load(data, resolution=res, split="train", seed=seed)
        except InputError as e:
            raise InputError(f"{train_flag}: the training set of {src['run']} ({data!r}) cannot be loaded ({e}); "
                             f"give it with {train_flag}") from None
        if src.get("train_images") not in (None, len(train.images)):
            raise InputError(f"{train_flag}: {data!r} now holds {len(train.images)} images, but {src['run']} trained "
                             f"on {src['train_images']}; give the training set with {train_flag}")
        where["train"] = f"{data} (train split, seed {seed}, from {src['run']})"
    _check_shape(train, spec, train_flag)
    heldout = None
    if heldout_data is not None or need_heldout:
        heldout, where["heldout"] = heldout_of(data, train, heldout_data, res, seed, heldout_flag)
        _check_shape(heldout, spec, heldout_flag)
    return train, heldout, where


def heldout_of(data: str, train, heldout_data: str | None, resolution: int, seed: int, flag: str):
    """(images never trained on, where they came from) for a model trained on ``data``'s train
    split (``train``): ``heldout_data`` when given; else the ``nonmembers.npz`` beside an ``audit
    subset``'s members; else ``data``'s test split — refused (one InputError line naming ``flag``)
    when that split is the training set itself."""
    import numpy as np

    from ..data import load
    from ..errors import InputError

    if heldout_data is not None:
        return load(heldout_data, resolution=resolution, split="test", seed=seed), f"{heldout_data} (given)"
    beside = _subset_nonmembers(data)
    if beside is not None:
        return (load(str(beside), resolution=resolution, split="test", seed=seed),
                f"{beside} (the non-members of its audit subset)")
    heldout = load(data, resolution=resolution, split="test", seed=seed)
    if len(heldout.images) == len(train.images) and np.array_equal(heldout.images, train.images):
        raise InputError(f"{flag}: the training set {data!r} has no held-out split (its test split is the training set "
                         f"itself); give held-out images with {flag}")
    return heldout, f"{data} (test split, seed {seed})"


def _tensors(imageset, device):
    x, y = imageset.tensors()
    return x.to(device), y


# ---- audit subset ------------------------------------------------------------------------------------

@audit_group.command("subset")
@click.option("--data", default="digits", show_default=True, help='"digits" or a data path: the pool to draw from.')
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True,
              help="The pool's split (digits: seeded by --seed).")
@click.option("--resolution", type=COUNT, default=None, help="Resize the images (default: as stored).")
@click.option("-n", "--num", "num", type=COUNT, required=True, help="Distinct training images (members).")
@click.option("--nonmembers", type=COUNT0, default=0, show_default=True, help="Non-members kept (0: every image not chosen).")
@click.option("--duplicate", type=COUNT0, default=0, show_default=True, help="Members repeated in the training set.")
@click.option("--times", type=COUNT, default=1, show_default=True, help="How often each duplicated member occurs.")
@seed_option("Seed of the choice of members.")
@run_command("audit subset", out="runs/audit-subset")
def subset_cmd(run, data, split, resolution, num, nonmembers, duplicate, times, seed, out):
    """Draw a training set of -n images (optionally with duplicates) and keep the rest as
    non-members: OUT/members.npz (train a model on it with `trustdiff train --data`) and
    OUT/nonmembers.npz, which `audit extract`/`audit membership` then find by themselves."""
    import io

    import numpy as np

    from ..data import load
    from ..persist import atomic_write_bytes, atomic_write_json
    from ..audit import member_split

    pool = load(data, resolution=resolution, split=split, seed=seed)
    members, non, info = member_split(pool, num, seed=seed, nonmembers=nonmembers, duplicate=duplicate, times=times)
    config = dict(data=data, split=split, resolution=resolution, num=num, nonmembers=nonmembers, duplicate=duplicate,
                  times=times, seed=seed)
    if not run.start(config):
        return
    for name, s in ((SUBSET_MEMBERS, members), (SUBSET_NONMEMBERS, non)):
        buf = io.BytesIO()
        np.savez(buf, images=s.images, labels=s.labels)
        atomic_write_bytes(out / name, buf.getvalue())
    atomic_write_json(out / "indices.json", {"member_indices": info.pop("member_indices"),
                                             "nonmember_indices": info.pop("nonmember_indices")})
    atomic_write_json(out / "metrics.json", {**info, "data": data, "split": split})
    click.echo(f"{info['members']} members ({info['training_rows']} training rows), {info['nonmembers']} non-members "
               f"→ {out / SUBSET_MEMBERS}, {out / SUBSET_NONMEMBERS}")


# ---- audit extract -----------------------------------------------------------------------------------

@audit_group.command("extract")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="A model folder or its training run.")
@click.option("--train-data", default=None, help="The training set (train split); default: recovered from the training run.")
@click.option("--heldout-data", default=None,
              help="Held-out real images (test split), the baseline; default: the training data's test split.")
@click.option("-n", "--num", "num", type=COUNT, default=1000, show_default=True, help="Images to generate.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="heun", show_default=True)
@click.option("--sample-steps", "steps", type=COUNT, default=18, show_default=True)
@click.option("--guidance", type=NONNEG, default=1.0, show_default=True, help="Classifier-free guidance scale (1: none).")
@click.option("--class", "classes", multiple=True, type=click.IntRange(min=0), help="Class label(s); default: all, cycling.")
@seed_option("Image i uses seed + i.")
@click.option("--batch", "batch_size", type=COUNT, default=256, show_default=True)
@click.option("--shard-size", type=COUNT, default=10_000, show_default=True)
@click.option("--neighbours", "n_neighbours", type=COUNT, default=50, show_default=True,
              help="n: the nearest training images whose mean distance normalises ℓ (Carlini et al.: 50).")
@click.option("--alpha", type=POSITIVE, default=0.5, show_default=True, help="α of the criterion (Carlini et al.: 0.5).")
@click.option("--delta", type=POSITIVE, default=1 / 3, show_default=True, help="Flag ℓ < δ (Carlini et al.: 1/3).")
@click.option("--rms-threshold", type=NONNEG, default=0.03, show_default=True,
              help="The plain ℓ2 test: RMS pixel distance ([0, 1] pixels) to the nearest training image below this.")
@click.option("--chunk", type=COUNT, default=8192, show_default=True, help="Training images per distance block (memory).")
@click.option("--pairs", type=COUNT, default=32, show_default=True, help="(training image, generation) pairs in pairs.png.")
@unsafe_pickle_option
@run_command("audit extract", out="runs/audit-extract", resumable=True)
def extract_cmd(run, model_dir, train_data, heldout_data, num, sampler, steps, guidance, classes, seed, batch_size,
                shard_size, n_neighbours, alpha, delta, rms_threshold, chunk, pairs, allow_pickle, out):
    """Generate -n images (OUT/samples/images-XXXXX.npz, resumable) and flag the ones that copy a
    training image (Carlini et al. 2023): metrics.json (distinct training images extracted, per
    class; the held-out real images' baseline), pairs.png, distances.png, neighbours.npz."""
    import numpy as np
    import torch

    from ..audit import extraction_report, flagged, pair_grid, plot_distances, prepare_training_set
    from ..data import load_npz
    from ..diffusion.model import class_cycle, load_model, write_shards
    from ..errors import InputError
    from ..images import make_grid, save_png
    from ..persist import atomic_write_bytes, atomic_write_json
    from ..runtime import with_precision

    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    den = den.to(run.device)
    class_cycle(spec, num, classes)                                 # a bad --class fails here
    if guidance != 1.0 and spec.num_classes is None:
        raise InputError(f"--guidance: expected 1 (no guidance) for an unconditional model, got {guidance:g}")
    train, heldout, where = resolve_sets(model_dir, spec, train_data, heldout_data)
    config = dict(model=str(model_dir), num=num, sampler=sampler, steps=steps, guidance=guidance, classes=list(classes),
                  seed=seed, batch_size=batch_size, shard_size=shard_size, n_neighbours=n_neighbours, alpha=alpha,
                  delta=delta, rms_threshold=rms_threshold, chunk=chunk, sets=where)
    if not run.start(config):
        return
    t0 = time.time()
    paths = write_shards(den, spec, out / "samples", num, shard_size=shard_size, seed=seed, sampler=sampler, steps=steps,
                         classes=classes, guidance=guidance, batch=batch_size, progress=True, precision=run.precision)
    gen_seconds = time.time() - t0
    gen = torch.cat([load_npz(p).tensors()[0] for p in paths]).to(run.device)
    tx, ty = _tensors(train, run.device)
    ts = prepare_training_set(tx, ty)
    hx = _tensors(heldout, run.device)[0] if heldout is not None else None
    t1 = time.time()
    rep, g, h = extraction_report(gen, ts, hx, n_neighbours=n_neighbours, alpha=alpha, delta=delta,
                                  rms_threshold=rms_threshold, num_classes=train.num_classes, chunk=chunk)
    search_seconds = time.time() - t1
    masks = flagged(g, delta=delta, rms_threshold=rms_threshold)
    save_png(out / "pairs.png", pair_grid(gen, ts, g, masks["normalized"], max_pairs=pairs))
    save_png(out / "grid.png", make_grid(gen[:100].cpu(), nrow=10))
    plot_distances(out / "distances.png", g, h, delta=delta, rms_threshold=rms_threshold)
    import io

    buf = io.BytesIO()
    np.savez(buf, nearest=ts.first[g.index].numpy(), l2=g.l2.numpy(), rms=g.rms.numpy(), ratio=g.ratio.numpy(),
             extracted=masks["normalized"].numpy())
    atomic_write_bytes(out / "neighbours.npz", buf.getvalue())
    rep |= {"sets": where, "sampler": sampler, "sample_steps": steps, "guidance": guidance,
            "pairs_shown": "extracted" if bool(masks["normalized"].any()) else "closest (none extracted)",
            "seconds": {"generate": gen_seconds, "search": search_seconds},
            "device": ran_on(with_precision(den, run.precision), gen), "precision": run.precision}
    atomic_write_json(out / "metrics.json", rep)
    n = rep["generated"]["normalized"]
    base = rep.get("heldout", {}).get("normalized")
    click.echo(f"{n['flagged']['k']}/{num} generations extracted (ℓ < {delta:.3g}): {n['distinct_training_images']} distinct "
               f"training images of {rep['distinct_training_images']}"
               + (f"; held-out real images flagged: {base['flagged']['k']}/{base['flagged']['n']}" if base else "")
               + f" → {out}")


# ---- audit membership ------------------------------------------------------------------------------

def _attack_options(f):
    """The options of a membership attack, shared by ``audit membership`` and ``audit ownership``."""
    for opt in reversed([
        click.option("--sigmas", default="0.02,0.05,0.1,0.2,0.5,1.0", show_default=True,
                     help="Noise levels (model units, images in [-1, 1]) to score at."),
        click.option("--repeats", type=COUNT, default=4, show_default=True, help="Noise draws per image and σ (loss attack)."),
        click.option("--attack", "attacks", multiple=True, type=click.Choice(["loss", "pia"]), default=("loss", "pia"),
                     show_default=True, help="loss: Matsumoto et al. 2023; pia: Kong et al. 2024."),
        click.option("--max-images", type=COUNT0, default=0, show_default=True,
                     help="At most this many members and as many non-members, chosen by --seed (0: all)."),
        click.option("--labels/--no-labels", "use_labels", default=True, show_default=True,
                     help="Condition a class-conditional model on each image's label (else on the null label)."),
        seed_option("Seed of the loss attack's noise and of --max-images' choice."),
        click.option("--batch", "batch_size", type=COUNT, default=256, show_default=True),
        unsafe_pickle_option]):
        f = opt(f)
    return f


@audit_group.command("membership")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="A model folder or its training run.")
@click.option("--members", default=None, help="Member images (train split); default: the training set, from the training run.")
@click.option("--nonmembers", default=None, help="Non-member images (test split); default: the training data's held-out split.")
@_attack_options
@run_command("audit membership", out="runs/audit-membership")
def membership_cmd(run, model_dir, members, nonmembers, sigmas, repeats, attacks, max_images, use_labels, seed,
                   batch_size, allow_pickle, out):
    """Score members and non-members by the model's denoising loss (and PIA) at each σ:
    metrics.json (AUC with DeLong interval, TPR at FPR 1% and 0.1% with Clopper–Pearson
    intervals, per σ and at the best σ; random guessing beside), roc.png, scores.npz."""
    from ..persist import atomic_write_json
    from ..diffusion.model import load_model

    sig = parse_floats(sigmas, "--sigmas")
    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    den = den.to(run.device)
    _check_sigmas(sig, spec)
    attacks = tuple(dict.fromkeys(attacks))
    mem, non, where = resolve_sets(model_dir, spec, members, nonmembers, train_flag="--members", heldout_flag="--nonmembers")
    sets = membership_sets(mem.tensors(), non.tensors(), mem.images, non.images, max_images, seed, spec, use_labels)
    config = dict(model=str(model_dir), sigmas=sig, repeats=repeats, attacks=list(attacks), max_images=max_images,
                  use_labels=use_labels, seed=seed, batch_size=batch_size, sets=where)
    if not run.start(config):
        return
    rep, scores = score_membership(den, spec, sets, attacks, sig, seed=seed, repeats=repeats, batch_size=batch_size,
                                   device=run.device, precision=run.precision)
    write_membership(out, rep, scores, sig, title=f"{len(sets['mx'])} members vs {len(sets['nx'])} non-members")
    rep |= {"sets": where}
    atomic_write_json(out / "metrics.json", rep)
    echo_membership(rep)
    click.echo(f"{len(sets['mx'])} members, {len(sets['nx'])} non-members → {out}")


def _check_sigmas(sig, spec) -> None:
    from ..errors import InputError

    too_big = [s for s in sig if s > spec.sigma_max]
    if too_big:
        raise InputError(f"--sigmas: expected levels up to the model's σ_max {spec.sigma_max:g}, got {too_big}")


def membership_sets(members, nonmembers, member_rows, nonmember_rows, max_images: int, seed: int, spec,
                    use_labels: bool) -> dict:
    """The sets a membership attack scores, from (images, labels) tensors and the stored rows
    (uint8 arrays, to compare images exactly): each distinct member once; no non-member that is an
    exact copy of a member; at most ``max_images`` of each by ``seed``; labels checked against a
    class-conditional model. One InputError line for an empty or mislabelled set."""
    import numpy as np
    import torch

    from ..audit import prepare_training_set
    from ..errors import InputError

    (mx, my), (nx, ny) = members, nonmembers
    ts = prepare_training_set(mx, my)
    mx, my = mx[ts.first], my[ts.first]
    member_keys = {bytes(r) for r in member_rows.reshape(len(member_rows), -1)}
    clean = np.array([bytes(r) not in member_keys for r in nonmember_rows.reshape(len(nonmember_rows), -1)], bool)
    nx, ny = nx[torch.from_numpy(clean)], ny[torch.from_numpy(clean)]
    if not len(nx):
        raise InputError("--nonmembers: every non-member image is also a member; give other non-members")
    if max_images:
        g = torch.Generator().manual_seed(seed)
        pm, pn = torch.randperm(len(mx), generator=g)[:max_images], torch.randperm(len(nx), generator=g)[:max_images]
        mx, my, nx, ny = mx[pm], my[pm], nx[pn], ny[pn]
    conditional = spec.num_classes is not None and use_labels
    if conditional and (int(min(my.min(), ny.min())) < 0 or int(max(my.max(), ny.max())) >= spec.num_classes):
        raise InputError(f"--labels: the images' labels are not all in 0..{spec.num_classes - 1}; pass --no-labels")
    return {"mx": mx, "my": my, "nx": nx, "ny": ny, "conditional": conditional,
            "members_duplicates_removed": int(ts.size - len(ts.first)),
            "nonmembers_equal_to_a_member_removed": int((~clean).sum())}


def score_membership(den, spec, sets: dict, attacks, sig, *, seed: int, repeats: int, batch_size: int, device,
                     precision: str):
    """Every attack's scores of the members and non-members of ``sets`` (:func:`membership_sets`)
    by ``den`` (already on ``device``) at ``precision`` → (membership_report with the run's facts,
    {"members": attack → [N, S], "nonmembers": …})."""
    import torch

    from ..audit import attack_scores, membership_report
    from ..runtime import with_precision

    f = with_precision(den.eval(), precision)
    cond = sets["conditional"]
    scores_m, scores_n, secs = {}, {}, {}
    t0 = time.time()
    with torch.no_grad():
        for a in attacks:
            t = time.time()
            kw = dict(seed=seed, repeats=repeats, batch=batch_size, sigma0=float(spec.sigma_min))
            scores_m[a] = attack_scores(a, f, sets["mx"].to(device), sig, cond=sets["my"] if cond else None, **kw).cpu()
            scores_n[a] = attack_scores(a, f, sets["nx"].to(device), sig, cond=sets["ny"] if cond else None, **kw).cpu()
            secs[a] = time.time() - t
    rep = membership_report(scores_m, scores_n, sig, seed=seed)
    rep |= {k: sets[k] for k in ("members_duplicates_removed", "nonmembers_equal_to_a_member_removed")}
    rep |= {"conditioned_on_labels": cond, "sigma0_pia": float(spec.sigma_min),
            "seconds": secs | {"total": time.time() - t0}, "device": ran_on(f, sets["mx"][:1].to(device)),
            "precision": precision}
    return rep, {"members": scores_m, "nonmembers": scores_n}


def write_membership(out: Path, rep: dict, scores: dict, sig, *, title: str) -> None:
    """OUT/roc.png (each attack at its best σ), OUT/auc-sigma.png, OUT/scores.npz."""
    import io

    import numpy as np

    from ..audit import plot_roc
    from ..persist import atomic_write_bytes

    sm, sn = scores["members"], scores["nonmembers"]
    best = {a: r["best"]["sigma"] for a, r in rep["attacks"].items()}
    plot_roc(out / "roc.png", {f"{a} (σ={best[a]:g})": (sm[a][:, sig.index(best[a])], sn[a][:, sig.index(best[a])])
                               for a in best}, title=title)
    _plot_auc_sigma(out / "auc-sigma.png", rep)
    buf = io.BytesIO()
    np.savez(buf, sigmas=np.array(sig), **{f"{a}_members": v.numpy() for a, v in sm.items()},
             **{f"{a}_nonmembers": v.numpy() for a, v in sn.items()})
    atomic_write_bytes(out / "scores.npz", buf.getvalue())


def echo_membership(rep: dict) -> None:
    for a, r in rep["attacks"].items():
        b = r["best"]
        t1 = b["tpr_at_fpr"]["0.01"]["tpr"]
        sel = r.get("selected")
        click.echo(f"{a}: AUC {b['auc']:.3f} [{b['auc_interval'][0]:.3f}, {b['auc_interval'][1]:.3f}] at the best σ={b['sigma']:g}, "
                   f"TPR@1%FPR {t1['value']:.3f} ({t1['k']}/{t1['n']})"
                   + (f"; σ chosen on half the images: AUC {sel['auc']:.3f} on the other half" if sel else ""))


# ---- audit ownership ---------------------------------------------------------------------------------

@audit_group.command("ownership")
@click.option("--recipe", "recipe_dir", required=True, type=click.Path(path_type=Path),
              help="A finished `watermark recipe` run: its watermarked training set, model, key and detections.")
@click.option("--codec", "codec_dir", default=None, type=click.Path(path_type=Path),
              help="The recipe's codec (default: RECIPE/codec, where the recipe trains it).")
@click.option("--nonmembers", default=None,
              help="Clean images the model never saw, watermarked here with the recipe's key (default: the held-out "
                   "split of the recipe's data, or the non-members of its audit subset).")
@_attack_options
@run_command("audit ownership", out="runs/audit-ownership")
def ownership_cmd(run, recipe_dir, codec_dir, nonmembers, sigmas, repeats, attacks, max_images, use_labels, seed, batch_size,
                  allow_pickle, out):
    """Was the recipe's watermarked model trained on the owner's images? Membership scores of its
    (watermarked) training set against held-out images watermarked with the same key — per image
    (AUC, TPR at FPR 1% and 0.1%) and for the whole set (Mann–Whitney p) — beside the watermark's
    p-value over the recipe's generated images: OUT/metrics.json, roc.png, scores.npz."""
    from ..audit import detection_count_test, membership_dataset_tests
    from ..data import load
    from ..diffusion.model import load_model
    from ..errors import InputError
    from ..images import to_uint8
    from ..persist import atomic_write_json
    from ..runs import run_kind, saved_config
    from ..watermark import load_codec
    from ..watermark.embed import watermark
    from ..watermark.recipe import read_key

    kind = run_kind(recipe_dir)
    if kind != "watermark recipe":
        raise InputError(f"--recipe: expected a `watermark recipe` run folder, got {recipe_dir} "
                         f"({'a ' + kind + ' run' if kind else 'no run'})")
    m = _read_json(recipe_dir / "metrics.json")
    if not m or "detection" not in m:
        raise InputError(f"--recipe: {recipe_dir} has no metrics.json with detections: the recipe has not finished")
    job = saved_config(recipe_dir).get("config") or {}
    key = read_key(recipe_dir / "key.txt")
    codec_dir = codec_dir if codec_dir is not None else recipe_dir / "codec"
    if not codec_dir.exists():
        raise InputError(f"--codec: {codec_dir} does not exist (the recipe used a codec from elsewhere); give it with --codec")
    codec = load_codec(codec_dir, allow_pickle=allow_pickle)
    if codec.n_bits != key.numel() or codec.resolution != job.get("resolution"):
        raise InputError(f"--codec: expected the recipe's codec ({key.numel()} bits at {job.get('resolution')}×"
                         f"{job.get('resolution')}), got {codec.n_bits} bits at {codec.resolution}×{codec.resolution}")
    model_dir = recipe_dir / "diffusion-watermarked"
    sig = parse_floats(sigmas, "--sigmas")
    den, spec = load_model(model_dir, allow_pickle=allow_pickle)
    den = den.to(run.device)
    _check_sigmas(sig, spec)
    attacks = tuple(dict.fromkeys(attacks))
    mem, _, where = resolve_sets(model_dir, spec, None, None, need_heldout=False)
    clean_train = load(job["data"], resolution=spec.resolution, split="train", seed=job.get("seed", 0))
    held, held_from = heldout_of(job["data"], clean_train, nonmembers, spec.resolution, job.get("seed", 0), "--nonmembers")
    _check_shape(held, spec, "--nonmembers")
    config = dict(recipe=str(recipe_dir), codec=str(codec_dir), sigmas=sig, repeats=repeats, attacks=list(attacks),
                  max_images=max_images, use_labels=use_labels, seed=seed, batch_size=batch_size)
    if not run.start(config):
        return
    # the non-members: held-out images carrying the same key, so the watermark is no difference
    hx, hy = held.tensors()
    hw = watermark(codec.to(run.device), hx.to(run.device), key, precision=run.precision)["images"].cpu()
    rows = to_uint8(hw)
    sets = membership_sets(mem.tensors(), (hw, hy), mem.images, rows, max_images, seed, spec, use_labels)
    rep, scores = score_membership(den, spec, sets, attacks, sig, seed=seed, repeats=repeats, batch_size=batch_size,
                                   device=run.device, precision=run.precision)
    write_membership(out, rep, scores, sig, title=f"{len(sets['mx'])} watermarked members vs {len(sets['nx'])} "
                                                  "watermarked non-members")
    dataset = membership_dataset_tests(scores["members"], scores["nonmembers"], sig, rep, seed=seed)
    det = m["detection"]
    marks = {name: detection_count_test(det[name]["detected"]["k"], det[name]["detected"]["n"], det[name]["fpr"])
             for name in ("generated_watermarked", "generated_clean") if name in det}
    where |= {"nonmembers": f"{held_from}, watermarked with the recipe's key"}
    atomic_write_json(out / "metrics.json", {"recipe": str(recipe_dir), "sets": where, "membership": rep,
                                             "membership_dataset": dataset, "watermark_dataset": marks})
    echo_membership(rep)
    for a, d in dataset.items():
        sel = d.get("selected")
        click.echo(f"{a}, the whole set: Mann–Whitney log10 p {d['bonferroni']['log10_p']:.2f} (best of {len(sig)} σ, "
                   f"Bonferroni)" + (f"; at the σ chosen on half, on the other half: {sel['log10_p']:.2f}" if sel else ""))
    for name, t in marks.items():
        click.echo(f"watermark, {name.replace('_', ' ')} images: {t['detected']}/{t['images']} detected at FPR "
                   f"{t['fpr']:g}, log10 p {t['log10_p']:.1f}")
    click.echo(f"→ {out}")


def _plot_auc_sigma(path, rep: dict) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..persist import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for a, r in rep["attacks"].items():
        s = [p["sigma"] for p in r["per_sigma"]]
        ax.errorbar(s, [p["auc"] for p in r["per_sigma"]], fmt="o-", ms=3, capsize=2, label=a,
                    yerr=np.array([[p["auc"] - p["auc_interval"][0] for p in r["per_sigma"]],
                                   [p["auc_interval"][1] - p["auc"] for p in r["per_sigma"]]]))
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="random guess")
    ax.set_xscale("log")
    ax.set_xlabel("σ (model units)")
    ax.set_ylabel("AUC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


COMMANDS = [audit_group]


# ---- the demo's stages -------------------------------------------------------------------------------

#: the audit's share of each demo preset: a tiny model on a few digits at their native 8×8, a few of
#: them repeated ×10 (Carlini et al. §7: duplicated images are the ones extracted), trained long enough
#: for its size to memorise; guidance 2 makes copies likelier (Carlini et al. §5)
AUDIT_PRESETS = {
    "smoke": dict(n=40, duplicate=4, times=10, steps=20, batch=40, n_gen=20, sample_steps=4, guidance=2.0,
                  sigmas="0.1,0.5", repeats=1, max_images=200),
    "quick": dict(n=50, duplicate=5, times=10, steps=300, batch=64, n_gen=200, sample_steps=18, guidance=2.0,
                  sigmas="0.1,0.2,0.5", repeats=1, max_images=1000),
    "full": dict(n=100, duplicate=10, times=10, steps=1500, batch=64, n_gen=1000, sample_steps=18, guidance=2.0,
                 sigmas="0.02,0.05,0.1,0.2,0.5,1.0", repeats=4, max_images=0),
}


def audit_stages(out, preset: str, seed: int = 0) -> list:
    """The demo's audit: ``audit subset`` → ``train`` on the members → ``audit extract`` and
    ``audit membership``, as :class:`~trustdiff.cli.stages.Stage` s writing under OUT/audit
    (section "audit"). Add them with ``stages += audit_stages(out, preset, seed)`` before the
    runtime flags are appended."""
    from .stages import Stage

    if preset not in AUDIT_PRESETS:
        from ..errors import InputError
        raise InputError(f"demo preset: expected one of {', '.join(AUDIT_PRESETS)}, got {preset!r}")
    p = {k: str(v) for k, v in AUDIT_PRESETS[preset].items()}
    d = lambda *parts: str(Path(out, "audit", *parts))                 # noqa: E731
    s = str(seed)
    return [
        Stage("audit-subset", "audit",
              ["audit", "subset", "--data", "digits", "--resolution", "8", "-n", p["n"], "--duplicate", p["duplicate"],
               "--times", p["times"], "--seed", s, "--out", d("subset")],
              d("subset")),
        Stage("audit-train", "audit",
              ["train", "--data", d("subset", SUBSET_MEMBERS), "--resolution", "8", "--size", "tiny", "--steps", p["steps"],
               "--batch", p["batch"], "--lr", "1e-2", "--warmup", "20", "--ema-halflife-kimg", "1",
               "--checkpoint-every", "100000", "--seed", s, "--out", d("model")],
              d("model"), ["audit-subset"]),
        Stage("audit-extract", "audit",
              ["audit", "extract", "--model", d("model"), "-n", p["n_gen"], "--sample-steps", p["sample_steps"],
               "--guidance", p["guidance"], "--seed", "30000", "--out", d("extract")],
              d("extract"), ["audit-subset", "audit-train"]),
        Stage("audit-membership", "audit",
              ["audit", "membership", "--model", d("model"), "--sigmas", p["sigmas"], "--repeats", p["repeats"],
               "--max-images", p["max_images"], "--seed", s, "--out", d("membership")],
              d("membership"), ["audit-subset", "audit-train"]),
    ]


def audit_summary(name: str, m: dict) -> str:
    """One line on what an audit stage measured, from its metrics.json (for stages.stage_summary)."""
    try:
        if name == "audit-subset":
            return (f"{m['members']} members ({m['duplicated']} of them ×{m['times']}), {m['nonmembers']} non-members")
        if name == "audit-train":
            return f"{m['steps']} steps on {m['train_images']} images, last loss {m['last_loss']:.4f}"
        if name == "audit-extract":
            g, h = m["generated"]["normalized"], m["heldout"]["normalized"]
            by = "".join(f"; of the images occurring ×{c}: {v['extracted']}/{v['of']}" for c, v in g.get("by_copies", {}).items())
            return (f"{g['flagged']['k']}/{g['flagged']['n']} generations extracted, {g['distinct_training_images']} distinct "
                    f"training images of {m['distinct_training_images']}{by}; held-out real images flagged "
                    f"{h['flagged']['k']}/{h['flagged']['n']} (the baseline)")
        if name == "audit-membership":
            parts = []
            for a, r in m["attacks"].items():
                b = r["best"]
                parts.append(f"{a} AUC {b['auc']:.3f} (σ={b['sigma']:g}), TPR@1%FPR {b['tpr_at_fpr']['0.01']['tpr']['value']:.2f}")
            return "; ".join(parts) + " (random guess: AUC 0.5)"
    except (KeyError, TypeError, ValueError):
        pass
    return ""

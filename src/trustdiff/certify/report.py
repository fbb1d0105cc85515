"""Certification results on disk: Cohen et al.'s TSV, certified accuracy at chosen radii (with the
n that bounds them), the certified-accuracy-vs-radius curve, and shards merged into one run.

Files in a run folder::

    certify.tsv              idx  label  predict  radius  correct  time   (one row per image)
    metrics.json             certified accuracy at each radius, n, n0, α, σ, the largest radius n allows
    certify-curve.png        certified accuracy vs radius
    certify-shard-I-of-K.tsv / .json   one shard's rows and its settings (merged by merge_shards)
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

from scipy.stats import beta

from ..persist import atomic_write_bytes, atomic_write_json
from ..errors import InputError
from .evaluate import Row
from .smooth import max_radius

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
TSV, METRICS, CURVE = "certify.tsv", "metrics.json", "certify-curve.png"
_HEADER = "\t".join(TSV_COLUMNS)
_SHARD = re.compile(r"^certify-shard-(\d+)-of-(\d+)\.json$")


# --- TSV ---------------------------------------------------------------------------------------

def format_row(row: Row) -> str:
    """One TSV line; the radius is written with ``repr`` so it reads back bit-exactly."""
    return f"{row.idx}\t{row.label}\t{row.predict}\t{row.radius!r}\t{row.correct}\t{row.time:.4f}\n"


def format_tsv(rows) -> str:
    return _HEADER + "\n" + "".join(format_row(r) for r in rows)


def write_tsv(path, rows) -> None:
    """Write rows as Cohen's TSV, atomically."""
    atomic_write_bytes(path, format_tsv(rows).encode())


def read_tsv(path) -> list[Row]:
    """Read a TSV written by :func:`write_tsv` (or Cohen et al.'s code, whose ``time`` column is
    H:MM:SS); a malformed file is one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such TSV file")
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != TSV_COLUMNS:
        raise InputError(f"{path}: expected the header {_HEADER!r}")
    rows = []
    for k, line in enumerate(lines[1:], start=2):
        f = line.split("\t")
        try:
            t = sum(float(p) * 60**i for i, p in enumerate(reversed(f[5].split(":"))))
            rows.append(Row(int(f[0]), int(f[1]), int(f[2]), float(f[3]), int(f[4]), t))
        except (IndexError, ValueError):
            raise InputError(f"{path}: line {k}: expected 6 tab-separated fields idx label predict radius correct time") from None
    return rows


def tsv_appender(path):
    """Start ``path`` with the header and return ``on_row(row)`` that appends one flushed line,
    so a long run leaves its progress on disk (Cohen et al. flush every line too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_HEADER + "\n")

    def on_row(row: Row) -> None:
        with open(path, "a") as f:
            f.write(format_row(row))

    return on_row


# --- certified accuracy ------------------------------------------------------------------------

def certified_accuracy(rows, radii=DEFAULT_RADII) -> dict[float, float]:
    """Certified accuracy at r: the fraction of rows that are correct with radius ≥ r."""
    if not rows:
        raise InputError("certified accuracy: expected at least one row, got none")
    return {float(r): sum(1 for x in rows if x.correct and x.radius >= r) / len(rows) for r in radii}


def accuracy_interval(k: int, N: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a proportion k/N (the test set's sampling error)."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, N - k + 1))
    hi = 1.0 if k == N else float(beta.ppf(1 - a, k + 1, N - k))
    return lo, hi


def summarize(rows, *, sigma: float, n: int, n0: int, alpha: float, radii=DEFAULT_RADII) -> dict:
    """metrics.json's content: certified accuracy at each radius (with a 95% interval over the
    test images), beside the n, n0, α, σ that produced it and the largest radius this n allows."""
    acc = certified_accuracy(rows, radii)
    N = len(rows)
    correct = [r for r in rows if r.correct]
    secs = sum(r.time for r in rows)
    return {
        "num_images": N, "sigma": sigma, "n": n, "n0": n0, "alpha": alpha,
        "max_certifiable_radius": max_radius(sigma, n, alpha),
        "certified_accuracy": {f"{r:g}": a for r, a in acc.items()},
        "certified_accuracy_ci95": {f"{r:g}": list(accuracy_interval(round(a * N), N)) for r, a in acc.items()},
        "abstain_rate": sum(1 for r in rows if r.predict < 0) / N,
        "mean_radius_of_correct": sum(r.radius for r in correct) / len(correct) if correct else 0.0,
        "seconds": secs,
        "noise_samples_per_s": N * (n0 + n) / secs if secs > 0 else None,
    }


def format_table(results: dict[str, dict[float, float]], *, n: int, alpha: float, radii=DEFAULT_RADII) -> str:
    """A plain-text table: one line per configuration, certified accuracy at each radius."""
    name_w = max([len(k) for k in results] + [13])
    head = f"certified accuracy (n = {n}, alpha = {alpha:g})\n" + " " * name_w + "".join(f"  r={r:<5g}" for r in radii)
    lines = [f"{k:<{name_w}}" + "".join(f"  {acc[float(r)]:7.3f}" for r in radii) for k, acc in results.items()]
    return "\n".join([head, *lines])


def plot_curves(path, curves: dict[str, list], *, title: str = "", r_max: float | None = None) -> None:
    """Certified accuracy vs radius, one line per labelled set of rows; PNG written atomically
    (matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = max([r.radius for rows in curves.values() for r in rows] + [0.0])
    r_max = r_max if r_max is not None else max(1.05 * top, 0.1)
    grid = [r_max * i / 400 for i in range(401)]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, rows in curves.items():
        acc = certified_accuracy(rows, grid)
        ax.plot(grid, [acc[r] for r in grid], label=label)
    ax.set_xlabel("radius (L2, [0, 1] pixels)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, r_max)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


# --- a run folder and its shards ---------------------------------------------------------------

def finalize(folder, rows, meta: dict) -> dict:
    """Write ``certify.tsv``, ``metrics.json`` and ``certify-curve.png`` for the rows (sorted by
    idx). ``meta`` must hold sigma, n, n0, alpha, and may hold radii; it is kept in metrics.json."""
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: r.idx)
    radii = tuple(meta.get("radii", DEFAULT_RADII))
    metrics = summarize(rows, sigma=meta["sigma"], n=meta["n"], n0=meta["n0"], alpha=meta["alpha"], radii=radii)
    metrics["settings"] = meta
    if "device" in meta:                           # where the smoothed classifier ran (certify's record)
        metrics["device"] = meta["device"]
    write_tsv(folder / TSV, rows)
    acc = certified_accuracy(rows, radii)
    metrics["table"] = format_table({"smoothed": acc}, n=meta["n"], alpha=meta["alpha"], radii=radii)
    plot_curves(folder / CURVE, {"smoothed": rows},
                title=f"σ = {meta['sigma']:g}, n = {meta['n']}, α = {meta['alpha']:g}, {len(rows)} images")
    atomic_write_json(folder / METRICS, metrics)
    return metrics


def shard_stem(i: int, k: int) -> str:
    return f"certify-shard-{i}-of-{k}"


def write_shard(folder, i: int, k: int, rows, meta: dict) -> None:
    """Shard i of k: its TSV, then its settings JSON (last: a JSON marks a finished shard)."""
    folder = Path(folder)
    write_tsv(folder / f"{shard_stem(i, k)}.tsv", rows)
    atomic_write_json(folder / f"{shard_stem(i, k)}.json", {**meta, "shard": [i, k], "rows": len(rows)})


def merge_shards(folder) -> dict:
    """Merge the finished shards in ``folder`` into certify.tsv / metrics.json / the curve.

    Refuses (one InputError line) when shards of different k are mixed, one is missing, their
    settings differ, or an image appears twice."""
    folder = Path(folder)
    found = {}
    for p in sorted(folder.glob("certify-shard-*-of-*.json")):
        m = _SHARD.match(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise InputError(f"{folder}: no finished shards (certify-shard-I-of-K.json) to merge")
    ks = sorted({k for _, k in found})
    if len(ks) > 1:
        raise InputError(f"{folder}: shards of different counts are mixed (k in {ks})")
    k = ks[0]
    missing = [i for i in range(k) if (i, k) not in found]
    if missing:
        raise InputError(f"{folder}: shard(s) {', '.join(f'{i}/{k}' for i in missing)} not finished; run them, then merge")
    metas, rows, devices = [], [], set()
    for i in range(k):
        meta = json.loads(found[(i, k)].read_text())
        shard_rows = read_tsv(folder / f"{shard_stem(i, k)}.tsv")
        if len(shard_rows) != meta.get("rows"):
            raise InputError(f"{found[(i, k)]}: expected {meta.get('rows')} rows in its TSV, found {len(shard_rows)}")
        devices.add(meta.get("device"))            # each shard may run on its own GPU: not a setting
        metas.append({key: v for key, v in meta.items() if key not in ("shard", "rows", "device")})
        rows += shard_rows
    differing = sorted(key for key in set().union(*metas) if any(m.get(key) != metas[0].get(key) for m in metas))
    if differing:
        raise InputError(f"{folder}: shards were run with different settings ({', '.join(differing)})")
    idx = [r.idx for r in rows]
    if len(set(idx)) != len(idx):
        raise InputError(f"{folder}: an image appears in more than one shard")
    merged = dict(metas[0])
    if devices - {None}:
        merged["device"] = "+".join(sorted(devices - {None}))
    return finalize(folder, rows, merged)

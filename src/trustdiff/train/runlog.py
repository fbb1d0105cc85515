"""The run folder's text records: ``config.json`` and ``metrics.jsonl`` (rank 0 writes them)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..persist import atomic_write_bytes, atomic_write_json

METRICS = "metrics.jsonl"
CONFIG = "config.json"


def finite_or_none(v) -> float | None:
    """A float for JSON, or None for NaN/inf (which strict JSON cannot hold)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one JSON line. A crash mid-line leaves a torn last line, which
    :func:`truncate_metrics` drops on resume."""
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only the lines with ``step <= step`` (and drop torn ones), atomically: the lines after
    a resume point are written again by the resumed run."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_bytes(path, "".join(s + "\n" for s in kept).encode())


def write_run_config(run_dir: Path, train: dict, run: dict) -> None:
    """Set the ``train`` (the TrainConfig) and ``train_run`` (metadata) keys of
    ``run_dir/config.json``, keeping whatever else a caller (e.g. the CLI) put there."""
    path = run_dir / CONFIG
    obj = {}
    if path.exists():
        try:
            obj = json.loads(path.read_text())
        except ValueError:
            obj = {}
        if not isinstance(obj, dict):
            obj = {}
    obj["train"] = train
    obj["train_run"] = run
    atomic_write_json(path, obj)

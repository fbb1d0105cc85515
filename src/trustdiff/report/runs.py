"""Finding the run folders a report is built from.

Every trustdiff command writes ``OUT/config.json`` with a ``"command"`` key (see
``cli/common.dry_run_or_start``) and, when it finishes, ``OUT/metrics.json``. A report reads
nothing else: any folder tree of such runs (a demo run, a GPU-scale run of one capability, or
both) gives the same report. ``demo`` also writes ``stages.json`` with each stage's status, so a
failed stage is shown as failed rather than missing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

#: report sections in order → the commands whose runs they show
SECTIONS = {
    "diffusion": ("Diffusion model", ("train", "generate")),
    "watermark": ("Data watermarking", ("watermark recipe", "watermark attack")),
    "t2i": ("Text-to-image trigger watermarking", ("watermark t2i verify",)),
    "certify": ("Certification", ("train-classifier", "certify")),
    "purify": ("Purification (DiffPure)", ("purify eval",)),
    "advtrain": ("Adversarial training on generated data", ("advtrain eval",)),
    "audit": ("Privacy audit (extraction, membership inference)", ("audit extract", "audit membership", "audit ownership")),
}
SKIP_DIRS = {"checkpoints", "cache", "__pycache__"}


@dataclass
class Run:
    """One finished (or unfinished) command run."""
    path: Path
    command: str
    config: dict
    metrics: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def name(self) -> str:
        return self.path.name


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def find_runs(root) -> list[Run]:
    """Every run folder under ``root`` (``root`` itself included), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"report: expected a folder of trustdiff runs, got {root} (not a folder)")
    runs = []
    stack = [root]
    while stack:
        d = stack.pop()
        cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else None
        if cfg is not None and isinstance(cfg.get("command"), str):
            metrics = _read_json(d / "metrics.json") if (d / "metrics.json").is_file() else None
            runs.append(Run(d, cfg["command"], cfg.get("config", {}), metrics))
        stack += [p for p in sorted(d.iterdir(), reverse=True) if p.is_dir() and p.name not in SKIP_DIRS]
    return sorted(runs, key=lambda r: str(r.path))


def trained_on_audit_subset(r: Run) -> bool:
    """A ``train`` run on the members an ``audit subset`` run wrote: the audit's own model, shown
    with the audit rather than as the report's diffusion model."""
    data = r.config.get("data") if r.command == "train" else None
    if not isinstance(data, str) or not data.endswith(".npz"):
        return False
    cfg = _read_json(Path(data).parent / "config.json") if (Path(data).parent / "config.json").is_file() else None
    return isinstance(cfg, dict) and cfg.get("command") == "audit subset"


def by_section(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs of each section (a run whose command no section shows is left out)."""
    out = {k: [] for k in SECTIONS}
    for r in runs:
        if trained_on_audit_subset(r):
            continue
        for key, (_, commands) in SECTIONS.items():
            if r.command in commands:
                out[key].append(r)
    return out


def read_stages(root) -> dict:
    """``root/stages.json`` as written by ``trustdiff demo`` (empty when absent)."""
    return _read_json(Path(root) / "stages.json") or {}

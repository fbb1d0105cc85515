"""Plumbing every command shares: run folders, the resolved config, --dry-run."""
from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import click

from ..checkpoint import atomic_write_json


def to_jsonable(obj):
    """Dataclasses (nested) → dicts, Paths → str."""
    if is_dataclass(obj):
        return {k: to_jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dry_run_or_start(command: str, config, out: Path, dry_run: bool, write_config: bool = True) -> bool:
    """Print the resolved config and return False for ``--dry-run``; else create the run folder,
    write ``config.json`` (command, config, versions, argv) and a log file, and return True."""
    resolved = {"command": command, "out": str(out), "config": to_jsonable(config)}
    if dry_run:
        click.echo(json.dumps(resolved, indent=2, sort_keys=True))
        return False
    out.mkdir(parents=True, exist_ok=True)
    if write_config and os.environ.get("RANK", "0") == "0":      # under Accelerate, rank 0 writes
        import torch

        from .. import __version__

        resolved |= {"argv": sys.argv, "trustdiff": __version__, "torch": torch.__version__,
                     "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(out / "config.json", resolved)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("trustdiff").addHandler(handler)
    logging.getLogger("trustdiff").setLevel(logging.INFO)
    return True


def dry_run_option(f):
    return click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")(f)

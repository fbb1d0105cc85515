"""The one run-folder policy: what a command may write where, and what a failure leaves behind.

Every command writes one run folder (``--out``): ``config.json`` (the command, its flags, the
resolved configuration, versions), ``metrics.json`` when it finishes, its artifacts and
``log.txt``. The rules, checked before anything is written:

- ``--out`` must be a new path, an empty folder, or — with ``--resume`` — a run of the same
  command. A file, a folder holding another command's run, or any other non-empty folder is a
  one-line error; ``--force`` writes beside what is there (it never deletes a file it did not
  write).
- ``--resume`` needs a run of the same command in ``--out``. Flags not given again take their
  saved values; a flag given again with another value is refused (the difference is printed)
  unless ``--force``.
- A failed command removes the folder it created, or the files it added to a folder that
  existed. A resumable command keeps a folder that holds progress (a checkpoint, a finished
  shard), so that ``--resume`` continues it; an interrupted one (Ctrl-C) always keeps it.

Commands get this through :func:`run_command`; nothing else creates a run folder.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import click
from click.core import ParameterSource

from .errors import InputError, TrustdiffError
from .persist import atomic_write_json

CONFIG = "config.json"
LOG = "log.txt"
METRICS = "metrics.json"
DEMO_MARKER = "stages.json"          # a demo folder: stages.json instead of config.json
_RUN_FLAGS = ("out", "force", "resume", "dry_run")


def to_jsonable(obj):
    """Dataclasses (nested) → dicts, Paths → str, tuples → lists."""
    if is_dataclass(obj):
        return {k: to_jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run_kind(folder: Path) -> str | None:
    """The command whose run ``folder`` holds (``"demo"`` for a demo folder), or None."""
    if (folder / DEMO_MARKER).is_file() and not (folder / CONFIG).exists():
        return "demo"
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("command") if isinstance(cfg, dict) and isinstance(cfg.get("command"), str) else None


def saved_config(folder: Path) -> dict:
    """``folder/config.json`` of a run (one InputError line when there is none)."""
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise InputError(f"--resume: expected a run in {folder}, found no {CONFIG}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"--resume: {folder / CONFIG} is unreadable ({e})") from None
    return cfg


def check_out(out: Path, command: str, *, resume: bool = False, force: bool = False,
              resumable: bool = True) -> bool:
    """Apply the policy to ``out`` before anything is written; True when ``out`` exists.

    Raises InputError (one line) for a file; a folder holding a run, unless it is ``command``'s
    and ``resume``; ``resume`` without such a run; a non-empty folder of other files without
    ``force`` (or with a ``config.json``/``metrics.json`` of its own, which a run would overwrite)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: expected a folder (new or empty), got the file {out}")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"--out: expected a folder path, but {parent} is a file")
    if not out.exists():
        if resume:
            raise InputError(f"--resume: expected a {command!r} run in {out}, but the folder does not exist")
        return False
    kind = run_kind(out)
    empty = not any(out.iterdir())
    if resume:
        if kind != command:
            what = f"a {kind!r} run" if kind else ("an empty folder" if empty else "no trustdiff run")
            raise InputError(f"--resume: expected a {command!r} run in {out}, found {what}")
        return True
    if kind == command:
        hint = "pass --resume to continue it, or choose a new folder" if resumable else "choose a new folder"
        raise InputError(f"--out: {out} already holds a {command!r} run; {hint}")
    if kind is not None:
        raise InputError(f"--out: expected a new or empty folder, but {out} holds a {kind!r} run; choose a new folder")
    if empty:
        return True
    own = [n for n in (CONFIG, METRICS) if (out / n).exists()]
    if own:
        raise InputError(f"--out: {out} holds a {own[0]} that is not a trustdiff run's; choose a new folder")
    if not force:
        raise InputError(f"--out: expected a new or empty folder, but {out} holds other files; choose a new folder "
                         "(or pass --force to write beside them)")
    return True


def _flag(param: click.Parameter) -> str:
    return max(getattr(param, "opts", None) or [param.name], key=len)


def resumed_params(ctx: click.Context, params: dict, saved: dict, *, free=(), force: bool = False):
    """(``params`` with every flag not given on the command line replaced by its saved value, the
    differences): a flag given again with another value is an InputError listing the differences
    unless ``force`` (``free`` names flags that may change, e.g. the device)."""
    params, diffs = dict(params), []
    for p in ctx.command.params:
        if p.name in _RUN_FLAGS or p.name not in saved:
            continue
        source = ctx.get_parameter_source(p.name)
        if source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            params[p.name] = p.type_cast_value(ctx, saved[p.name])
        elif p.name not in free and to_jsonable(params[p.name]) != saved[p.name]:
            diffs.append(f"{_flag(p)} {saved[p.name]!r} → {to_jsonable(params[p.name])!r}")
    if diffs and not force:
        raise InputError("--resume: flags differ from the saved run (" + "; ".join(diffs)
                         + "); give the saved values, or pass --force to continue with the new ones")
    return params, diffs


def _first_missing(path: Path) -> Path:
    """The topmost folder of ``path`` that does not exist yet (what mkdir -p creates)."""
    top = path
    for parent in path.parents:
        if parent.exists():
            break
        top = parent
    return top


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def has_progress(folder: Path) -> bool:
    """Whether a failed resumable run left something ``--resume`` continues from: a training
    checkpoint (in ``folder`` or a sub-run of it) or a finished shard of generated images."""
    from .checkpoint import CHECKPOINTS, latest_checkpoint

    if any(latest_checkpoint(ck.parent) is not None for ck in folder.rglob(CHECKPOINTS) if ck.is_dir()):
        return True
    return any(folder.rglob("images-*.npz")) or any(folder.rglob("certify-shard-*.tsv"))


def _shareable(folder: Path, command: str, glob: str) -> bool:
    """Whether ``folder`` is (the start of) a run of ``command`` that several processes write."""
    if not folder.is_dir():
        return False
    if run_kind(folder) == command:
        return True
    return all(p.name == LOG or (glob and p.match(glob)) for p in folder.iterdir())


class Run:
    """The run folder of one command invocation (made by :func:`run_command`)."""

    def __init__(self, command: str, out: Path, params: dict, *, resume: bool, force: bool, dry_run: bool,
                 resumable: bool, existed: bool, shared: bool = False, changed=(), device=None,
                 precision: str = "fp32"):
        self.command, self.out, self.params = command, out, params
        self.resume, self.force, self.dry_run, self.resumable = resume, force, dry_run, resumable
        self.existed, self.shared, self.changed = existed, shared, list(changed)
        self.device, self.precision = device, precision      # from --device / --precision (runtime.py)
        self.started = False
        self._created_top: Path | None = None
        self._before: set[str] = set()
        self._handler: logging.Handler | None = None

    def start(self, config, *, write_config: bool = True) -> bool:
        """Print the resolved config and return False for ``--dry-run``; else create the run
        folder, write ``config.json`` (unless resuming, or ``write_config`` is False: one of
        several shards) and attach ``log.txt``; return True. Call it only when every argument and
        input has been checked."""
        resolved = {"command": self.command, "out": str(self.out), "params": to_jsonable(self.params),
                    "config": to_jsonable(config), "device": str(self.device), "precision": self.precision}
        if self.dry_run:
            click.echo(json.dumps(resolved, indent=2, sort_keys=True))
            return False
        if self.out.exists():
            self._before = _files(self.out)
        else:
            self._created_top = _first_missing(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = True
        if _rank() != 0:                       # under accelerate, rank 0 writes the folder's files
            return True
        if write_config and not self.resume:
            import torch

            from . import __version__

            resolved |= {"argv": sys.argv, "trustdiff": __version__, "torch": torch.__version__,
                         "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_json(self.out / CONFIG, resolved)
        self._handler = logging.FileHandler(self.out / LOG)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("trustdiff")
        logger.addHandler(self._handler)
        logger.setLevel(logging.INFO)
        if self.changed:                       # --resume --force with other flags: say so, here and in the log
            msg = "resuming with changed flags: " + "; ".join(self.changed)
            click.echo(msg, err=True)
            logger.warning(msg)
        return True

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger("trustdiff").removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def failed(self, error: BaseException) -> None:
        """Undo what this invocation wrote, unless it is progress a resume continues from."""
        self.close()
        if not self.started or _rank() != 0 or self.shared:
            return
        if self.resumable and (isinstance(error, KeyboardInterrupt) or has_progress(self.out)):
            if not self.existed and not isinstance(error, TrustdiffError):   # a user error stays one line
                click.echo(f"{self.out} is kept: continue with --resume", err=True)
            return
        if self._created_top is not None:
            shutil.rmtree(self._created_top, ignore_errors=True)
            return
        for rel in sorted(_files(self.out) - self._before, key=lambda r: -r.count("/")):
            p = self.out / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def run_command(command: str, *, out: str, resumable: bool = False, free: tuple[str, ...] = (), shared=None,
                shared_glob: str = ""):
    """Decorate a click command with ``--out``, ``--force``, ``--dry-run`` (and ``--resume`` when
    ``resumable``) under the run-folder policy; the command receives ``run`` (a :class:`Run`) and
    ``out`` in place of those flags and calls ``run.start(config)`` once its inputs are checked.

    ``free``: flags a resume may change (``--device`` and ``--precision`` always may: they are not
    saved as flags, only recorded in config.json). ``shared(params)``: True when this invocation is one of
    several processes writing one run (e.g. certify shards): a folder holding the same command's
    run, or only files matching ``shared_glob`` (another shard that started first), is then
    accepted, and a failure removes nothing (the others are still writing)."""
    def decorate(f):
        @functools.wraps(f)
        def wrapper(**params):
            ctx = click.get_current_context()
            resume, force, dry_run = params.pop("resume", False), params.pop("force"), params.pop("dry_run")
            from .runtime import check_precision, resolve_device

            device = resolve_device(params.pop("device"))         # an unavailable device fails here
            precision = check_precision(device, params.pop("precision"))
            folder = params["out"]
            existed = folder.exists()
            share = bool(shared and shared(params)) and _shareable(folder, command, shared_glob)
            if _rank() == 0 and not share:
                existed = check_out(folder, command, resume=resume, force=force, resumable=resumable)
            changed = []
            if resume:
                saved = saved_config(folder).get("params")
                if isinstance(saved, dict):
                    params, changed = resumed_params(ctx, params, saved, free=free, force=force)
            run = Run(command, folder, params, resume=resume, force=force, dry_run=dry_run, resumable=resumable,
                      existed=existed, shared=share, changed=changed, device=device, precision=precision)
            try:
                return f(run=run, **params)
            except BaseException as e:
                run.failed(e)
                raise
            finally:
                run.close()

        opts = [click.option("--out", type=click.Path(path_type=Path), default=Path(out), show_default=True,
                             help="The run folder: new or empty (or this command's run, with --resume)."),
                click.option("--force", is_flag=True,
                             help="Write into a non-empty folder (nothing there is deleted), or resume with changed flags."),
                click.option("--dry-run", is_flag=True, help="Print the resolved config and exit."),
                click.option("--device", default=None,
                             help="cpu, cuda or cuda:N (default: this process's GPU — LOCAL_RANK's under "
                                  "accelerate launch — when there is one, else cpu)."),
                click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                             help="bf16: autocast matmuls and convolutions (training and sampling); the loss, "
                                  "EMA and statistics stay fp32.")]
        if resumable:
            opts.append(click.option("--resume", is_flag=True,
                                     help="Continue the run in --out with its saved flags."))
        for o in reversed(opts):
            wrapper = o(wrapper)
        return wrapper
    return decorate

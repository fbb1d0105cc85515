"""Training checkpoints: folders of safetensors + JSON, written atomically, found and loaded back.

A checkpoint folder is built under a temporary name, sealed with its manifest ``COMPLETE`` (the
manifest code and format of :mod:`trustdiff.persist`), and renamed into place, so a crash or
SIGKILL at any instant leaves either the old checkpoint or the new one (:func:`save_checkpoint`,
:func:`latest_checkpoint`, :func:`load_checkpoint`). Optimizer and RNG state travel as tensors +
JSON. The persistence helpers themselves (atomic writes, pickle refusal, weights folders) live in
:mod:`trustdiff.persist`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .persist import (
    bytes_entry,
    cpu_state_dict,
    file_entry,
    fsync_path,
    fsync_tree,
    json_bytes,
    load_safetensors,
    load_strict,
    manifest_json,
    publish,
    read_manifest,
    remove_folder,
    tmp_sibling,
    verify_manifest,
)
from .persist import atomic_write_json

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checkpoint folders
#
#   run_dir/checkpoints/
#     latest.json                {"step": S, "path": "step-0000000S"}, rewritten atomically
#     step-0000000S/
#       <name>/                  one folder per module: diffusers `save_pretrained` layout, or
#                                model.safetensors (+ config.json when the module has a .config)
#       state.safetensors        optimizer tensors, RNG states, ... (flat dict of tensors)
#       state.json               step, data position, optimizer param groups, ... (JSON)
#       COMPLETE                 written last: a manifest {file: {size, sha256}}
#
# A folder is built under `.tmp-step-...`, every file fsynced, then renamed into place, so a
# `step-*` folder is always whole. latest.json is only rewritten after that rename; a crash in
# between leaves it pointing at the previous (still intact) checkpoint.
# ---------------------------------------------------------------------------------------------

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
COMPLETE = "COMPLETE"
MODULE_WEIGHTS = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
FORMAT = "trustdiff-checkpoint/1"

_STEP_DIR = re.compile(r"^step-(\d+)$")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_RESERVED = {STATE_TENSORS, STATE_JSON, COMPLETE}
# weight files that diffusers' save_pretrained writes (single file, or shards + an index)
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"

#: Fault injection for tests: when set, called as ``_fault_hook(event, path)`` at each stage of
#: :func:`save_checkpoint` — "file" after each file or module folder is written into the
#: temporary folder, "renamed" after the folder is in place, "latest" after latest.json, "pruned"
#: at the end. Crash tests set it to SIGKILL the process; it is None in normal use.
_fault_hook: Callable[[str, Path], None] | None = None


def _fault(event: str, path: Path) -> None:
    if _fault_hook is not None:
        _fault_hook(event, path)


def step_dirname(step: int) -> str:
    """Folder name of the checkpoint at ``step``: ``step-00001000``."""
    return f"step-{step:08d}"


def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


# ---- writing --------------------------------------------------------------------------------


class _FolderWriter:
    """Writes files into a fresh folder, fsyncing each and recording its size and SHA-256."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, dict] = {}

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.files[rel] = bytes_entry(data)
        _fault("file", path)

    def adopt(self, sub: Path) -> None:
        """Record (and fsync) every file that a library wrote under ``sub``, e.g. save_pretrained."""
        fsync_tree(sub)
        for path in sorted(p for p in sub.rglob("*") if p.is_file()):
            self.files[path.relative_to(self.root).as_posix()] = file_entry(path)
        _fault("file", sub)


def _is_diffusers(module: nn.Module) -> bool:
    """Duck-typed diffusers ``ModelMixin`` (saved in its own layout, so ``from_pretrained`` opens it)."""
    return callable(getattr(module, "save_pretrained", None)) and hasattr(module, "config")


def _json_config(module: nn.Module) -> dict | None:
    cfg = getattr(module, "config", None)
    if not isinstance(cfg, Mapping):
        return None
    try:
        json.dumps(dict(cfg))
    except (TypeError, ValueError):
        return None
    return dict(cfg)


def _json_bytes(obj, what: str) -> bytes:
    try:
        return json_bytes(obj)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what} is not JSON-able: {e}") from None


def _check_module_names(modules: Mapping[str, nn.Module]) -> None:
    for name in modules:
        if not _MODULE_NAME.match(name) or name in _RESERVED:
            raise CheckpointError(f"module name {name!r} cannot name a checkpoint subfolder")


def _write_folder(root: Path, step: int, modules, tensors, state) -> None:
    """Fill ``root`` with the checkpoint files; ``COMPLETE`` (the manifest) goes last."""
    from safetensors.torch import save as st_save

    state_bytes = _json_bytes(state, "checkpoint state")  # fail before writing anything
    w = _FolderWriter(root)
    for name, module in modules.items():
        if _is_diffusers(module):
            module.save_pretrained(root / name, safe_serialization=True)
            w.adopt(root / name)
        else:
            w.put(f"{name}/{MODULE_WEIGHTS}", st_save(cpu_state_dict(module.state_dict())))
            cfg = _json_config(module)
            if cfg is not None:
                w.put(f"{name}/config.json", _json_bytes(cfg, f"{name}.config"))
            fsync_path(root / name)
    w.put(STATE_TENSORS, st_save(cpu_state_dict(tensors)))
    w.put(STATE_JSON, state_bytes)
    w.put(COMPLETE, manifest_json(w.files, FORMAT, step=step))
    fsync_path(root)


def _prune(ckdir: Path, *, step: int, keep: int) -> None:
    """Remove stale temporaries, all but the ``keep`` newest checkpoints up to ``step``, and any
    checkpoint newer than ``step`` (an abandoned timeline: training resumed from an older one, so
    a fallback scan must not prefer it over the one just written)."""
    for p in list(ckdir.iterdir()):
        if p.name.startswith(".tmp-"):
            remove_folder(p)
        elif p.name.startswith(f".{LATEST}.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)  # left by an atomic_write_json that was killed
    steps = sorted(((s, p) for p in ckdir.iterdir() if p.is_dir() and (s := _step_of(p)) is not None), reverse=True)
    older = [p for s, p in steps if s <= step]
    for s, p in steps:
        if s > step:
            remove_folder(p)
    for p in older[keep:]:
        remove_folder(p)
    fsync_path(ckdir)


def save_checkpoint(
    run_dir,
    step: int,
    *,
    modules: Mapping[str, nn.Module],
    tensors: Mapping[str, torch.Tensor],
    state: dict,
    keep: int = 2,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step:08d}`` atomically and point ``latest.json`` at it.

    Args:
        modules: name → module; each saved under a subfolder of that name (diffusers models via
            ``save_pretrained(..., safe_serialization=True)``, others as ``model.safetensors`` +
            ``config.json`` when they have a JSON-able ``.config`` dict).
        tensors: flat name → tensor dict (optimizer state, RNG states, ...), ``state.safetensors``.
        state: JSON-able dict, ``state.json``.
        keep: how many complete checkpoints (this one included) to keep.

    Returns:
        The checkpoint folder. A crash at any point leaves ``latest_checkpoint`` returning either
        this checkpoint or the previous one, both whole.
    """
    if keep < 1:
        raise CheckpointError(f"keep: expected at least 1 checkpoint to keep, got {keep}")
    _check_module_names(modules)
    ckdir = Path(run_dir) / CHECKPOINTS
    ckdir.mkdir(parents=True, exist_ok=True)
    name = step_dirname(step)
    final = ckdir / name
    tmp = tmp_sibling(final)
    try:
        _write_folder(tmp, step, modules, tensors, state)
        publish(tmp, final)  # replaces the same step saved before (e.g. after a resume from an older one)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fault("renamed", final)
    atomic_write_json(ckdir / LATEST, {"step": step, "path": name})
    _fault("latest", ckdir / LATEST)
    _prune(ckdir, step=step, keep=keep)
    _fault("pruned", ckdir)
    return final


# ---- finding and reading --------------------------------------------------------------------


def _read_manifest(path: Path) -> dict:
    manifest = read_manifest(path, name=COMPLETE)
    if manifest is None:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {COMPLETE} marker): its write was interrupted")
    return manifest


def _verify_files(path: Path, manifest: dict, *, hashes: bool) -> None:
    """Check each listed file's size (cheap) and, with ``hashes``, its SHA-256."""
    verify_manifest(path, manifest, name=COMPLETE, hashes=hashes, what="checkpoint file")


def _usable(path: Path) -> bool:
    """A cheap test that a checkpoint folder is whole: manifest present, every file its size."""
    try:
        _verify_files(path, _read_manifest(path), hashes=False)
        json.loads((path / STATE_JSON).read_text())
    except (CheckpointError, OSError, ValueError):
        return False
    return True


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint to resume from, or None when there is none.

    Follows ``latest.json``; if that is missing, corrupt, or points at a folder that is not whole,
    falls back to the newest ``step-*`` folder that is (logging a warning).
    """
    ckdir = Path(run_dir) / CHECKPOINTS
    if not ckdir.is_dir():
        return None
    pointer = ckdir / LATEST
    if pointer.exists():
        try:
            info = json.loads(pointer.read_text())
            name = info["path"]
            if not isinstance(name, str) or not _STEP_DIR.match(name):
                raise ValueError(f"bad path {name!r}")
            if _usable(ckdir / name):
                return ckdir / name
            log.warning("%s points at %s, which is not a whole checkpoint; looking for an older one", pointer, name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s is unreadable (%s); looking for the newest whole checkpoint", pointer, e)
    candidates = sorted(
        ((s, p) for p in ckdir.iterdir() if p.is_dir() and (s := _step_of(p)) is not None), reverse=True
    )
    for _, p in candidates:
        if _usable(p):
            return p
    return None


def _module_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict stored for module ``name`` (our layout, or diffusers' single/sharded)."""
    sub = path / name
    if not sub.is_dir():
        held = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise CheckpointError(f"checkpoint {path} has no module {name!r} (it holds {held})")
    for single in (MODULE_WEIGHTS, _DIFFUSERS_WEIGHTS):
        if (sub / single).is_file():
            return load_safetensors(sub / single)
    if (sub / _DIFFUSERS_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((sub / _DIFFUSERS_INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"checkpoint file {sub / _DIFFUSERS_INDEX} is corrupted: {e}") from None
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(load_safetensors(sub / shard))
        return sd
    raise CheckpointError(f"checkpoint {path}: no safetensors weights for {name!r} in {sub}")


def load_checkpoint(path, modules: Mapping[str, nn.Module], *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint folder written by :func:`save_checkpoint`.

    Args:
        path: the ``step-*`` folder (e.g. from :func:`latest_checkpoint`).
        modules: name → module to load into, in place, with ``strict=True``.
        verify: check every file against the SHA-256 in the ``COMPLETE`` manifest first.

    Returns:
        ``(tensors, state)``: the flat tensor dict (on the CPU) and the JSON state.

    Raises:
        CheckpointError: incomplete folder, missing/truncated/corrupted file (named), or a module
            of another architecture (missing/unexpected keys or shapes, one line).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest = _read_manifest(path)
    _verify_files(path, manifest, hashes=verify)
    for name, module in modules.items():
        load_strict(module, _module_state_dict(path, name), where=path, name=name)
    tensors = load_safetensors(path / STATE_TENSORS)
    try:
        state = json.loads((path / STATE_JSON).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {path / STATE_JSON} is corrupted: {e}") from None
    return tensors, state


# ---- optimizer and RNG state as tensors + JSON ----------------------------------------------


def flatten_optimizer_state(sd: dict, prefix: str = "optimizer") -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` → (tensors, meta) that fit safetensors + JSON.

    Tensors are keyed ``{prefix}.{param_id}.{name}`` (e.g. ``optimizer.3.exp_avg``); non-tensor
    per-parameter values and the ``param_groups`` go into the JSON ``meta``.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, pstate in sd["state"].items():
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{int(pid)}.{k}"] = v
            else:
                scalars.setdefault(str(int(pid)), {})[k] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: dict, prefix: str = "optimizer") -> dict:
    """Inverse of :func:`flatten_optimizer_state`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    head = prefix + "."
    for key, v in tensors.items():
        if key.startswith(head):
            pid, name = key[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:  # JSON turned tuples into lists; optimizers compare/unpack these as tuples
        for k, v in g.items():
            if k != "params" and isinstance(v, list):
                g[k] = tuple(v)
    return {"state": state, "param_groups": groups}


def rng_state_tensors(generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
    """RNG states as uint8 tensors: ``torch`` (the global CPU RNG, which dropout on the CPU uses),
    ``cuda`` (the global RNG of ``device`` when it is a CUDA device), ``generator``."""
    out = {"torch": torch.get_rng_state()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    if generator is not None:
        out["generator"] = generator.get_state()
    return out


def set_rng_state_tensors(states: Mapping[str, torch.Tensor], generator: torch.Generator | None = None, device=None) -> None:
    """Inverse of :func:`rng_state_tensors`: restore every state present."""
    torch.set_rng_state(states["torch"].to("cpu", torch.uint8))
    device = torch.device(device) if device is not None else None
    if "cuda" in states and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].to("cpu", torch.uint8), device)
    if generator is not None and "generator" in states:
        generator.set_state(states["generator"].to("cpu", torch.uint8))

"""Persistence on the ground floor: atomic writes, atomic folders, manifests, safe weight loading.

Every file is written to a temporary name in the same folder, fsynced, then renamed over the
target (``os.replace`` is atomic on POSIX), and the folder is fsynced, so a crash or SIGKILL at
any instant leaves either the old file or the new one — never a torn one.

A folder trustdiff exports is built in a temporary sibling, sealed with a manifest
(:data:`MANIFEST`, written last: ``{"format", "files": {relative path: {"size", "sha256"}}}``),
fsynced, and renamed into place (:func:`atomic_folder`). Loaders check every file against the
manifest first (:func:`verify_folder`). Pickles can run code when loaded: they are refused unless
the caller passes ``allow_pickle=True``.

Imports only the standard library, torch, safetensors and :mod:`trustdiff.errors`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from .errors import CheckpointError, UnsafeFileError

log = logging.getLogger(__name__)

MANIFEST = "trustdiff-manifest.json"
MANIFEST_FORMAT = "trustdiff-manifest/1"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")


# ---- atomic files -----------------------------------------------------------------------------


def fsync_path(path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root) -> None:
    """fsync every file and folder under ``root``, ``root`` last."""
    root = Path(root)
    for p in sorted(root.rglob("*")):
        if not p.is_symlink():
            fsync_path(p)
    fsync_path(root)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())       # mkstemp makes 0600; a run's files get the user's umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def json_bytes(obj) -> bytes:
    """``obj`` as indented, key-sorted JSON with a final newline (TypeError if not JSON-able)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, json_bytes(obj))


# ---- atomic folders ---------------------------------------------------------------------------


def tmp_sibling(out) -> Path:
    """A fresh empty folder ``.tmp-<name>-<pid>-<random>`` beside ``out`` (same file system)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)  # not mkdtemp (0700): the folder gets the user's umask
    return tmp


def remove_folder(path) -> None:
    """Delete a folder so that a crash midway never leaves it half deleted under its own name:
    rename it to a ``.tmp-del-*`` sibling first (atomic), then remove that."""
    path = Path(path)
    if not path.name.startswith(".tmp-"):
        doomed = path.parent / f".tmp-del-{path.name}-{secrets.token_hex(4)}"
        os.rename(path, doomed)
        path = doomed
    shutil.rmtree(path, ignore_errors=True)


def publish(tmp, out) -> Path:
    """Rename the finished folder ``tmp`` to ``out`` (fsynced first). An older ``out`` is renamed
    aside first and deleted last, so ``out`` is never a mix: it is the old folder, then (after an
    instant without it; a crash there leaves both whole under ``.tmp-*`` names) the new one."""
    tmp, out = Path(tmp), Path(out)
    fsync_tree(tmp)
    doomed = None
    if out.exists() or out.is_symlink():
        doomed = out.parent / f".tmp-del-{out.name}-{secrets.token_hex(4)}"
        os.rename(out, doomed)
    try:
        os.rename(tmp, out)
    except BaseException:
        if doomed is not None:
            os.rename(doomed, out)
        raise
    fsync_path(out.parent)
    if doomed is not None:
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            doomed.unlink(missing_ok=True)
    return out


@contextmanager
def atomic_folder(out) -> Iterator[Path]:
    """Build a folder atomically: ``with atomic_folder(out) as tmp:`` write into ``tmp``; on a
    clean exit the manifest is written last and ``tmp`` is published as ``out``
    (:func:`publish`). On any error ``tmp`` is removed and an existing ``out`` is left as it was."""
    tmp = tmp_sibling(out)
    try:
        yield tmp
        write_manifest(tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- hashes and manifests ---------------------------------------------------------------------


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bytes_entry(data: bytes) -> dict:
    """``{"size", "sha256"}`` of bytes about to be written: their manifest entry."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_entry(path) -> dict:
    """``{"size", "sha256"}`` of one file: its manifest entry."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _listed(root: Path, name: str) -> list[Path]:
    """The files a manifest covers: every file under ``root`` except the manifest ``name`` and
    hidden files (``.*``, e.g. a file browser's)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != name
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def folder_files(root) -> dict[str, dict]:
    """relative POSIX path → :func:`file_entry` of every file :data:`MANIFEST` covers."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): file_entry(p) for p in _listed(root, MANIFEST)}


def manifest_json(files: Mapping[str, dict], fmt: str = MANIFEST_FORMAT, **fields) -> bytes:
    """The manifest bytes: ``{"format": fmt, **fields, "files": files}`` as JSON."""
    return json_bytes({"format": fmt, **fields, "files": dict(files)})


def write_manifest(folder, *, name: str = MANIFEST, fmt: str = MANIFEST_FORMAT, **fields) -> dict:
    """Hash every file in ``folder`` and write the manifest ``folder/name`` atomically (last).
    Returns the manifest."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_entry(p) for p in _listed(folder, name)}
    data = manifest_json(files, fmt, **fields)
    atomic_write_bytes(folder / name, data)
    return json.loads(data)


def read_manifest(folder, *, name: str = MANIFEST) -> dict | None:
    """The manifest ``folder/name``, or None when there is none; CheckpointError if unreadable."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not all(
                isinstance(m, dict) and isinstance(m.get("size"), int) and isinstance(m.get("sha256"), str)
                for m in files.values()):
            raise TypeError("files is not a mapping of {size, sha256}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    return manifest


def verify_manifest(folder, manifest: dict, *, name: str = MANIFEST, hashes: bool = True,
                    what: str = "file") -> None:
    """Check ``folder`` against ``manifest``: every listed file present with its size (cheap) and,
    with ``hashes``, its SHA-256; no unlisted file. The first mismatch is one CheckpointError line
    naming the file (``what`` starts the message, e.g. "checkpoint file")."""
    folder = Path(folder)
    for rel, meta in manifest["files"].items():
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
            raise CheckpointError(f"{folder / name}: lists {rel!r}, a path outside the folder")
        f = folder / rel
        if not f.is_file():
            raise CheckpointError(f"{what} {f} is missing")
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(f"{what} {f} is truncated or altered: {size} bytes, expected {meta['size']}")
        if hashes and sha256_file(f) != meta["sha256"]:
            raise CheckpointError(f"{what} {f} is corrupted: its SHA-256 does not match the manifest {name}")
    for p in _listed(folder, name):
        if p.relative_to(folder).as_posix() not in manifest["files"]:
            raise CheckpointError(f"{what} {p} is not in the manifest {name}: it was added after the folder was written")


def verify_folder(folder, *, what: str = "trustdiff folder") -> dict:
    """Read ``folder``'s :data:`MANIFEST` and check every file against it (size and SHA-256).
    A missing manifest is an error naming the folder. Returns the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise CheckpointError(f"{what} {folder} has no {MANIFEST}: its export was interrupted, it was altered, "
                              "or an older trustdiff wrote it (export it again)")
    verify_manifest(folder, manifest)
    return manifest


# ---- loading weights, pickles refused -----------------------------------------------------------


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file → name → tensor dict on the CPU; one CheckpointError line if not."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"weights file {path} is corrupted or truncated: {e}") from None


def check_pickle(path, allow_pickle: bool) -> None:
    """The pickle policy for ``path``: UnsafeFileError unless ``allow_pickle``; else a warning."""
    if not allow_pickle:
        raise UnsafeFileError(
            f"refusing to load pickle file {path}: pickles can run code; convert it to safetensors "
            "or pass --unsafe-allow-pickle"
        )
    log.warning("%s: loading a pickle, which can run code, because allow_pickle=True was given", path)


def _tensor_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """A loaded pickle → its state dict (a Lightning-style ``{"state_dict": ...}`` is unwrapped)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise CheckpointError(f"weights file {path} holds no state dict of tensors (got {type(obj).__name__})")
    return tensors


def load_state_dict_file(path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a weights file into a name → tensor dict on the CPU.

    ``.safetensors`` is read with safetensors. Pickle files (``.pt .pth .pkl .ckpt .bin``) can run
    arbitrary code when loaded, so they are refused unless ``allow_pickle=True``; then
    ``torch.load(weights_only=True)`` is tried first, and only if that fails (the file holds
    objects other than tensors and containers) is the full unpickler used, with a warning.

    Raises:
        UnsafeFileError: a pickle file without ``allow_pickle``.
        CheckpointError: missing, unknown format, corrupted, or no tensors inside.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_safetensors(path)
    if suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"weights file {path}: unknown format {suffix or '(no suffix)'!r}; expected .safetensors")
    if not allow_pickle:
        check_pickle(path, False)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        log.warning(
            "%s does not load with weights_only=True (%s); loading it with the full unpickler, "
            "which can run code, because allow_pickle=True was given",
            path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
        )
        try:
            # the one deliberate unsafe load: the user opted in with allow_pickle / --unsafe-allow-pickle
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise CheckpointError(f"weights file {path} is corrupted or not a torch pickle: {e2}") from None
    return _tensor_dict(obj, path)


def _pickles(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def use_safetensors(folder, *, allow_pickle: bool = False) -> bool:
    """What to pass as ``use_safetensors`` to a diffusers/transformers ``from_pretrained`` of
    ``folder``: True when it holds safetensors weights (or none: the loader then says so); when
    its weights are only a pickle, UnsafeFileError unless ``allow_pickle`` (then False, warned)."""
    folder = Path(folder)
    if not folder.is_dir() or any(p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json")
                                  for p in folder.iterdir()):
        return True
    pickles = _pickles(folder)
    if not pickles:
        return True
    check_pickle(pickles[0], allow_pickle)
    return False


def _short(keys, n: int = 3) -> str:
    keys = sorted(keys)
    more = f", … +{len(keys) - n} more" if len(keys) > n else ""
    return "[" + ", ".join(repr(k) for k in keys[:n]) + more + "]"


def state_dict_mismatch(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> str | None:
    """How ``sd`` differs from a module's state dict ``own`` (missing and unexpected keys, the
    first shape mismatch), as one phrase; None when the names and shapes agree."""
    missing, unexpected = own.keys() - sd.keys(), sd.keys() - own.keys()
    shapes = sorted(k for k in own.keys() & sd.keys() if tuple(own[k].shape) != tuple(sd[k].shape))
    parts = []
    if missing or unexpected:
        parts.append(f"missing keys {_short(missing)}, unexpected {_short(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es), e.g. {k!r}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
    return "; ".join(parts) or None


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], *, where, name: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)``, with any mismatch reported as one CheckpointError line
    (``assign``: take the tensors themselves, e.g. into a module built on the meta device)."""
    problem = state_dict_mismatch(module.state_dict(), sd)
    if problem:
        raise CheckpointError(f"checkpoint {where} holds a different architecture for {name!r}: {problem}")
    try:
        module.load_state_dict(sd, strict=True, assign=assign)
    except RuntimeError as e:  # anything the key/shape check above did not foresee
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {where} does not load into {name!r}: {first}") from None


def cpu_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies: safetensors refuses shared storage (tied weights), and a
    copy also frees the caller to keep training while the bytes are written."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}


# ---- a saved network as a folder: model.safetensors + config.json + manifest --------------------

FOLDER_WEIGHTS, FOLDER_CONFIG = "model.safetensors", "config.json"


def save_weights_folder(folder, module: nn.Module, config: dict) -> Path:
    """Write ``folder``: ``model.safetensors`` (the state dict, on the CPU), ``config.json`` and
    the manifest, built in a temporary sibling and renamed into place (see :func:`atomic_folder`)."""
    from safetensors.torch import save

    folder = Path(folder)
    data, cfg = save(cpu_state_dict(module.state_dict())), json_bytes(config)  # fail before writing
    with atomic_folder(folder) as tmp:
        (tmp / FOLDER_WEIGHTS).write_bytes(data)
        (tmp / FOLDER_CONFIG).write_bytes(cfg)
    return folder


def resolve_weights_folder(folder, inner: str) -> Path:
    """``folder``, or ``folder/inner`` when ``folder`` is the run folder that holds it."""
    folder = Path(folder)
    if not (folder / FOLDER_WEIGHTS).is_file() and (folder / inner / FOLDER_CONFIG).is_file():
        folder = folder / inner
    return folder


def read_folder_config(folder, fmt: str, what: str) -> dict:
    """The config.json of a weights folder, after every file is checked against the manifest, and
    checked to be JSON of format ``fmt``; one CheckpointError line otherwise (``what`` names the
    folder kind in the message)."""
    folder = Path(folder)
    path = folder / FOLDER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: expected {what} (config.json + {FOLDER_WEIGHTS})")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:      # a folder of another kind: say so first
        raise CheckpointError(f"{path}: expected format {fmt!r} ({what})")
    verify_folder(folder)
    return cfg


def open_weights_folder(folder, fmt: str, what: str, *, allow_pickle: bool = False) -> tuple[dict, dict]:
    """(config, state dict) of a weights folder: a lone pickle in place of ``model.safetensors``
    is refused unless ``allow_pickle``, then every file is checked against the manifest."""
    folder = Path(folder)
    weights = folder / FOLDER_WEIGHTS
    if not weights.is_file() and (folder / FOLDER_CONFIG).is_file() and (pickles := _pickles(folder)):
        check_pickle(pickles[0], allow_pickle)
        weights = pickles[0]
    cfg = read_folder_config(folder, fmt, what)
    return cfg, load_state_dict_file(weights, allow_pickle=allow_pickle)

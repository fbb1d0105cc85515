"""EDM's network pickles (NVlabs/edm, ``edm-*.pkl``), read without running anything from the file.

An EDM snapshot is a pickle of ``{'ema': net, 'loss_fn': …, 'augment_pipe': …, 'dataset_kwargs': …}``
(its ``training_loop.py``). Its networks are *persistent classes*: each pickles as
``_reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src, class_name, state}``,
and EDM's own loader ``exec``\\ s ``module_src`` to rebuild the class. Here :class:`EDMUnpickler`
resolves only a short list of names (:data:`ALLOWED`): that reconstructor is replaced by one that
keeps ``meta`` in an inert :class:`PersistentStub` (``module_src`` is only hashed), torch's tensor
and storage rebuilders by checked equivalents (storages come through
``torch.load(weights_only=True)``), torch's module containers by inert stubs, numpy scalars by
their numbers. Any other name is refused with one :class:`~trustdiff.errors.UnsafeFileError` line
before anything is called. The network is then rebuilt in trustdiff's code
(:mod:`trustdiff.nets.edm`) from the recorded class name and constructor arguments, and the
tensors found in the stubs load into it strictly (names and shapes checked).
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import io
import math
import pickle
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import CheckpointError, UnsafeFileError
from ..persist import state_dict_mismatch
from ..nets.edm import MODELS, PRECONDS

#: the classes EDM's networks are made of (``training/networks.py``); any other layer is refused
EDM_LAYERS = frozenset({"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding"})
#: torch module classes that may appear (as containers) inside a network; recorded, never built
TORCH_MODULES = frozenset({
    ("torch.nn.modules.container", "ModuleDict"), ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.container", "Sequential"), ("torch.nn.modules.dropout", "Dropout"),
    ("torch.nn.modules.activation", "SiLU"), ("torch.nn.modules.linear", "Identity"),
})
_TORCH_DTYPES = {n: getattr(torch, n) for n in (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "complex64", "complex128",
    "uint8", "int8", "int16", "int32", "int64", "short", "int", "long", "bool")}
_NUMPY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
_MAX_DEPTH = 64
_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


# --- inert stand-ins -----------------------------------------------------------------------------


class PersistentStub:
    """What ``_reconstruct_persistent_obj(meta)`` was asked to build, recorded and never built:
    the class name, the persistence version, the SHA-256 of the embedded source and the object's
    state (``_parameters``, ``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``, …)."""

    def __init__(self, meta):
        if not isinstance(meta, dict):
            raise CheckpointError(f"persistent object: expected a meta dict, got {type(meta).__name__}")
        self.kind = meta.get("type")
        self.class_name = meta.get("class_name")
        self.version = meta.get("version")
        src = meta.get("module_src")
        self.module_sha256 = hashlib.sha256(src.encode("utf-8", "replace")).hexdigest() if isinstance(src, str) else None
        self.state = meta.get("state")

    def __repr__(self):
        return f"PersistentStub({self.class_name!r})"


class ModuleStub:
    """A torch module container (ModuleDict, …) as pickled: its class name and ``__dict__``."""

    torch_class = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.state = None
        return obj

    def __setstate__(self, state):
        self.state = state

    @property
    def class_name(self):
        return self.torch_class.rsplit(".", 1)[-1]

    def __repr__(self):
        return f"ModuleStub({self.torch_class!r})"


_STUB_CLASSES: dict[tuple[str, str], type] = {}


def _module_stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUB_CLASSES:
        _STUB_CLASSES[key] = type(f"{name}Stub", (ModuleStub,), {"torch_class": f"{module}.{name}"})
    return _STUB_CLASSES[key]


class _EasyDict(dict):
    """dnnlib's EasyDict, as a plain dict."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


class _NumpyDtype:
    """numpy's dtype as pickled (``numpy.dtype('f8', False, True)`` then its state): a checked name."""

    def __init__(self, name, align=False, copy=False):
        if not isinstance(name, str) or name not in _NUMPY_DTYPES:
            raise CheckpointError(f"numpy dtype {name!r}: only plain numbers are read from an EDM pickle")
        self.name, self.byteorder = name, "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]


def _numpy_scalar(dtype, data=None):
    """numpy's ``scalar(dtype, bytes)`` → the Python number (EDM stores e.g. np.sqrt(0.5) in its kwargs)."""
    import numpy as np

    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise CheckpointError("numpy scalar: expected a numeric dtype and its bytes")
    dt = np.dtype(dtype.name).newbyteorder(dtype.byteorder if dtype.byteorder != "|" else "=")
    if len(data) != dt.itemsize:
        raise CheckpointError(f"numpy scalar: {len(data)} bytes for a {dtype.name}")
    return np.frombuffer(data, dtype=dt)[0].item()


def _load_from_bytes(data):
    """torch.storage._load_from_bytes, with the storage read by ``torch.load(weights_only=True)``."""
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("tensor storage: expected bytes")
    storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"tensor storage: expected a storage, got {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    """torch._utils._rebuild_tensor_v2 for a checked view of a storage (no hooks, within bounds)."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"tensor: expected a storage, got {type(storage).__name__}")
    size, stride = tuple(size), tuple(stride)
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(i, int) and i >= 0 for i in ints) or len(size) != len(stride):
        raise CheckpointError(f"tensor: bad view offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    hooks = rest[1] if len(rest) > 1 else None
    if hooks:
        raise CheckpointError("tensor: a pickled tensor carries backward hooks")
    n = storage._size() if isinstance(storage, torch.storage.TypedStorage) else storage.nbytes()
    if all(size) and storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) >= n:
        raise CheckpointError(f"tensor: view of size {size} at offset {storage_offset} exceeds its storage of {n}")
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    """torch._utils._rebuild_parameter(_with_state): the tensor (a parameter's value is all we read)."""
    if not torch.is_tensor(data):
        raise CheckpointError(f"parameter: expected a tensor, got {type(data).__name__}")
    return data.detach()


class _Object:
    """``builtins.object`` as the base class named by copyreg._reconstructor (never instantiated)."""


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor (pickle protocols 0 and 1) for the module stubs only."""
    if not (isinstance(cls, type) and issubclass(cls, ModuleStub)) or base is not _Object or state is not None:
        raise UnsafeFileError(f"copyreg._reconstructor: refused for {getattr(cls, '__name__', cls)!r}")
    return cls.__new__(cls)


def _latin1(text, encoding="latin1"):
    """_codecs.encode(text, 'latin1'): how pickle protocol 2 writes bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("bytes: expected a latin1 string")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:
        raise CheckpointError("bytes(): only the empty bytes object is read")
    return b""


def _set(items=()):
    return set(items)


def _frozenset(items=()):
    return frozenset(items)


def _device(*args):
    return torch.device(*args)


#: (module, name) → what the restricted unpickler returns for it
ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentStub,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "device"): _device,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): _Object,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytes"): _empty_bytes,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
}


class EDMUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only :data:`ALLOWED`, torch's module containers (as stubs)
    and torch dtypes; every other global is refused with one UnsafeFileError line."""

    def __init__(self, file, *, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        module = _PY2_NAMES.get(module, module)             # pickle protocols 0-2 write Python 2's names
        key = (module, name)
        if key in ALLOWED:
            return ALLOWED[key]
        if key in TORCH_MODULES:
            return _module_stub_class(module, name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        raise UnsafeFileError(f"{self.source}: refused to load {module}.{name} (an EDM network pickle "
                              "needs only tensors and EDM's persistent classes; nothing from the file is run)")

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.source}: not a readable EDM network pickle "
                              "(it has persistent ids, as torch.save writes)")


def read_edm_pickle(path):
    """Unpickle ``path`` with :class:`EDMUnpickler`: the top-level object, its networks as
    :class:`PersistentStub` trees. Nothing from the file is imported or run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: expected an EDM network pickle (.pkl), but it does not exist")
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise CheckpointError(f"{path}: not a readable EDM network pickle (a zip archive, as torch.save writes)")
            f.seek(0)
            return EDMUnpickler(f, source=str(path)).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (a malformed file can fail anywhere inside pickle)
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        what = type(e).__name__ + (f": {msg}" if msg else "")
        raise CheckpointError(f"{path}: not a readable EDM network pickle ({what})") from None


# --- rebuilding the network ----------------------------------------------------------------------


def _plain(value, where: str, depth: int = 0):
    """Constructor arguments as plain Python data (dict/list/tuple/str/number/bool/None)."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"{where}: nested deeper than {_MAX_DEPTH}")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CheckpointError(f"{where}: expected string keys")
        return {k: _plain(v, where, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where, depth + 1) for v in value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise CheckpointError(f"{where}: unexpected {type(value).__name__} in the constructor arguments")


def _state(stub, what: str) -> dict:
    state = stub.state
    if not isinstance(state, dict):
        raise CheckpointError(f"{what}: expected its state as a dict, got {type(state).__name__}")
    return state


def collect_tensors(stub, where: str) -> dict[str, torch.Tensor]:
    """The persistent parameters and buffers of a stub tree, under state_dict names
    (``model.enc.32x32_conv.weight``, …), following ``_modules``; checks the layer classes."""
    out: dict[str, torch.Tensor] = {}

    def walk(node, prefix: str, depth: int):
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"{where}: modules nested deeper than {_MAX_DEPTH}")
        name = node.class_name
        if isinstance(node, PersistentStub) and depth and name not in EDM_LAYERS | set(MODELS):
            raise CheckpointError(f"{where}: layer {prefix.rstrip('.') or '<root>'} is a {name!r}, "
                                  "which EDM's networks do not have")
        state = _state(node, f"{where}: {prefix.rstrip('.') or name}")
        skip = state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for key, t in (state.get(group) or {}).items():
                if t is None or (group == "_buffers" and key in skip):
                    continue
                if not torch.is_tensor(t):
                    raise CheckpointError(f"{where}: {prefix}{key} is a {type(t).__name__}, expected a tensor")
                out[prefix + key] = t
        for key, child in (state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, (PersistentStub, ModuleStub)):
                raise CheckpointError(f"{where}: module {prefix}{key} is a {type(child).__name__}")
            walk(child, f"{prefix}{key}.", depth + 1)

    walk(stub, "", 0)
    return out


def _find_network(obj, where: str) -> PersistentStub:
    if isinstance(obj, dict):
        for key in ("ema", "net"):
            if obj.get(key) is not None:
                return obj[key]
        raise CheckpointError(f"{where}: expected EDM's snapshot dict with 'ema' (or 'net'), "
                              f"got keys {sorted(map(str, obj))}")
    return obj


def rebuild(stub, where: str = "EDM pickle"):
    """A trustdiff preconditioner from a network :class:`PersistentStub`: class and arguments from
    the stub, tensors from its tree (strict); eval mode, requires_grad False, fp32, on the CPU."""
    supported = f"{', '.join(PRECONDS)} around {' or '.join(MODELS)}"
    if not isinstance(stub, PersistentStub):
        raise CheckpointError(f"{where}: expected an EDM network ({supported}), got {type(stub).__name__}")
    if stub.kind != "class" or stub.class_name not in PRECONDS:
        raise CheckpointError(f"{where}: the network is a {stub.class_name!r}; trustdiff reads EDM's {supported}")
    state = _state(stub, f"{where}: {stub.class_name}")
    inner = (state.get("_modules") or {}).get("model")
    if not isinstance(inner, PersistentStub) or inner.class_name not in MODELS:
        got = inner.class_name if isinstance(inner, (PersistentStub, ModuleStub)) else type(inner).__name__
        raise CheckpointError(f"{where}: {stub.class_name}.model is a {got!r}; trustdiff reads EDM's {supported}")
    args = _plain(state.get("_init_args") or (), f"{where}: {stub.class_name} arguments")
    kwargs = _plain(state.get("_init_kwargs") or {}, f"{where}: {stub.class_name} arguments")
    cls = PRECONDS[stub.class_name]
    model_type = kwargs.get("model_type", inspect.signature(cls).parameters["model_type"].default)
    if model_type != inner.class_name:
        raise CheckpointError(f"{where}: {stub.class_name} says model_type {model_type!r} but holds a {inner.class_name!r}")
    try:
        with torch.device("meta"):                       # no memory, no random init: the file fills it
            net = cls(*args, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{where}: {stub.class_name} arguments do not build the network ({e})") from None
    sd = collect_tensors(stub, where)
    problem = state_dict_mismatch(net.state_dict(), sd)
    if problem:
        raise CheckpointError(f"{where}: the tensors do not match the network its arguments describe ({problem})")
    sd = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: the tensors do not load ({str(e).strip().splitlines()[0]})") from None
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: no tensor in the file for {left[0]!r}")
    net.source_sha256 = sorted({s.module_sha256 for s in (stub, inner) if s.module_sha256})
    return net.eval().requires_grad_(False)


def load_edm_pickle(path):
    """An EDM network pickle (a snapshot dict with 'ema' or 'net', or a network itself) → its
    preconditioner as a trustdiff Denoiser (:mod:`trustdiff.nets.edm`), eval mode, requires_grad
    False, fp32. Nothing from the file is imported or run; errors are one line."""
    path = Path(path)
    obj = read_edm_pickle(path)
    return rebuild(_find_network(obj, str(path)), str(path))


# --- configurations ------------------------------------------------------------------------------


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)                        # "inf", "-inf", "nan"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def edm_config(precond) -> dict:
    """``{"class": "EDMPrecond", "init_kwargs": {...}}``: JSON-serialisable, rebuilds the network
    with :func:`build_edm` (non-finite floats as the strings "inf", "-inf", "nan")."""
    name = type(precond).__name__
    if name not in PRECONDS:
        raise CheckpointError(f"edm_config: expected one of {', '.join(PRECONDS)}, got {name}")
    return {"class": name, "init_kwargs": _json_safe(copy.deepcopy(precond.init_kwargs))}


def build_edm(config):
    """A fresh (random-weight) preconditioner from :func:`edm_config`'s dict or an
    :data:`EDM_PRESETS` name. One CheckpointError line when the config does not build."""
    if isinstance(config, str):
        if config not in EDM_PRESETS:
            raise CheckpointError(f"EDM preset {config!r}: expected one of {', '.join(EDM_PRESETS)}")
        config = EDM_PRESETS[config]
    if not (isinstance(config, dict) and config.get("class") in PRECONDS and isinstance(config.get("init_kwargs"), dict)):
        raise CheckpointError(f"EDM config: expected {{'class': one of {', '.join(PRECONDS)}, 'init_kwargs': {{...}}}}")
    kwargs = copy.deepcopy(config["init_kwargs"])
    for key in ("sigma_min", "sigma_max"):
        if isinstance(kwargs.get(key), str):
            try:
                kwargs[key] = float(kwargs[key])
            except ValueError:
                raise CheckpointError(f"EDM config: {key} {kwargs[key]!r} is not a number") from None
    try:
        return PRECONDS[config["class"]](**kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"EDM config: {config['class']} does not build ({e})") from None


def edm_model_info(precond) -> dict:
    """What the network means: resolution, channels, num_classes (None: unconditional), the
    preconditioner's own σ range (EDMPrecond: 0 and inf) and σ_data, its kind."""
    return {"resolution": int(precond.img_resolution), "channels": int(precond.img_channels),
            "num_classes": precond.num_classes, "sigma_min": float(precond.sigma_min),
            "sigma_max": float(precond.sigma_max), "sigma_data": float(precond.sigma_data),
            "precond": precond.kind, "class": type(precond).__name__}


def _edm_preset(resolution, label_dim, arch, **extra):
    """A published EDM configuration: train.py's --arch settings, the README's flags, and what
    training_loop.py adds (img_resolution, img_channels, label_dim from the data set;
    augment_dim=9 whenever --augment > 0; dropout and use_fp16 always)."""
    archs = {
        "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
                       channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
        "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                       channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
        "adm": dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4]),
    }
    kwargs = {"img_resolution": resolution, "img_channels": 3, "label_dim": label_dim, **archs[arch],
              "augment_dim": 9, "dropout": 0.13, "use_fp16": False}
    kwargs.update(extra)
    if kwargs["augment_dim"] is None:
        del kwargs["augment_dim"]
    return {"class": "EDMPrecond", "init_kwargs": kwargs}


#: the published EDM networks (README "Pre-trained models"; all trained with --precond=edm):
#: name (the file name without .pkl) → :func:`build_edm` config
EDM_PRESETS = {
    "edm-cifar10-32x32-cond-vp": _edm_preset(32, 10, "ddpmpp"),
    "edm-cifar10-32x32-cond-ve": _edm_preset(32, 10, "ncsnpp"),
    "edm-cifar10-32x32-uncond-vp": _edm_preset(32, 0, "ddpmpp"),
    "edm-cifar10-32x32-uncond-ve": _edm_preset(32, 0, "ncsnpp"),
    # --cres=1,2,2,2 --dropout=0.05 --augment=0.15
    "edm-ffhq-64x64-uncond-vp": _edm_preset(64, 0, "ddpmpp", channel_mult=[1, 2, 2, 2], dropout=0.05),
    "edm-ffhq-64x64-uncond-ve": _edm_preset(64, 0, "ncsnpp", channel_mult=[1, 2, 2, 2], dropout=0.05),
    # --cres=1,2,2,2 --dropout=0.25 --augment=0.15
    "edm-afhqv2-64x64-uncond-vp": _edm_preset(64, 0, "ddpmpp", channel_mult=[1, 2, 2, 2], dropout=0.25),
    "edm-afhqv2-64x64-uncond-ve": _edm_preset(64, 0, "ncsnpp", channel_mult=[1, 2, 2, 2], dropout=0.25),
    # --arch=adm --dropout=0.10 --augment=0 --fp16=1
    "edm-imagenet-64x64-cond-adm": _edm_preset(64, 1000, "adm", dropout=0.10, augment_dim=None, use_fp16=True),
}


__all__ = [
    "ALLOWED", "EDMUnpickler", "PersistentStub", "ModuleStub", "read_edm_pickle", "collect_tensors", "rebuild",
    "load_edm_pickle", "edm_config", "build_edm", "edm_model_info", "EDM_PRESETS",
]

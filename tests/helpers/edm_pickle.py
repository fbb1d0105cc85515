"""EDM-style pickles made without the reference code (tests of trustdiff.pretrained).

A stand-in ``torch_utils.persistence`` is written into a temporary folder: its objects pickle as
``_reconstruct_persistent_obj(meta)`` with EDM's meta layout (type, version, module_src,
class_name, state), the form NVlabs/edm's ``torch_utils/persistence.py`` writes.
"""
from __future__ import annotations

import math
import pickle
import sys
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from torch import nn

_PERSISTENCE = '''
"""A stand-in for EDM's torch_utils/persistence.py: the same pickled form, nothing else."""


def _reconstruct_persistent_obj(meta):
    raise RuntimeError("the stand-in reconstructor must never be called by trustdiff")


class Persistent:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))
'''


@contextmanager
def fake_persistence(tmp_path):
    """``torch_utils.persistence`` importable from a temporary folder (so pickle can name it);
    removed from ``sys.path`` and ``sys.modules`` afterwards."""
    root = Path(tmp_path) / "fake_edm"
    (root / "torch_utils").mkdir(parents=True, exist_ok=True)
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "persistence.py").write_text(_PERSISTENCE)
    names = ("torch_utils", "torch_utils.persistence")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(root))
    try:
        import torch_utils.persistence as mod

        yield mod
    finally:
        sys.path.remove(str(root))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def write_edm_pickle(precond: nn.Module, path, tmp_path) -> Path:
    """``precond`` (a trustdiff EDM preconditioner) written as an EDM training snapshot at ``path``."""
    with fake_persistence(tmp_path) as persistence:
        return _snapshot(persistence, precond, path)


def _meta(class_name, state, module_src="# training/networks.py\n"):
    return dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)


def as_edm(persistence, module: nn.Module, init_kwargs=None, module_src="# training/networks.py\n"):
    """A trustdiff module tree as EDM pickles it: every EDM class a persistent object whose state is
    the module's __dict__ (with _init_args/_init_kwargs), torch's ModuleDict as itself."""
    state = dict(module.__dict__)
    state["_modules"] = OrderedDict((k, None if m is None else as_edm(persistence, m, module_src=module_src))
                                    for k, m in module._modules.items())
    if isinstance(module, nn.ModuleDict):
        md = nn.ModuleDict.__new__(nn.ModuleDict)
        md.__dict__.update(state)
        return md
    state.pop("init_kwargs", None)
    state["_init_args"] = ()
    # the inner layers' recorded arguments are never used; EDM's hold numpy scalars, e.g. skip_scale=np.sqrt(0.5)
    state["_init_kwargs"] = init_kwargs if init_kwargs is not None else {"skip_scale": np.float64(math.sqrt(0.5))}
    return persistence.Persistent(_meta(type(module).__name__, state, module_src))


def _snapshot(persistence, precond, path, **extra):
    kwargs = dict(precond.init_kwargs)
    kwargs["dropout"] = np.float64(kwargs.get("dropout", 0.1))        # a numpy scalar among the arguments
    net = as_edm(persistence, precond, kwargs, **extra)
    data = dict(ema=net, loss_fn=persistence.Persistent(_meta("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5))),
                augment_pipe=None, dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip"))
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path



"""The one training loop: EMA, checkpoints, exact resume, multi-process.

    from trustdiff.train import TrainConfig, fit
    result = fit(model, loss_fn, (x, y), TrainConfig(steps=2000), "runs/mnist", resume=True)

``loss_fn(net, x, y, generator) -> loss [B]`` is per-sample; see :func:`fit`.
"""
from .config import TrainConfig, lr_at
from .data import DataStream, epoch_permutation
from .dist import launch
from .ema import ema_beta, ema_beta_dynamic, make_ema, update_ema
from .loop import OPTIMIZERS, TrainResult, fit, param_groups

__all__ = ["TrainConfig", "TrainResult", "fit", "launch", "lr_at", "ema_beta", "ema_beta_dynamic", "make_ema",
           "update_ema", "DataStream", "epoch_permutation", "OPTIMIZERS", "param_groups"]

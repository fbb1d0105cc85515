"""A tiny training run for the crash/resume and multi-process tests of trustdiff.train.

    python tests/helpers/train_tiny.py RUN_DIR --steps 40 [--resume] [--kill-at EVENT:N] ...

The model is a small MLP with dropout (so the global RNG matters) on 4x4 one-channel images; the
loss denoises with noise drawn from the loop's generator (so its state matters). Fault injection
(``--kill-at``) makes the process SIGKILL itself:
    file:N       after the N-th file written inside a checkpoint being built
    renamed:N    after the N-th checkpoint folder is renamed into place, before latest.json
    latest:N     after the N-th latest.json update, before pruning
    checkpoint:N right after the N-th completed checkpoint (on_checkpoint)
    call:N       at the N-th loss_fn call (mid-step, before backward)
Counts are per process. ``--ready`` prints "ready" just before fit starts, for timed kills.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import torch
from torch import nn

import trustdiff.checkpoint as ckpt_mod
from trustdiff.train import TrainConfig, fit


class TinyNet(nn.Module):
    """Denoiser for 1×4×4 images with a label embedding; ``.config`` exercises config.json."""

    def __init__(self, dropout: float = 0.1, classes: int = 3):
        super().__init__()
        self.config = {"dropout": dropout, "classes": classes}
        self.embed = nn.Embedding(classes, 16)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Dropout(dropout), nn.Linear(32, 16))

    def forward(self, x, y):
        h = x.flatten(1) + self.embed(y)
        return self.body(h).view_as(x)


def make_data(n: int = 50):
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def die(*_):
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at", default=None)
    ap.add_argument("--deterministic-loss", action="store_true", help="no noise, no dropout")
    ap.add_argument("--dump-rank-weights", action="store_true")
    ap.add_argument("--ready", action="store_true")
    ap.add_argument("--step-sleep", type=float, default=0.0)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = TinyNet(dropout=0.0 if args.deterministic_loss else 0.1)
    data = make_data()
    counts: dict[str, int] = {}
    kill_event, kill_n = (args.kill_at.split(":")[0], int(args.kill_at.split(":")[1])) if args.kill_at else (None, 0)

    def tick(event):
        counts[event] = counts.get(event, 0) + 1
        if event == kill_event and counts[event] == kill_n:
            die()

    if kill_event in ("file", "renamed", "latest"):
        ckpt_mod._fault_hook = lambda event, path: tick(event)

    def loss_fn(net, x, y, generator):
        tick("call")
        if args.step_sleep:
            import time
            time.sleep(args.step_sleep)
        noise = 0.0 if args.deterministic_loss else 0.3 * torch.randn(x.shape, generator=generator, device=x.device)
        return (net(x + noise, y) - x).square().flatten(1).mean(1)

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-2, warmup_steps=5, grad_clip=1.0,
                      ema_halflife_kimg=0.05, ema_rampup_ratio=0.05, checkpoint_every=7, log_every=5,
                      keep_checkpoints=2, seed=0, progress=False)
    if args.ready:
        print("ready", flush=True)
    res = fit(model, loss_fn, data, cfg, args.run_dir, resume=args.resume,
              on_checkpoint=lambda step: tick("checkpoint"))
    if args.dump_rank_weights:
        from safetensors.torch import save_file
        rank = int(os.environ.get("RANK", "0"))
        save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
                  os.path.join(args.run_dir, f"final-rank{rank}.safetensors"))
    print(f"done step {res.step} loss {res.last_loss}", flush=True)
    return res


if __name__ == "__main__":
    torch.set_num_threads(1)  # CPU reductions may depend on the thread count: keep it fixed
    main()

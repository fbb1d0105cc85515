"""The papers' networks at the papers' sizes, checked on the CPU.

Parameter counts (each paper prints its count to 0.1M, so the tolerance is half that digit, 0.05M):

- DDPM CIFAR-10 UNet, Ho et al. 2020, *Denoising Diffusion Probabilistic Models*, Appendix B:
  "Our CIFAR10 model has 35.7 million parameters". ``build_unet("ddpm-cifar", resolution=32,
  channels=3)`` (unconditional, as in the paper) has 35,746,307; the class-conditional net that
  ``trustdiff train`` builds by default adds an 11 × 512 class embedding (5,632).
- WRN-28-10 and WRN-70-16, Gowal et al. 2020, *Uncovering the Limits of Adversarial Training
  against Norm-Bounded Adversarial Examples*: 36.5M and 266.8M parameters, the networks Rebuffi
  et al. 2021 and Wang et al. 2023 train. ``WideResNet(28, 10)``: 36,479,194; ``(70, 16)``:
  266,796,506 (10 classes, 3 channels).

Then one training step of each at batch 2, 32×32 (forward, the loss the commands train with,
backward, the optimizer the commands use): a finite loss, and at least 90% of the tensors that get
a gradient move. Measured on 2 shared CPU cores at load average ≈ 2: ddpm-cifar 1.3 s, WRN-28-10
(TRADES) 1.6 s, WRN-70-16 10.5 s (marked slow); at load ≈ 4–5 all were ~10× slower.
"""
from __future__ import annotations

import pytest
import torch

from trustdiff.advtrain.losses import adversarial_loss_fn, smooth_ce
from trustdiff.diffusion.model import build_denoiser
from trustdiff.nets import build_classifier, build_unet, parse_arch
from trustdiff.train import TrainConfig
from trustdiff.train.diffusion import DiffusionJob, diffusion_loss_fn, model_spec
from trustdiff.train.loop import make_optimizer

#: (network, the paper's count in millions, our exact count)
PAPER_PARAMS = [("ddpm-cifar", 35.7, 35_746_307), ("wrn-28-10", 36.5, 36_479_194), ("wrn-70-16", 266.8, 266_796_506)]
TOLERANCE_M = 0.05            # half of the papers' last printed digit


def _wrn(name: str):
    arch, kw = parse_arch(name)
    return build_classifier(arch, in_channels=3, num_classes=10, resolution=32, **kw)


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name,paper_m,ours", PAPER_PARAMS, ids=[n for n, _, _ in PAPER_PARAMS])
def test_parameter_count_is_the_papers(name, paper_m, ours):
    net = build_unet(name, resolution=32, channels=3) if name == "ddpm-cifar" else _wrn(name)
    n = _count(net)
    assert abs(n / 1e6 - paper_m) <= TOLERANCE_M, f"{name}: {n:,} parameters, the paper reports {paper_m}M"
    assert n == ours, f"{name}: {n:,} parameters, {ours:,} when this test was written"


def _step(net, loss_fn, optimizer: str, cfg: TrainConfig) -> None:
    """One update at batch 2 on 3×32×32; asserts a finite loss and that the weights moved."""
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([3, 7])
    opt = make_optimizer(optimizer, net, cfg)
    before = [p.detach().clone() for p in net.parameters()]
    net.train()
    loss = loss_fn(net, x, y, torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and torch.isfinite(loss).all(), loss
    loss.mean().backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    opt.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, net.parameters()) if p.grad is not None]
    assert moved and sum(moved) >= 0.9 * len(moved), f"{sum(moved)} of {len(moved)} tensors with a gradient moved"


def test_ddpm_cifar_training_step():
    """`trustdiff train --size ddpm-cifar` at 32×32: the class-conditional EDM loss, Adam."""
    job = DiffusionJob(resolution=32, size="ddpm-cifar")
    spec = model_spec(job, num_classes=10, channels=3)
    unet, _ = build_denoiser(spec)
    assert _count(unet) == 35_746_307 + 11 * 512
    _step(unet, diffusion_loss_fn(spec, job.label_dropout), "adam", TrainConfig(lr=1e-4))


def _trades(steps: int = 1):
    """The cifar10-wang2023 objective (TRADES β 5, L∞ 8/255, step 2/255), with a 1-step attack."""
    return adversarial_loss_fn("trades", eps=8 / 255, alpha=2 / 255, steps=steps, beta=5.0, smoothing=0.1)


def test_wrn_28_10_training_step():
    """`trustdiff advtrain train --preset cifar10-wang2023`'s network and loss: TRADES, SGD."""
    _step(_wrn("wrn-28-10"), _trades(), "sgd", TrainConfig(lr=0.2, weight_decay=5e-4, grad_clip=None))


@pytest.mark.slow
def test_wrn_70_16_training_step():
    """The 267M network trains: a label-smoothed cross-entropy step (a TRADES step with one attack
    step costs 3× as much; its code is the same as WRN-28-10's above), SGD."""
    def ce(net, x, y, generator):
        return smooth_ce(net(x), y, 0.1)

    _step(_wrn("wrn-70-16"), ce, "sgd", TrainConfig(lr=0.2, weight_decay=5e-4, grad_clip=None))

"""trustdiff.train: EDM EMA and schedule, data order, the non-finite guard, exact resume after
SIGKILL (subprocesses), and two-process training under Accelerate."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trustdiff.checkpoint import latest_checkpoint, load_checkpoint
from trustdiff.errors import InputError, TrainingDiverged
from trustdiff.train import DataStream, TrainConfig, ema_beta, fit, launch, lr_at

HELPERS = Path(__file__).parent / "helpers"
HELPER = HELPERS / "train_tiny.py"
sys.path.insert(0, str(HELPERS))
from train_tiny import TinyNet, make_data  # noqa: E402


def tiny_cfg(**kw):
    base = dict(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, checkpoint_every=5, log_every=4,
                keep_checkpoints=2, ema_halflife_kimg=0.05, progress=False)
    return TrainConfig(**{**base, **kw})


def denoise_loss(net, x, y, generator):
    noise = 0.3 * torch.randn(x.shape, generator=generator, device=x.device)
    return (net(x + noise, y) - x).square().flatten(1).mean(1)  # [B]


# ---- pure pieces ----------------------------------------------------------------------------


def test_ema_beta_is_edm():
    # ramp-up: half-life capped at 5% of the 128 images seen -> 6.4 images
    assert ema_beta(128, 128, 500.0, 0.05) == pytest.approx(0.5 ** (128 / 6.4))
    assert ema_beta(10**9, 128, 500.0, 0.05) == pytest.approx(0.5 ** (128 / 500_000))
    assert ema_beta(128, 128, 500.0, None) == pytest.approx(0.5 ** (128 / 500_000))


def test_lr_warmup_is_a_function_of_step():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, TrainConfig(lr=0.5, warmup_steps=0)) == 0.5


def test_data_stream_resumes_mid_epoch_and_covers_each_epoch():
    a = DataStream(10, seed=3)
    seen = torch.cat([a.take(7) for _ in range(10)])  # 70 = 7 epochs, batches straddle epochs
    for e in range(7):
        assert sorted(seen[10 * e: 10 * e + 10].tolist()) == list(range(10))
    b = DataStream(10, seed=3)
    b.take(7 * 4)
    c = DataStream(10, seed=3, **b.position)
    assert torch.equal(torch.cat([c.take(7) for _ in range(6)]), seen[28:])


def test_config_rejects_nonsense():
    with pytest.raises(InputError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="grad_clip"):
        TrainConfig(grad_clip=-1.0)


# ---- in-process training ----------------------------------------------------------------------


def test_fit_writes_run_folder_and_resumes(tmp_path):
    torch.manual_seed(0)
    res = fit(TinyNet(), denoise_loss, make_data(), tiny_cfg(), tmp_path)
    assert res.step == 12 and res.run_dir == tmp_path and res.last_loss > 0
    assert not res.ema.training and not any(p.requires_grad for p in res.ema.parameters())
    assert not torch.equal(res.ema.body[0].weight, res.model.body[0].weight)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.json", "step-00000010", "step-00000012"]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12]
    assert set(lines[0]) == {"step", "loss", "lr", "grad_norm", "img_per_s", "skipped"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["steps"] == 12 and config["train_run"]["world_size"] == 1
    assert torch.are_deterministic_algorithms_enabled() is False  # fit restores the caller's setting

    with pytest.raises(InputError, match="already holds checkpoints"):
        fit(TinyNet(), denoise_loss, make_data(), tiny_cfg(), tmp_path)
    again = fit(TinyNet(), denoise_loss, make_data(), tiny_cfg(steps=14), tmp_path, resume=True)
    assert again.step == 14 and latest_checkpoint(tmp_path).name == "step-00000014"


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(InputError, match=r"per-sample loss tensor of shape \(8,\), got \(\)"):
        fit(TinyNet(), lambda n, x, y, g: denoise_loss(n, x, y, g).mean(), make_data(), tiny_cfg(), tmp_path)
    with pytest.raises(InputError, match="data y"):
        fit(TinyNet(), denoise_loss, (make_data()[0], torch.zeros(50)), tiny_cfg(), tmp_path)
    with pytest.raises(InputError, match="optimizer"):
        fit(TinyNet(), denoise_loss, make_data(), tiny_cfg(), tmp_path, optimizer="lbfgs")


def test_fit_trains_a_diffusers_unet_and_saves_it_in_its_layout(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)

    def eps_loss(net, x, y, g):  # a DDPM-style epsilon loss, enough to exercise the loop
        n = torch.randn(x.shape, generator=g, device=x.device)
        t = torch.randint(0, 1000, (x.shape[0],), generator=g, device=x.device)
        return (net(x * 2 - 1 + n, t).sample - n).square().flatten(1).mean(1)

    data = (torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.int64))
    res = fit(unet, eps_loss, data, tiny_cfg(steps=3, batch_size=4, checkpoint_every=2), tmp_path)
    ema = diffusers.UNet2DModel.from_pretrained(latest_checkpoint(tmp_path) / "ema")
    assert all(torch.equal(p, q) for p, q in zip(ema.parameters(), res.ema.parameters()))


def nan_at(calls: set, start_nan_from: int | None = None):
    """A loss that is NaN at the given 1-based calls (and from ``start_nan_from`` on)."""
    count = [0]

    def loss_fn(net, x, y, g):
        count[0] += 1
        loss = denoise_loss(net, x, y, g)
        if count[0] in calls or (start_nan_from is not None and count[0] >= start_nan_from):
            loss = loss * float("nan")
        return loss

    return loss_fn


def test_nonfinite_step_is_skipped(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trustdiff.train"):
        res = fit(TinyNet(), nan_at({3}), make_data(), tiny_cfg(), tmp_path)
    assert res.step == 12 and all(torch.isfinite(p).all() for p in res.model.parameters())
    assert "step 2: non-finite loss" in caplog.text
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in lines] == [1, 0, 0]


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg(max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match=r"3 non-finite steps in a row up to step 9.*step-00000005"):
        fit(TinyNet(), nan_at(set(), start_nan_from=8), make_data(), cfg, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.json", "step-00000005"]
    net = TinyNet()
    load_checkpoint(latest_checkpoint(tmp_path), {"model": net, "ema": TinyNet()})
    assert all(torch.isfinite(p).all() for p in net.parameters())


# ---- SIGKILL at any point, resume, bit-identical ---------------------------------------------

STEPS = 40  # checkpoints (every 7) at 7 14 21 28 35 40; 7 files each


def _cmd(run_dir, *args):
    return [sys.executable, str(HELPER), str(run_dir), "--steps", str(STEPS), *args]


def _killed(run_dir, kill_at):
    p = subprocess.run(_cmd(run_dir, "--resume", "--kill-at", kill_at), capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, (kill_at, p.returncode, p.stderr[-2000:])


def _tmp_dirs(run_dir):
    return sorted(p.name.split("-")[2] for p in (run_dir / "checkpoints").glob(".tmp-step-*"))


def _metrics(run_dir):
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in lines]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    ref_dir, run = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(_cmd(ref_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    _killed(run, "file:3")              # inside the first checkpoint: nothing complete yet
    assert latest_checkpoint(run) is None and _tmp_dirs(run) == ["00000007"]
    _killed(run, "call:12")             # starts over, checkpoints step 7, dies mid-step 12
    assert latest_checkpoint(run).name == "step-00000007" and _tmp_dirs(run) == []
    _killed(run, "renamed:1")           # step-14 in place, latest.json still at 7
    assert (run / "checkpoints" / "step-00000014").is_dir()
    assert latest_checkpoint(run).name == "step-00000007"
    _killed(run, "latest:1")            # redoes 7..14, replaces step-14, dies before pruning
    assert latest_checkpoint(run).name == "step-00000014"
    _killed(run, "file:10")             # checkpoint 21 done, 28 torn after 3 files
    assert latest_checkpoint(run).name == "step-00000021" and _tmp_dirs(run) == ["00000028"]
    _killed(run, "checkpoint:1")        # right after checkpoint 28
    assert latest_checkpoint(run).name == "step-00000028"
    # and at a random instant of the remaining steps (a few ms each)
    delay = random.Random(os.getpid()).uniform(0.0, 0.12)
    p = subprocess.Popen(_cmd(run, "--resume", "--ready", "--step-sleep", "0.005"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(delay)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=120)
    final = subprocess.run(_cmd(run, "--resume"), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    out, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err[-2000:]

    for step in ("step-00000035", "step-00000040"):
        a, b = ref_dir / "checkpoints" / step, run / "checkpoints" / step
        for f in ("model/model.safetensors", "ema/model.safetensors", "state.safetensors"):
            ta, tb = load_file(a / f), load_file(b / f)
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), (step, f, delay)
        assert json.loads((a / "state.json").read_text()) == json.loads((b / "state.json").read_text())
    # no lost or repeated steps: the same metrics lines, each step once
    assert _metrics(run) == _metrics(ref_dir)
    assert [r["step"] for r in _metrics(run)] == list(range(5, STEPS + 1, 5))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-00000035", "step-00000040"]


# ---- two processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    args = ["--steps", "12", "--deterministic-loss", "--dump-rank-weights"]
    assert launch(2, [str(HELPER), str(tmp_path / "two"), *args], cpu=True) == 0
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "latest.json", "step-00000007", "step-00000012"]
    steps = [json.loads(s)["step"] for s in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]  # rank 0 alone writes
    r0, r1 = (load_file(tmp_path / "two" / f"final-rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # all-reduced gradients: identical replicas

    # one process, same global batch: equal up to float summation order (measured ~3e-8)
    assert launch(1, [str(HELPER), str(tmp_path / "one"), *args]) == 0
    one = load_file(tmp_path / "one" / "final-rank0.safetensors")
    for k in one:
        torch.testing.assert_close(r0[k], one[k], rtol=1e-5, atol=1e-6)
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-00000012" / "state.json").read_text())
    assert state["world_size"] == 2

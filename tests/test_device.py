"""The one device policy (issue 18): every command runs where ``--device`` says and records it;
``fit`` moves the model, EMA, optimizer state and batches to its ``device``, writes device-free
checkpoints and resumes them on another device; ``--precision bf16`` keeps loss and EMA in fp32;
seeded sampling draws its noise on CPU generators (the same noise on every device).

Everything runs on the CPU: each command is asked for ``--device cpu`` explicitly, and what it
recorded (config.json's ``train_run.device``, metrics.json's ``device``) is asserted. The static
test at the end catches a command that loads or trains a model without the device policy.
"""
from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trustdiff.cli import main
from trustdiff.errors import InputError
from trustdiff.runtime import bf16_supported
from trustdiff.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from train_tiny import TinyNet, make_data  # noqa: E402

CPU = ["--device", "cpu"]
TRAIN = ["--data", "digits", "--resolution", "8", "--size", "tiny", "--steps", "2", "--batch", "8",
         "--checkpoint-every", "2", "--warmup", "1"]
CODEC = ["--resolution", "16", "--n-bits", "8", "--width", "4", "--enc-depth", "2", "--dec-depth", "2",
         "--codec-steps", "2", "--codec-batch", "8", "--l2-await", "0", "--l2-ramp", "2"]
BF16 = pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16")


def _ok(*argv):
    argv = [str(a) for a in argv]
    assert main(argv) == 0, argv


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _trained_on(run: Path) -> str:
    return _json(run / "config.json")["train_run"]["device"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every command's core, tiny, each with an explicit --device cpu."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("device")
    _ok("train", *TRAIN, *CPU, "--out", d / "m")
    _ok("generate", "--model", d / "m", "-n", "4", "--sample-steps", "2", *CPU, "--out", d / "g")
    _ok("train-classifier", "--resolution", "8", "--steps", "2", "--width", "4", "--noise-sigma", "0.25", *CPU,
        "--out", d / "clf")
    _ok("certify", "--classifier", d / "clf", "--denoiser", d / "m", "--sigma", "0.25", "--draws0", "4",
        "--draws", "8", "--batch", "8", "--max", "2", *CPU, "--out", d / "cert")
    _ok("purify", "eval", "--classifier", d / "clf", "--denoiser", d / "m", "-n", "2", "--n-check", "2",
        "--attack-steps", "1", "--eot", "1", "--sample-steps", "1", "--no-undefended", *CPU, "--out", d / "pur")
    _ok("watermark", "train-codec", *CODEC, *CPU, "--out", d / "codec")
    _ok("watermark", "embed", "--codec", d / "codec", "--key-seed", "1", "--split", "test", *CPU, "--out", d / "emb")
    _ok("watermark", "detect", "--codec", d / "codec", "--images", d / "emb" / "watermarked.npz", "--key-seed", "1",
        "--fpr", "0.01", *CPU, "--out", d / "det")
    _ok("advtrain", "train", "--resolution", "8", "--width", "4", "--epochs", "1", "--iters-per-epoch", "2",
        "--batch", "8", "--holdout", "8", "--attack-steps", "1", *CPU, "--out", d / "at")
    _ok("advtrain", "eval", "--run", d / "at", "-n", "4", "--no-autoattack", "--n-check", "2", *CPU, "--out", d / "ate")
    _ok("advtrain", "generate", "--model", d / "m", "-n", "4", "--sample-steps", "2", *CPU, "--out", d / "ag")
    _ok("t2i", "train", "--size", "tiny", "--resolution", "8", "--steps", "2", "--batch", "4", "--warmup", "0",
        "--checkpoint-every", "2", *CPU, "--out", d / "t2i")
    _ok("t2i", "generate", "--pipeline", d / "t2i", "--prompt", "a handwritten seven", "-n", "2", "--sample-steps", "2",
        *CPU, "--out", d / "t2ig")
    _ok("watermark", "t2i", "embed", "--pipeline", d / "t2i", "--target", "code", "--steps", "1", "--batch", "1",
        "--preserve", "0", *CPU, "--out", d / "wm")
    _ok("watermark", "t2i", "verify", "--pipeline", d / "wm", "--original", d / "t2i", "--target", "code",
        "--n-trigger", "2", "--prompt", "a handwritten seven", "--per-prompt", "1", "--sample-steps", "2", *CPU,
        "--out", d / "ver")
    np.savez(d / "subject.npz", images=np.zeros((2, 8, 8, 1), np.uint8), labels=np.zeros(2, np.int64))
    _ok("watermark", "t2i", "dreambooth", "--pipeline", d / "wm", "--instance", d / "subject.npz", "--steps", "1",
        "--batch", "1", *CPU, "--out", d / "db")
    return d


def test_training_commands_train_on_the_device_asked_for(runs):
    for run in ("m", "clf", "codec", "at", "t2i", "wm", "db"):
        assert _trained_on(runs / run) == "cpu", run
        assert _json(runs / run / "config.json")["device"] == "cpu", run          # the flag, resolved
        assert _json(runs / run / "config.json")["train_run"]["precision"] == "fp32", run
    assert _json(runs / "clf" / "metrics.json")["device"] == "cpu"                # where it was scored
    assert _json(runs / "wm" / "watermark.json")["device"] == "cpu"
    assert _json(runs / "db" / "dreambooth.json")["device"] == "cpu"


def test_inference_commands_record_the_device_they_ran_on(runs):
    for run in ("g", "cert", "pur", "emb", "det", "ate", "ag", "t2ig", "ver"):
        m = _json(runs / run / "metrics.json")
        assert m["device"] == "cpu", (run, m.get("device"))   # one device, not "cpu+cuda:0"
    assert _json(runs / "g" / "metrics.json")["precision"] == "fp32"


@pytest.mark.slow
def test_the_recipe_runs_every_stage_on_the_device_asked_for(tmp_path):
    _ok("watermark", "recipe", *CODEC, "--size", "tiny", "--steps", "2", "--batch", "8", "-n", "4", "--sample-steps", "2",
        "--fpr", "0.01", "--no-fd", *CPU, "--out", tmp_path / "r")
    m = _json(tmp_path / "r" / "metrics.json")
    assert (m["device"], m["precision"]) == ("cpu", "fp32")
    for run in ("codec", "diffusion-watermarked", "diffusion-clean"):
        assert _trained_on(tmp_path / "r" / run) == "cpu", run


def test_fit_moves_model_ema_optimizer_and_batches_to_its_device(tmp_path):
    seen = {}

    class Spy(TinyNet):
        def to(self, *args, **kwargs):
            seen.setdefault("to", []).append(args[0] if args else kwargs.get("device"))
            return super().to(*args, **kwargs)

    def loss(net, x, y, g):
        seen["batch"] = {str(x.device), str(y.device), str(g.device)}
        return (net(x, y) - x).square().flatten(1).mean(1)

    def post_step(model, opt):
        seen["opt"] = {str(t.device) for s in opt.state.values() for k, t in s.items() if torch.is_tensor(t) and k != "step"}

    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=0, checkpoint_every=3, progress=False)
    res = fit(Spy(), loss, make_data(), cfg, tmp_path, device="cpu", post_step=post_step)
    assert torch.device("cpu") in [torch.device(d) for d in seen["to"]]     # fit moved it itself
    assert seen["batch"] == {"cpu"} and seen["opt"] == {"cpu"}
    assert {p.device.type for p in (*res.model.parameters(), *res.ema.parameters())} == {"cpu"}
    assert _trained_on(tmp_path) == "cpu"
    state = _json(tmp_path / "checkpoints" / "step-00000003" / "state.json")
    assert state["device"] == "cpu"


def test_a_run_resumes_on_the_device_given_and_from_another_kind_of_device(tmp_path, caplog):
    """A checkpoint holds only CPU tensors and bytes; resumed with device="cpu", the optimizer
    state ends on the training device. A checkpoint written on a GPU (its generator state is a
    16-byte Philox state that a CPU generator cannot take) resumes too: re-seeded, with a warning."""
    from trustdiff.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from trustdiff.train.ema import make_ema

    def loss(net, x, y, g):
        return (net(x + 0.3 * torch.randn(x.shape, generator=g, device=x.device), y) - x).square().flatten(1).mean(1)

    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=0, checkpoint_every=2, progress=False)
    fit(TinyNet(), loss, make_data(), cfg, tmp_path, device="cpu")
    ck = latest_checkpoint(tmp_path)
    from safetensors import safe_open

    with safe_open(ck / "state.safetensors", framework="pt") as f:   # a file format without devices
        assert f.keys() and all(f.get_tensor(k).device.type == "cpu" for k in f.keys())

    seen = []

    def post_step(model, opt):
        seen.append({str(t.device) for s in opt.state.values() for k, t in s.items() if torch.is_tensor(t) and k != "step"})

    again = fit(TinyNet(), loss, make_data(), TrainConfig(**{**cfg.__dict__, "steps": 6}), tmp_path, resume=True,
                device="cpu", post_step=post_step)
    assert again.step == 6 and seen and all(s == {"cpu"} for s in seen)

    # the same checkpoint as a GPU would have written it
    model, ema = TinyNet(), None
    ema = make_ema(model)
    ck = latest_checkpoint(tmp_path)
    tensors, state = load_checkpoint(ck, {"model": model, "ema": ema})
    tensors["rng.rank0.generator"] = torch.zeros(16, dtype=torch.uint8)       # Philox: seed + offset
    tensors["rng.rank0.cuda"] = torch.zeros(16, dtype=torch.uint8)
    save_checkpoint(tmp_path, state["step"], modules={"model": model, "ema": ema}, tensors=tensors,
                    state={**state, "device": "cuda:0"})
    with caplog.at_level(logging.WARNING, logger="trustdiff.train.loop"):
        moved = fit(TinyNet(), loss, make_data(), TrainConfig(**{**cfg.__dict__, "steps": 8}), tmp_path, resume=True,
                    device="cpu")
    assert moved.step == 8 and moved.last_loss is not None
    assert any("written on cuda:0" in r.getMessage() and "re-seeded" in r.getMessage() for r in caplog.records)


@BF16
def test_bf16_trains_under_autocast_and_keeps_loss_and_ema_fp32(tmp_path):
    seen = {}

    def loss(net, x, y, g):
        out = net(x, y)
        seen["autocast"], seen["out"] = torch.is_autocast_enabled("cpu"), out.dtype
        return (out - x).square().flatten(1).mean(1)

    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=0, checkpoint_every=4, log_every=2, progress=False)
    res = fit(TinyNet(), loss, make_data(), cfg, tmp_path, device="cpu", precision="bf16")
    assert seen == {"autocast": True, "out": torch.bfloat16}          # the forward ran in bfloat16
    assert not torch.is_autocast_enabled("cpu")                       # and only inside fit
    assert isinstance(res.last_loss, float) and np.isfinite(res.last_loss)
    assert {p.dtype for p in (*res.model.parameters(), *res.ema.parameters())} == {torch.float32}
    assert _json(tmp_path / "config.json")["train_run"]["precision"] == "bf16"
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["loss"], float) for r in lines)


@BF16
def test_bf16_command_trains_and_samples(tmp_path):
    _ok("train", *TRAIN, *CPU, "--precision", "bf16", "--out", tmp_path / "m")
    assert _json(tmp_path / "m" / "config.json")["train_run"]["precision"] == "bf16"
    _ok("generate", "--model", tmp_path / "m", "-n", "2", "--sample-steps", "2", *CPU, "--precision", "bf16",
        "--out", tmp_path / "g")
    assert _json(tmp_path / "g" / "metrics.json")["precision"] == "bf16"
    x = np.load(tmp_path / "g" / "images-00000.npz")["images"]
    assert x.dtype == np.uint8 and x.shape == (2, 8, 8, 1)


def test_bf16_is_refused_where_the_device_has_none(tmp_path, capsys, monkeypatch):
    import trustdiff.runtime as runtime

    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    capsys.readouterr()
    code = main(["train", *TRAIN, *CPU, "--precision", "bf16", "--out", str(tmp_path / "never")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "--precision bf16" in err[0] and "no native bfloat16" in err[0], err
    assert not (tmp_path / "never").exists()
    with pytest.raises(InputError, match="no native bfloat16"):
        fit(TinyNet(), lambda n, x, y, g: (n(x, y) - x).square().flatten(1).mean(1), make_data(),
            TrainConfig(steps=1, batch_size=8, progress=False), tmp_path / "fit", precision="bf16")


def test_seeded_sampling_draws_its_noise_on_cpu_generators():
    """Image i's starting noise is ``σ_max · randn(shape, Generator().manual_seed(seed_i))`` — a
    CPU generator whatever the denoiser's device, so a seed gives the same noise everywhere —
    and a stochastic sampler's later noise comes from the same CPU generators."""
    from trustdiff.diffusion.losses import randn_like
    from trustdiff.diffusion.model import ModelSpec, sample, sampling_sigmas

    spec = ModelSpec(resolution=4, channels=1)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, sigma, cond=None):
            seen.append(x.detach().clone())
            return x * 0 + self.w

    sample(Recorder(), spec, [3, 5], sampler="euler", steps=2)
    s0 = float(sampling_sigmas("euler", 2, spec)[0])
    want = torch.stack([torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (3, 5)])
    torch.testing.assert_close(seen[0], s0 * want)
    # noise is drawn on the generator's device, then moved to x's (here: both the CPU)
    g = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    assert torch.equal(randn_like(torch.zeros(2, 3), g)[1], torch.randn(3, generator=torch.Generator().manual_seed(2)))


@BF16
def test_bf16_sampling_autocasts_the_denoiser_and_keeps_the_sampler_state_fp32():
    from trustdiff.diffusion.model import ModelSpec, sample

    seen = []

    class HalfNet(torch.nn.Module):                 # a network whose output is bfloat16, as under autocast
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, sigma, cond=None):
            seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
            return (0.5 * x * self.w).to(torch.bfloat16)

    out = sample(HalfNet(), ModelSpec(resolution=4, channels=1), [0, 1], sampler="heun", steps=3, precision="bf16")
    assert out.dtype == torch.float32 and seen and all(s == (torch.float32, True) for s in seen)


# ---- the static check: no command builds, loads or trains a model outside the device policy ----

#: calls that put a model to work; a command that makes one must hand it ``run.device``
_MODEL_CALLS = ("load_model(", "load_classifier(", "load_pipeline(", "load_codec(", "train_diffusion(",
                "train_classifier(", "train_codec(", "train_builtin(", "train_adv(", "run_recipe(", "embed_trigger(",
                "dreambooth(", "verify(", "evaluate_run(", "generate_set(", "write_shards(", "generate(", "fit(")


def _commands():
    cli = Path(__file__).resolve().parents[1] / "src" / "trustdiff" / "cli"
    for path in sorted(cli.glob("*.py")):
        src = path.read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and node.args.args and node.args.args[0].arg == "run":
                yield f"{path.name}:{node.name}", ast.get_source_segment(src, node)


def test_every_command_that_uses_a_model_follows_the_device_policy():
    cmds = dict(_commands())
    assert len(cmds) >= 17, sorted(cmds)           # every run command of cli/*.py
    bad = [name for name, body in cmds.items() if any(c in body for c in _MODEL_CALLS) and "run.device" not in body]
    assert not bad, f"commands that use a model without run.device: {bad}"
    trains = [name for name, body in cmds.items() if "run.device" in body and "run.precision" not in body]
    assert not trains, f"commands that take the device but not the precision: {trains}"


def test_no_cuda_calls_and_no_duplicate_device_policy():
    src = Path(__file__).resolve().parents[1] / "src" / "trustdiff"
    text = {p: p.read_text() for p in src.rglob("*.py")}
    assert not [p for p, t in text.items() if ".cuda()" in t or "device=\"cuda\"" in t or "device='cuda'" in t]
    assert not [p for p, t in text.items() if "def env_device" in t]      # runtime.default_device is the one


def test_the_cpu_allocator_tuning_is_an_option(monkeypatch):
    from trustdiff import runtime

    monkeypatch.setenv("TRUSTDIFF_CPU_ALLOCATOR", "system")
    assert runtime.tune_cpu_allocator() is False                 # opted out: nothing is set
    monkeypatch.delenv("TRUSTDIFF_CPU_ALLOCATOR")
    import platform

    tuned = runtime.tune_cpu_allocator()
    assert tuned is (platform.libc_ver()[0] == "glibc")          # set exactly where glibc's mallopt exists
    x = torch.randn(300, 256, 256)                               # a 75 MiB tensor, below the new mmap threshold
    assert float((x * 2).sum()) == pytest.approx(2 * float(x.sum()), rel=1e-4)

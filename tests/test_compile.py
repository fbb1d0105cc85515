"""``--compile`` (issue 22): networks compiled in place keep their class, state_dict and gradients
and give eager's outputs up to rounding; a denoiser compiles its backbone only, so a sampler's
Python-float σ does not recompile it; the commands that take the flag give the same results."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from trustdiff.cli import main
from trustdiff.diffusion.model import ModelSpec, build_denoiser
from trustdiff.diffusion.oracle import GaussianDenoiser
from trustdiff.diffusion.precond import compile_backbone
from trustdiff.errors import InputError
from trustdiff.nets.classifier import SmallCNN
from trustdiff.runtime import bf16_supported, compile_network

CPU = ["--device", "cpu"]


def _ok(*argv):
    argv = [str(a) for a in argv]
    assert main(argv) == 0, argv


def test_compile_network_keeps_the_module_its_outputs_and_its_gradients():
    torch.manual_seed(0)
    net = SmallCNN(width=4).eval()
    x = torch.rand(3, 1, 16, 16, requires_grad=True)
    want = net(x)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    keys = list(net.state_dict())
    assert compile_network(net) is net
    assert type(net) is SmallCNN and list(net.state_dict()) == keys
    got = net(x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


def test_a_compiled_backbone_is_not_recompiled_by_the_samplers_float_sigma():
    torch.manual_seed(0)
    _, den = build_denoiser(ModelSpec(size="tiny", resolution=8, num_classes=3))
    den.eval().requires_grad_(False)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    want = [den(x, s, y) for s in (0.3, 2.0, 40.0)]
    assert compile_backbone(den) is den
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):        # a second graph for the same shape fails
        got = [den(x, s, y) for s in (0.3, 2.0, 40.0)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_backbone_refuses_a_denoiser_it_does_not_know():
    with pytest.raises(InputError, match="--compile: expected a trustdiff denoiser"):
        compile_backbone(GaussianDenoiser(torch.zeros(1, 4, 4), 1.0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("compile")
    _ok("train", "--data", "digits", "--resolution", "8", "--size", "tiny", "--steps", "2", "--batch", "8",
        "--checkpoint-every", "2", "--warmup", "1", *CPU, "--out", d / "m")
    _ok("train-classifier", "--resolution", "8", "--steps", "2", "--width", "4", "--noise-sigma", "0.25", *CPU,
        "--out", d / "clf")
    return d


def test_certify_with_compile_gives_the_same_certificates(tiny):
    argv = ["certify", "--classifier", tiny / "clf", "--denoiser", tiny / "m", "--sigma", "0.25", "--draws0", "8",
            "--draws", "32", "--batch", "16", "--max", "3", *CPU]
    _ok(*argv, "--out", tiny / "eager")
    _ok(*argv, "--compile", "--out", tiny / "compiled")
    rows = [[ln.split("\t")[:-1] for ln in (tiny / run / "certify.tsv").read_text().splitlines()]   # all but the time
            for run in ("eager", "compiled")]
    assert rows[0] == rows[1] and len(rows[0]) == 4, rows
    assert json.loads((tiny / "compiled" / "config.json").read_text())["params"]["compile_nets"] is True


def test_generate_with_compile_gives_the_same_images(tiny):
    argv = ["generate", "--model", tiny / "m", "-n", "4", "--sample-steps", "3", *CPU]
    _ok(*argv, "--out", tiny / "g-eager")
    _ok(*argv, "--compile", "--out", tiny / "g-compiled")
    a, b = (np.load(tiny / g / "images-00000.npz")["images"].astype(int) for g in ("g-eager", "g-compiled"))
    assert np.abs(a - b).max() <= 1                  # uint8 images: rounding may move a pixel by one level


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_purify_eval_refuses_compile_with_bf16(tiny, capsys):
    """The compiled bf16 denoiser's input gradient is far from fp32's (cosine 0.74-0.83 in
    bench/throughput.py), so an attack through it would be weaker: refused before OUT exists."""
    capsys.readouterr()
    code = main(["purify", "eval", "--classifier", str(tiny / "clf"), "--denoiser", str(tiny / "m"), "-n", "2",
                 "--compile", "--precision", "bf16", *CPU, "--out", str(tiny / "never")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "--compile with --precision bf16" in err[0], err
    assert not (tiny / "never").exists()

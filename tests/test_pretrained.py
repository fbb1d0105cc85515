"""Published checkpoints wherever a model is taken (trustdiff.pretrained, `trustdiff convert`).

Tiny EDM pickles (made without the reference code: tests/helpers/edm_pickle.py) and tiny ADM
state dicts go through `generate`, `certify`, `purify eval`, `advtrain generate` and `convert`;
a converted folder gives the same images as the checkpoint it came from. The output-for-output
comparison against the reference code is bench/verify_pretrained.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trustdiff.cli import main
from trustdiff.nets import edm as edm_nets
from trustdiff.nets.adm import UNetModel

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from edm_pickle import write_edm_pickle  # noqa: E402

torch.set_num_threads(1)

#: a class-conditional EDM (DDPM++-style) network for 1-channel 8×8 images
EDM_TINY = dict(img_resolution=8, img_channels=1, label_dim=10, model_type="SongUNet", model_channels=8,
                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
#: an unconditional ADM with learned σ for 1-channel 8×8 images (trustdiff's structured form of the
#: flags: guided-diffusion's flags have no in_channels)
ADM_TINY = {"family": "adm",
            "unet": {"image_size": 8, "in_channels": 1, "model_channels": 32, "out_channels": 2, "num_res_blocks": 1,
                     "attention_resolutions": [2], "channel_mult": [1, 2], "num_head_channels": 32,
                     "use_scale_shift_norm": True, "resblock_updown": True},
            "diffusion": {"steps": 100, "noise_schedule": "linear", "learn_sigma": True}}


def _ok(*argv):
    code = main([str(a) for a in argv])
    assert code == 0, argv


def _fails(capsys, *argv, contains=""):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and contains in err, (code, err)
    return err


def _randomise(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def _images(folder: Path) -> np.ndarray:
    return np.concatenate([np.load(p)["images"] for p in sorted(folder.glob("images-*.npz"))])


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("pretrained")
    write_edm_pickle(_randomise(edm_nets.EDMPrecond(**EDM_TINY)), d / "edm-tiny.pkl", d)
    unet = _randomise(UNetModel(image_size=8, in_channels=1, model_channels=32, out_channels=2, num_res_blocks=1,
                                attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
                                use_scale_shift_norm=True, resblock_updown=True))
    torch.save(unet.state_dict(), d / "adm-tiny.pt")
    (d / "adm-tiny.json").write_text(json.dumps(ADM_TINY))
    _ok("train-classifier", "--resolution", "8", "--steps", "2", "--width", "4", "--out", d / "clf")
    return d


def test_edm_pickle_and_its_conversion_generate_the_same_images(fx, tmp_path):
    _ok("generate", "--model", fx / "edm-tiny.pkl", "-n", "3", "--sample-steps", "3", "--out", tmp_path / "g1")
    _ok("convert", fx / "edm-tiny.pkl", "--out", tmp_path / "conv")
    metrics = json.loads((tmp_path / "conv" / "metrics.json").read_text())
    assert metrics["family"] == "edm" and metrics["max_abs_diff_round_trip"] == 0
    assert metrics["parameters"] == sum(p.numel() for p in edm_nets.EDMPrecond(**EDM_TINY).parameters())
    assert not list((tmp_path / "conv" / "model").glob("*.pkl"))       # the converted folder holds no pickle
    _ok("generate", "--model", tmp_path / "conv", "-n", "3", "--sample-steps", "3", "--out", tmp_path / "g2")
    a, b = _images(tmp_path / "g1"), _images(tmp_path / "g2")
    assert a.shape == (3, 8, 8, 1) and np.array_equal(a, b) and a.std() > 0


def test_adm_state_dict_with_flags_and_its_conversion(fx, tmp_path):
    _ok("generate", "--model", fx / "adm-tiny.pt", "--adm-config", fx / "adm-tiny.json", "-n", "2", "--sample-steps", "3",
        "--out", tmp_path / "g1")
    _ok("convert", fx / "adm-tiny.pt", "--adm-config", fx / "adm-tiny.json", "--out", tmp_path / "conv")
    assert json.loads((tmp_path / "conv" / "metrics.json").read_text())["family"] == "adm"
    _ok("generate", "--model", tmp_path / "conv", "-n", "2", "--sample-steps", "3", "--out", tmp_path / "g2")
    assert np.array_equal(_images(tmp_path / "g1"), _images(tmp_path / "g2"))


def test_every_capability_takes_a_published_checkpoint(fx, tmp_path):
    pkl, clf = fx / "edm-tiny.pkl", fx / "clf"
    _ok("certify", "--classifier", clf, "--denoiser", pkl, "--sigma", "0.25", "--draws", "20", "--draws0", "5",
        "--max", "2", "--out", tmp_path / "cert")
    _ok("purify", "eval", "--classifier", clf, "--denoiser", pkl, "--sample-steps", "2", "--attack-steps", "1", "--eot", "1",
        "-n", "2", "--n-check", "1", "--out", tmp_path / "pur")
    _ok("advtrain", "generate", "--model", pkl, "-n", "4", "--sample-steps", "2", "--out", tmp_path / "adv")
    assert _images(tmp_path / "adv").shape[0] == 4
    _ok("purify", "eval", "--classifier", clf, "--denoiser", fx / "adm-tiny.pt", "--adm-config", fx / "adm-tiny.json",
        "--sample-steps", "2", "--attack-steps", "1", "--eot", "1", "-n", "2", "--n-check", "1", "--out", tmp_path / "pur-adm")


def test_bad_checkpoint_arguments_are_one_line(fx, tmp_path, capsys):
    out = tmp_path / "never"
    _fails(capsys, "generate", "--model", fx / "adm-tiny.pt", "--out", out, contains="--adm-config")
    _fails(capsys, "generate", "--model", fx / "edm-tiny.pkl", "--adm-config", "iddpm-cifar10", "--out", out,
           contains="EDM pickle")
    _fails(capsys, "generate", "--model", fx / "adm-tiny.pt", "--adm-config", "adm-imagenet256-uncond", "--out", out)
    _fails(capsys, "generate", "--model", fx / "edm-tiny.pkl", "--guidance", "2", "--out", out, contains="guidance")
    _fails(capsys, "convert", fx / "adm-tiny.json", "--out", out, contains="CHECKPOINT")
    _fails(capsys, "convert", fx / "absent.pkl", "--out", out, contains="does not exist")
    assert not out.exists()

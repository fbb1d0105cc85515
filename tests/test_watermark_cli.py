"""`trustdiff watermark …` at toy sizes: train-codec → embed → detect, the recipe end to end, --dry-run,
and wrong keys as one-line errors with nothing written. The group is invoked directly (it is
registered in trustdiff.cli by the lead)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trustdiff.errors import InputError

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from watermark_cli import CODEC, run  # noqa: E402

torch.set_num_threads(1)


def user_error(r) -> str:
    assert isinstance(r.exception, InputError), (r.output, r.exception)
    msg = str(r.exception)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("codec")
    run(["train-codec", *CODEC, "--out", out])
    return out


def test_train_codec_writes_run_folder(codec_run):
    assert (codec_run / "codec" / "model.safetensors").is_file()
    cfg = json.loads((codec_run / "codec" / "config.json").read_text())
    assert cfg["format"] == "trustdiff.codec/1" and cfg["n_bits"] == 8 and cfg["resolution"] == 16
    m = json.loads((codec_run / "metrics.json").read_text())
    assert set(m["heldout"]) >= {"bit_acc", "psnr", "ssim"} and m["steps"] == 4
    assert json.loads((codec_run / "config.json").read_text())["command"] == "watermark train-codec"
    assert (codec_run / "checkpoints" / "latest.json").is_file()


def test_embed_then_detect(codec_run, tmp_path):
    emb = tmp_path / "emb"
    run(["embed", "--codec", codec_run, "--split", "test", "--key-seed", "7", "--out", emb])
    key = json.loads((emb / "key.txt").read_text())
    assert len(key["bits"]) == 8 and key["hex"].startswith("0x")
    with np.load(emb / "watermarked.npz") as d:
        assert d["images"].dtype == np.uint8 and d["images"].shape[1:] == (16, 16, 1)
        assert "".join(map(str, d["key"].tolist())) == key["bits"]
    det = tmp_path / "det"
    run(["detect", "--codec", codec_run, "--images", emb / "watermarked.npz", "--key-file", emb / "key.txt",
         "--fpr", "0.01", "--calibrate", "digits", "--calib-images", "200", "--out", det])
    m = json.loads((det / "metrics.json").read_text())
    assert m["images"] == 359 and m["threshold"]["n_bits"] == 8 and m["threshold_mode"] in ("analytic", "calibrated")
    assert m["detected"]["n"] == 359 and 0 <= m["detected"]["lo"] <= m["detected"]["value"] <= m["detected"]["hi"]
    with np.load(det / "per_image.npz") as d:
        assert d["p_values"].shape == (359,) and d["bits"].shape == (359, 8)
    run(["embed", "--codec", codec_run, "--split", "test", "--per-image-keys", "--key-seed", "3", "--out", tmp_path / "pi"])
    with np.load(tmp_path / "pi" / "watermarked.npz") as d:
        assert d["keys"].shape == (359, 8) and "key" not in d.files
    # a weaker residual: a higher PSNR, recorded
    run(["embed", "--codec", codec_run, "--split", "test", "--key-seed", "7", "--strength", "0.5", "--out", tmp_path / "half"])
    full, half = (json.loads((d / "metrics.json").read_text()) for d in (emb, tmp_path / "half"))
    assert half["strength"] == 0.5 and full["strength"] == 1.0 and half["psnr_mean"] > full["psnr_mean"] + 5
    r = run(["embed", "--codec", codec_run, "--strength", "0", "--out", tmp_path / "bad-s"], ok=False)
    assert r.exit_code == 2 and "--strength" in r.output and not (tmp_path / "bad-s").exists()


def test_wrong_keys_are_one_line_errors_and_write_nothing(codec_run, tmp_path):
    out = tmp_path / "x"
    msg = user_error(run(["embed", "--codec", codec_run, "--key", "0x1234", "--out", out], ok=False))
    assert "expected 8 bits, got 4 hex digits = 16 bits" in msg
    msg = user_error(run(["embed", "--codec", codec_run, "--key", "01201101", "--out", out], ok=False))
    assert "0s and 1s" in msg
    msg = user_error(run(["detect", "--codec", codec_run, "--images", "digits", "--key", "0101", "--out", out], ok=False))
    assert "expected 8 bits" in msg
    msg = user_error(run(["detect", "--codec", codec_run, "--images", "digits", "--key", "01010101", "--key-seed", "1",
                          "--out", out], ok=False))
    assert "exactly one" in msg
    assert not out.exists()


def test_dry_run_prints_config_and_writes_nothing(tmp_path):
    out = tmp_path / "dry"
    r = run(["train-codec", *CODEC, "--distortions", "jpeg,noise", "--out", out, "--dry-run"])
    cfg = json.loads(r.output)
    assert cfg["config"]["n_bits"] == 8 and cfg["config"]["distortions"] == ["jpeg", "noise"]
    assert not out.exists()
    r = run(["recipe", *CODEC, "--fpr", "0.01", "--out", out, "--dry-run"])
    assert json.loads(r.output)["config"]["codec"]["resolution"] == 16
    assert not out.exists()
    msg = user_error(run(["train-codec", *CODEC, "--distortions", "sepia", "--out", out], ok=False))
    assert "sepia" in msg and not out.exists()


def test_recipe_end_to_end_tiny(tmp_path):
    out = tmp_path / "recipe"
    run(["recipe", *CODEC, "--size", "tiny", "--steps", "3", "--batch", "16", "-n", "8", "--sample-steps", "2",
         "--fpr", "0.01", "--no-fd", "--key", "0xa5", "--out", out])
    m = json.loads((out / "metrics.json").read_text())
    h = m["headline"]
    assert m["key"]["hex"] == "0xa5" and h["threshold_mode"] in ("analytic", "calibrated")
    for k in ("bit_acc_watermarked_model", "bit_acc_clean_model"):
        assert 0.0 <= h[k] <= 1.0
    assert h["detected_watermarked_model"]["n"] == 8
    for f in ("watermarked.npz", "generated-watermarked.npz", "generated-clean.npz", "key.txt",
              "diffusion-watermarked/model/trustdiff.json", "diffusion-clean/model/trustdiff.json"):
        assert (out / f).exists(), f
    # a second run into the same folder is refused; resumed, it reuses every stage and gives the same figures
    assert "--resume" in user_error(run(["recipe", *CODEC, "--out", out], ok=False))
    run(["recipe", "--resume", "--out", out])
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["headline"] == m["headline"]

"""trustdiff.persist: manifests, atomic folders, and every exported model folder checked on load
(diffusion models, classifiers, codecs; pipelines in test_t2i.py, the FD cache in test_fid.py);
pickles refused inside model folders unless allow_pickle; foreign diffusers folders still load."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from t2i_tiny import folder_digest  # noqa: E402

from trustdiff.diffusion.model import ModelSpec, build_denoiser, load_model, save_model  # noqa: E402
from trustdiff.errors import CheckpointError, UnsafeFileError  # noqa: E402
from trustdiff.nets import SmallCNN  # noqa: E402
from trustdiff.nets.codec import Codec  # noqa: E402
from trustdiff.persist import (MANIFEST, atomic_folder, read_manifest, use_safetensors, verify_folder,  # noqa: E402
                               write_manifest)
from trustdiff.train.classifier import load_classifier, save_classifier  # noqa: E402
from trustdiff.watermark.codec import load_codec, save_codec  # noqa: E402

torch.set_num_threads(1)
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def flip(path: Path, n: int = 1000) -> None:
    """Flip ``n`` bytes in the middle of a file (same size: only a hash can tell)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    spec = ModelSpec(size="tiny", resolution=8, channels=1)
    torch.manual_seed(0)
    unet, _ = build_denoiser(spec)
    return save_model(tmp_path_factory.mktemp("model") / "model", unet, spec)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _denoise(den) -> torch.Tensor:
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    with torch.no_grad():
        return den(x, torch.tensor([0.5]))


# ---- the manifest and the atomic folder ------------------------------------------------------------


def test_manifest_round_trip_and_every_kind_of_damage(tmp_path):
    d = tmp_path / "f"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"abc" * 100)
    (d / "sub" / "b.json").write_text("{}")
    (d / ".DS_Store").write_bytes(b"x")                                  # hidden files are not covered
    m = write_manifest(d)
    assert m["format"] == "trustdiff-manifest/1"
    assert set(m["files"]) == {"a.bin", "sub/b.json"} and m["files"]["a.bin"]["size"] == 300
    assert json.loads((d / MANIFEST).read_text()) == m == read_manifest(d)
    assert verify_folder(d) == m
    good = (d / "a.bin").read_bytes()
    flip(d / "a.bin", 1)
    with pytest.raises(CheckpointError) as e:
        verify_folder(d)
    assert f"{d / 'a.bin'} is corrupted: its SHA-256" in _one_line(e)
    (d / "a.bin").write_bytes(good[:-1])
    with pytest.raises(CheckpointError, match=r"a\.bin is truncated or altered: 299 bytes, expected 300"):
        verify_folder(d)
    (d / "a.bin").unlink()
    with pytest.raises(CheckpointError, match=r"a\.bin is missing"):
        verify_folder(d)
    (d / "a.bin").write_bytes(good)
    verify_folder(d)
    (d / "sub" / "added.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"added\.json is not in the manifest"):
        verify_folder(d)
    (d / "sub" / "added.json").unlink()
    (d / MANIFEST).write_text(json.dumps({"format": "x", "files": {"../a.bin": {"size": 1, "sha256": "0"}}}))
    with pytest.raises(CheckpointError, match="outside the folder"):
        verify_folder(d)
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable manifest"):
        verify_folder(d)
    (d / MANIFEST).unlink()
    with pytest.raises(CheckpointError) as e:
        verify_folder(d, what="model folder")
    assert f"model folder {d} has no {MANIFEST}" in _one_line(e)


def test_atomic_folder_publishes_whole_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "w").write_bytes(b"old")
    before = folder_digest(out)
    assert set(before) == {"w", MANIFEST}
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_folder(out) as tmp:
            (tmp / "w").write_bytes(b"new")
            raise RuntimeError("killed midway")
    assert folder_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_folder(out) as tmp:
        (tmp / "v").write_bytes(b"new")
    assert set(folder_digest(out)) == {"v", MANIFEST} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    verify_folder(out)


def test_use_safetensors_refuses_a_lone_pickle(tmp_path, caplog):
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsafeFileError) as e:
        use_safetensors(tmp_path)
    msg = _one_line(e)
    assert "pytorch_model.bin" in msg and "can run code" in msg and "--unsafe-allow-pickle" in msg
    with caplog.at_level(logging.WARNING, logger="trustdiff.persist"):
        assert use_safetensors(tmp_path, allow_pickle=True) is False
    assert "allow_pickle=True" in caplog.text
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert use_safetensors(tmp_path) is True                      # safetensors present: the pickle is never read
    assert use_safetensors(tmp_path / "nothing") is True


# ---- diffusion model folders -----------------------------------------------------------------------


def test_model_folder_has_a_manifest_and_flipped_bytes_are_named(model_dir, tmp_path):
    manifest = read_manifest(model_dir)
    assert set(manifest["files"]) == {"trustdiff.json", "unet/config.json", UNET_WEIGHTS}
    den, spec = load_model(model_dir)
    assert spec.resolution == 8
    bad = _copy(model_dir, tmp_path / "bad")
    flip(bad / UNET_WEIGHTS)
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    assert f"{bad / UNET_WEIGHTS} is corrupted" in _one_line(e)
    (bad / "trustdiff.json").write_text((bad / "trustdiff.json").read_text().replace('"edm"', '"vp"'))
    with pytest.raises(CheckpointError, match=r"trustdiff\.json is truncated or altered"):
        load_model(bad)


def test_model_folder_without_its_manifest_is_an_error(model_dir, tmp_path):
    bad = _copy(model_dir, tmp_path / "bad")
    (bad / MANIFEST).unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    assert f"{bad} has no {MANIFEST}" in _one_line(e)
    run = tmp_path / "run"
    _copy(model_dir, run / "model")
    (run / "model" / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="has no trustdiff-manifest.json"):
        load_model(run)                                        # a run folder holding one: the same check


def test_failed_save_leaves_the_old_model_whole(model_dir, tmp_path, monkeypatch):
    out = _copy(model_dir, tmp_path / "m")
    before = folder_digest(out)
    spec = ModelSpec(size="tiny", resolution=8, channels=1)
    unet, _ = build_denoiser(spec)

    def half_then_fail(path, **kw):
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(unet, "save_pretrained", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_model(out, unet, spec)
    assert folder_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    load_model(out)


def test_pickled_unet_is_refused_unless_allowed(model_dir, tmp_path, caplog):
    from safetensors.torch import load_file

    bad = _copy(model_dir, tmp_path / "bad")
    weights = bad / UNET_WEIGHTS
    torch.save(load_file(weights), bad / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(UnsafeFileError) as e:
        load_model(bad)
    msg = _one_line(e)
    assert "diffusion_pytorch_model.bin" in msg and "--unsafe-allow-pickle" in msg
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors is missing"):
        load_model(bad, allow_pickle=True)                     # not the folder that was exported
    write_manifest(bad)                                        # one whose manifest lists the pickle
    with pytest.raises(UnsafeFileError):
        load_model(bad)
    with caplog.at_level(logging.WARNING, logger="trustdiff.persist"):
        den, _ = load_model(bad, allow_pickle=True)
    assert "diffusion_pytorch_model.bin" in caplog.text and "allow_pickle=True" in caplog.text
    assert torch.equal(_denoise(den), _denoise(load_model(model_dir)[0]))


def _foreign_ddpm(folder: Path, *, safe: bool) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet", safe_serialization=safe)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def test_foreign_diffusers_folder_loads_without_a_manifest(tmp_path):
    folder = _foreign_ddpm(tmp_path / "ddpm", safe=True)
    den, spec = load_model(folder)
    assert spec.precond == "ddpm" and not (folder / MANIFEST).exists()
    assert _denoise(den).shape == (1, 1, 8, 8)
    pickled = _foreign_ddpm(tmp_path / "old", safe=False)
    assert (pickled / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(UnsafeFileError) as e:
        load_model(pickled)
    assert "diffusion_pytorch_model.bin" in _one_line(e)
    den2, _ = load_model(pickled, allow_pickle=True)
    assert torch.equal(_denoise(den2), _denoise(den))
    # a folder with a manifest is checked against it, even without trustdiff.json
    write_manifest(folder)
    assert torch.equal(_denoise(load_model(folder)[0]), _denoise(den))
    flip(folder / UNET_WEIGHTS)
    with pytest.raises(CheckpointError, match="is corrupted"):
        load_model(folder)


# ---- classifier and codec folders -------------------------------------------------------------------


def test_classifier_folder_checked_on_load_and_pickles_refused(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN(1, 3, width=4, resolution=8)
    folder = save_classifier(tmp_path / "clf", net, data="digits")
    assert set(read_manifest(folder)["files"]) == {"config.json", "model.safetensors"}
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(load_classifier(folder)(x), net(x))
    bad = _copy(folder, tmp_path / "bad")
    flip(bad / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_classifier(bad)
    assert f"{bad / 'model.safetensors'} is corrupted" in _one_line(e)
    (bad / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"has no {MANIFEST}"):
        load_classifier(bad)
    pk = _copy(folder, tmp_path / "pk")
    torch.save(net.state_dict(), pk / "model.pt")
    (pk / "model.safetensors").unlink()
    write_manifest(pk)
    with pytest.raises(UnsafeFileError, match=r"model\.pt.*--unsafe-allow-pickle"):
        load_classifier(pk)
    assert torch.equal(load_classifier(pk, allow_pickle=True)(x), net(x))


def test_codec_folder_checked_on_load(tmp_path):
    torch.manual_seed(0)
    codec = Codec(16, 1, 4, width=4, enc_depth=2, dec_depth=4, hidden=16)
    folder = save_codec(tmp_path / "codec", codec, data="digits")
    back = load_codec(folder)
    assert back.config == codec.config
    flip(folder / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_codec(folder)
    assert f"{folder / 'model.safetensors'} is corrupted" in _one_line(e)
    (folder / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"has no {MANIFEST}"):
        load_codec(folder)

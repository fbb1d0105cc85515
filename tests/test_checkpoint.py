"""trustdiff.checkpoint: atomic checkpoint folders, fallback, strict loading, pickle refusal."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from torch import nn

from trustdiff.checkpoint import (
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    rng_state_tensors,
    save_checkpoint,
    set_rng_state_tensors,
    unflatten_optimizer_state,
)
from trustdiff.errors import CheckpointError, UnsafeFileError
from trustdiff.persist import load_state_dict_file


class Net(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.config = {"width": width}
        self.a = nn.Linear(3, width)
        self.register_buffer("count", torch.tensor(7))


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x).tanh())


class Opaque:
    """Not a tensor: makes a pickle that weights_only=True refuses."""

    def __init__(self):
        self.w = torch.ones(2)


def _save(run_dir, step, net, keep=2, **state):
    return save_checkpoint(run_dir, step, modules={"model": net}, tensors={"t": torch.arange(3.0)},
                           state={"step": step, **state}, keep=keep)


def test_round_trip_layout_and_latest(tmp_path):
    torch.manual_seed(0)
    net = Net()
    path = _save(tmp_path, 5, net, note="hi")
    assert path == tmp_path / "checkpoints" / "step-00000005"
    names = {p.relative_to(path).as_posix() for p in path.rglob("*")}
    assert names == {"model", "model/model.safetensors", "model/config.json", "state.safetensors",
                     "state.json", "COMPLETE"}
    assert json.loads((path / "model" / "config.json").read_text()) == {"width": 4}
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text()) == {"step": 5, "path": "step-00000005"}
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]

    other = Net()
    other.count.fill_(0)
    tensors, state = load_checkpoint(latest_checkpoint(tmp_path), {"model": other})
    assert torch.equal(other.a.weight, net.a.weight) and int(other.count) == 7
    assert torch.equal(tensors["t"], torch.arange(3.0)) and state == {"step": 5, "note": "hi"}


def test_keep_prunes_old_and_stale_temporaries(tmp_path):
    net = Net()
    (tmp_path / "checkpoints" / ".tmp-step-00000099-1-ab").mkdir(parents=True)  # a killed write
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, net, keep=2)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["latest.json", "step-00000003", "step-00000004"]


def test_same_step_saved_again_replaces_and_newer_abandoned_is_dropped(tmp_path):
    net = Net()
    _save(tmp_path, 1, net)
    _save(tmp_path, 3, net, run="old")
    # a resume from step 1 (e.g. latest.json was older) re-writes steps 2 and 3
    _save(tmp_path, 2, net)
    assert not (tmp_path / "checkpoints" / "step-00000003").exists()  # abandoned timeline
    _save(tmp_path, 3, net, run="new")
    _save(tmp_path, 3, net, run="newer")
    _, state = load_checkpoint(latest_checkpoint(tmp_path), {"model": Net()})
    assert state["run"] == "newer"


def test_latest_falls_back_when_pointer_is_bad(tmp_path, caplog):
    net = Net()
    p1 = _save(tmp_path, 1, net)
    p2 = _save(tmp_path, 2, net)
    latest = tmp_path / "checkpoints" / "latest.json"
    latest.write_text("{not json")
    assert latest_checkpoint(tmp_path) == p2
    latest.unlink()
    assert latest_checkpoint(tmp_path) == p2
    # pointer at a folder that lost a file, and at one whose file was truncated: use the older one
    latest.write_text(json.dumps({"step": 2, "path": "step-00000002"}))
    f = p2 / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with caplog.at_level(logging.WARNING, logger="trustdiff.checkpoint"):
        assert latest_checkpoint(tmp_path) == p1
    assert "not a whole checkpoint" in caplog.text
    (p1 / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_different_architecture_is_one_line(tmp_path):
    path = _save(tmp_path, 1, Net())
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, {"model": Wide()})
    msg = str(e.value)
    assert "\n" not in msg and "different architecture for 'model'" in msg
    assert "missing keys ['b.bias', 'b.weight']" in msg and "unexpected ['count']" in msg
    with pytest.raises(CheckpointError, match=r"shape mismatch.*'a.bias': checkpoint \(4,\) vs model \(5,\)"):
        load_checkpoint(path, {"model": Net(width=5)})
    with pytest.raises(CheckpointError, match="has no module 'ema'"):
        load_checkpoint(path, {"ema": Net()})


def test_truncated_or_corrupted_files_are_named(tmp_path):
    path = _save(tmp_path, 1, Net())
    f = path / "state.safetensors"
    good = f.read_bytes()
    f.write_bytes(good[:-5])
    with pytest.raises(CheckpointError, match=r"state\.safetensors is truncated"):
        load_checkpoint(path, {"model": Net()})
    (tmp_path / "cut.safetensors").write_bytes(good[:-5])  # outside a checkpoint: safetensors notices
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is corrupted or truncated"):
        load_state_dict_file(tmp_path / "cut.safetensors")
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    f.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"state\.safetensors is corrupted: its SHA-256"):
        load_checkpoint(path, {"model": Net()})
    (path / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(path, {"model": Net()})


def test_failed_save_leaves_nothing(tmp_path):
    _save(tmp_path, 1, Net())
    with pytest.raises(CheckpointError, match="not JSON-able"):
        save_checkpoint(tmp_path, 2, modules={"model": Net()}, tensors={}, state={"bad": object()})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.json", "step-00000001"]


def test_pickles_refused_unless_allowed(tmp_path, caplog):
    sd = {"w": torch.ones(2, 2)}
    for suffix in (".pt", ".pth", ".pkl", ".ckpt", ".bin"):
        with pytest.raises(UnsafeFileError, match="refusing to load pickle file .*pickles can run code.*--unsafe-allow-pickle"):
            load_state_dict_file(tmp_path / f"w{suffix}")
    torch.save({"state_dict": sd}, tmp_path / "w.ckpt")
    assert torch.equal(load_state_dict_file(tmp_path / "w.ckpt", allow_pickle=True)["w"], sd["w"])
    torch.save({"w": torch.zeros(1), "obj": Opaque()}, tmp_path / "o.pt")
    with caplog.at_level(logging.WARNING, logger="trustdiff.checkpoint"):
        out = load_state_dict_file(tmp_path / "o.pt", allow_pickle=True)
    assert list(out) == ["w"] and "weights_only=True" in caplog.text
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "w.safetensors")
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["w"], sd["w"])
    with pytest.raises(CheckpointError, match="unknown format"):
        load_state_dict_file(tmp_path / "w.npz")


def test_optimizer_state_round_trip_continues_exactly():
    torch.manual_seed(0)

    def run(steps, opt, net):
        for i in range(steps):
            net(torch.full((2, 3), float(i))).square().sum().backward()
            opt.step()
            opt.zero_grad()

    a = Wide()
    b = Wide()
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(a.parameters(), lr=0.1)
    run(2, opt_a, a)
    tensors, meta = flatten_optimizer_state(opt_a.state_dict())
    tensors = {k: v.clone() for k, v in tensors.items()}  # state_dict() shares the live tensors
    assert all(torch.is_tensor(v) for v in tensors.values()) and json.dumps(meta)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.Adam(b.parameters(), lr=0.1)
    opt_b.load_state_dict(unflatten_optimizer_state(tensors, json.loads(json.dumps(meta))))
    run(3, opt_a, a)
    run(3, opt_b, b)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_rng_states_round_trip():
    g = torch.Generator().manual_seed(3)
    states = {k: v.clone() for k, v in rng_state_tensors(g).items()}
    assert all(v.dtype == torch.uint8 for v in states.values())
    first = (torch.rand(3), torch.rand(3, generator=g))
    set_rng_state_tensors(states, g)
    again = (torch.rand(3), torch.rand(3, generator=g))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_diffusers_model_opens_with_from_pretrained(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet_cfg = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                    norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D"))
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**unet_cfg)
    path = save_checkpoint(tmp_path, 1, modules={"model": unet}, tensors={}, state={})
    opened = diffusers.UNet2DModel.from_pretrained(path / "model")
    assert all(torch.equal(p, q) for p, q in zip(opened.parameters(), unet.parameters()))
    fresh = diffusers.UNet2DModel(**unet_cfg)
    load_checkpoint(path, {"model": fresh})
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), unet.parameters()))
    manifest = json.loads((path / "COMPLETE").read_text())
    assert "model/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert os.path.getsize(path / "model" / "config.json") > 0


def test_complete_is_the_shared_manifest_format(tmp_path):
    from trustdiff.persist import folder_files

    path = _save(tmp_path, 3, Net())
    manifest = json.loads((path / "COMPLETE").read_text())
    assert manifest["format"] == "trustdiff-checkpoint/1" and manifest["step"] == 3
    assert manifest["files"] == {k: v for k, v in folder_files(path).items() if k != "COMPLETE"}
    (path / "model" / "extra.safetensors").write_bytes(b"")   # a file the checkpoint did not write
    with pytest.raises(CheckpointError, match=r"checkpoint file .*extra\.safetensors is not in the manifest"):
        load_checkpoint(path, {"model": Net()})

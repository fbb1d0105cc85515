import json
import shutil
import types

import numpy as np
import pytest
import torch
from torch import nn

import trustdiff.train.feature_net as fidmod
from trustdiff.errors import CheckpointError, InputError
from trustdiff.metrics.fid import (
    FeatureNet,
    fd,
    fd_floor,
    fd_name,
    feature_stats,
    frechet_distance,
)
from trustdiff.nets import SmallCNN
from trustdiff.train.feature_net import cached_feature_net


class Flatten(nn.Module):
    """Identity feature net: pixels are the features (D = C·H·W)."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x.flatten(1)


def gaussian_images(n, mean, std, seed):
    """N×1×2×2 'images' whose 4 pixels are i.i.d. N(mean, std²), well inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (mean + std * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)).float()


def small_feature_net(seed=0, width=4):
    torch.manual_seed(seed)
    return FeatureNet(SmallCNN(in_channels=1, num_classes=3, width=width, resolution=8))


def test_frechet_distance_closed_form():
    # diagonal (commuting) covariances: FD = |Δμ|² + Σ_i (s1_i − s2_i)², s = standard deviations
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-9)
    # rotation-invariant: rotate both Gaussians by the same orthogonal Q
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    got = frechet_distance(q @ mu1, q @ np.diag(s1**2) @ q.T, q @ mu2, q @ np.diag(s2**2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)
    with pytest.raises(InputError, match="expected mu"):
        frechet_distance(mu1, np.eye(3), mu2[:2], np.eye(2))


def test_fd_of_two_gaussians_matches_closed_form():
    a, b = gaussian_images(4000, 0.5, 0.05, seed=1), gaussian_images(4000, 0.55, 0.08, seed=2)
    expected = 4 * 0.05**2 + 4 * (0.08 - 0.05) ** 2  # 4 dims: |Δμ|² + Σ(Δs)²
    assert fd(a, b, Flatten(4), batch_size=1000) == pytest.approx(expected, rel=0.1)


def test_torchmetrics_path_equals_closed_form():
    net = small_feature_net()  # D = 16 features
    g = torch.Generator().manual_seed(0)
    a = torch.rand(300, 1, 8, 8, generator=g)
    b = (torch.rand(300, 1, 8, 8, generator=g) * 0.8 + 0.1).clamp(0, 1)
    got = fd(a, b, net, batch_size=128)
    ref = frechet_distance(*feature_stats(net, a, 128), *feature_stats(net, b, 128))
    assert got > 0 and got == pytest.approx(ref, rel=1e-3)


def test_fd_identity_and_symmetry():
    net = small_feature_net()
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(200, 1, 8, 8, generator=g), torch.rand(200, 1, 8, 8, generator=g) ** 2
    ab, ba = fd(a, b, net), fd(b, a, net)
    assert abs(fd(a, a, net)) < 1e-3 * ab
    assert ab == pytest.approx(ba, rel=1e-4)
    assert fd_floor(a, b, net) == pytest.approx(ab, rel=1e-6)


def test_fd_name():
    assert fd_name("digits") == "FD-digits"
    with pytest.raises(InputError):
        fd_name("")


def test_bad_inputs():
    net, x = Flatten(4), gaussian_images(10, 0.5, 0.05, seed=0)
    with pytest.raises(InputError, match="uint8"):
        fd((x * 255).to(torch.uint8), x, net)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        fd(x, x * 4 - 1, net)
    with pytest.raises(InputError, match="channels"):
        fd(x, x.repeat(1, 3, 1, 1), net)
    with pytest.raises(InputError, match="at least 2"):
        fd(x, x[:1], net)
    with pytest.raises(InputError, match="nn.Module"):
        fd(x, x, lambda t: t.flatten(1))
    with pytest.raises(InputError, match="rank 4"):
        feature_stats(net, x[0], 8)


def test_feature_net_stays_in_eval_mode():
    net = small_feature_net()
    net.train()
    assert not net.training and not net.classifier.training and net.num_features == 16


def test_cached_feature_net_reuses_the_trained_net(tmp_path, monkeypatch):
    calls = []

    def fake_train(x, y, *, run_dir, steps, seed, batch_size, lr, width, num_classes, resume, device=None,
                   precision="fp32"):
        calls.append(run_dir)
        torch.manual_seed(len(calls))
        return FeatureNet(SmallCNN(in_channels=x.shape[1], num_classes=num_classes, width=width,
                                   resolution=x.shape[-1]))

    monkeypatch.setattr(fidmod, "train_feature_net", fake_train)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=g), torch.arange(20) % 3
    first = cached_feature_net(x, y, "abc123", tmp_path, steps=5, width=4)
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(calls) == 1 and len(folders) == 1
    cfg = json.loads((folders[0] / "config.json").read_text())
    assert cfg["data"] == "abc123" and cfg["net"]["num_classes"] == 3 and cfg["train"]["steps"] == 5

    second = cached_feature_net(x, y, "abc123", tmp_path, steps=5, width=4)
    assert len(calls) == 1  # loaded from the cache, not retrained
    torch.testing.assert_close(second(x), first(x))

    cached_feature_net(x, y, "other-data", tmp_path, steps=5, width=4)
    cached_feature_net(x, y, "abc123", tmp_path, steps=6, width=4)
    assert len(calls) == 3  # a different data hash or train config is a different net

    weights = folders[0] / "model.safetensors"
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF                 # same size, one byte different: only the hash sees it
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as e:       # a corrupted entry is reported, not used
        cached_feature_net(x, y, "abc123", tmp_path, steps=5, width=4)
    msg = str(e.value)
    assert "model.safetensors is corrupted" in msg and "to recompute it" in msg and "\n" not in msg
    weights.write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        cached_feature_net(x, y, "abc123", tmp_path, steps=5, width=4)
    assert len(calls) == 3
    # a folder without a manifest (killed before it was published, or an older trustdiff's) is recomputed
    (folders[0] / "trustdiff-manifest.json").unlink()
    again = cached_feature_net(x, y, "abc123", tmp_path, steps=5, width=4)
    assert len(calls) == 4 and weights.read_bytes() != b"torn"
    torch.testing.assert_close(again(x), cached_feature_net(x, y, "abc123", tmp_path, steps=5, width=4)(x))
    assert len(calls) == 4
    with pytest.raises(InputError, match="labels"):
        cached_feature_net(x, y.float(), "abc123", tmp_path, steps=5, width=4)


def test_train_feature_net_integration(tmp_path):
    train = pytest.importorskip("trustdiff.train")
    if not hasattr(train, "fit"):
        pytest.skip("trustdiff.train.fit is not there yet")
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = (0.2 + 0.6 * y.float()[:, None, None, None] + 0.1 * torch.rand(64, 1, 8, 8, generator=g)).clamp(0, 1)
    net = fidmod.train_feature_net(x, y, run_dir=tmp_path / "run", steps=30, seed=0, batch_size=32, width=4, lr=3e-3)
    assert isinstance(net, FeatureNet) and net(x).shape == (64, 16)
    with torch.no_grad():
        assert (net.classifier(x).argmax(1) == y).float().mean() > 0.9
    # the cache with the real loop: the entry is published whole and its training run removed; a
    # run killed before publishing resumes from its checkpoints
    kw = dict(steps=30, batch_size=32, width=4)
    first = cached_feature_net(x, y, "two-blobs", tmp_path / "cache", **kw)
    (entry,) = (tmp_path / "cache").iterdir()
    assert {p.name for p in entry.iterdir()} == {"config.json", "model.safetensors", "trustdiff-manifest.json"}
    shutil.rmtree(entry)
    shutil.move(tmp_path / "run", tmp_path / "cache" / f"train-{entry.name}")   # as if killed before publishing
    again = cached_feature_net(x, y, "two-blobs", tmp_path / "cache", **kw)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [entry.name]
    torch.testing.assert_close(again(x), net(x))                     # resumed (at its end), not retrained
    assert not torch.allclose(again(x), first(x))


def test_train_feature_net_wiring_with_a_stand_in_fit(tmp_path, monkeypatch):
    """The call matches fit(model, loss_fn, (x, y), cfg, run_dir)."""
    seen = {}

    def fit(model, loss_fn, data, cfg, run_dir, *, resume=False, device=None, precision="fp32"):
        x, y = data
        seen.update(device=device, precision=precision)
        loss = loss_fn(model, x, y, torch.Generator().manual_seed(cfg.seed))
        seen.update(loss_shape=tuple(loss.shape), cfg=cfg, run_dir=run_dir)
        return types.SimpleNamespace(model=model, ema=None, step=cfg.steps, run_dir=run_dir,
                                     last_loss=float(loss.detach().mean()))

    monkeypatch.setattr(fidmod, "TrainConfig", lambda **kw: types.SimpleNamespace(**kw))
    monkeypatch.setattr(fidmod, "fit", fit)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    net = fidmod.train_feature_net(x, y, run_dir=tmp_path, steps=50, seed=3, width=4)
    assert seen["loss_shape"] == (6,) and seen["cfg"].steps == 50 and seen["cfg"].seed == 3
    assert seen["cfg"].progress is False and seen["run_dir"] == tmp_path
    assert seen["device"] == x.device and seen["precision"] == "fp32"      # trains where the images are
    assert net.classifier.config == dict(in_channels=1, num_classes=3, width=4, resolution=8)


def test_feature_net_follows_its_seed_not_the_callers_rng(tmp_path):
    """The FD feature net's initial weights come from its seed: the caller's RNG state (whatever
    ran before in the process) must not change the net, so FD-digits is a function of the data,
    the config and the seed."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.arange(64) % 4
    nets = []
    for i, state in enumerate((1, 2)):
        torch.manual_seed(state)                          # a different history before the call
        nets.append(fidmod.train_feature_net(x, y, run_dir=tmp_path / str(i), steps=2, seed=5, batch_size=16))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)

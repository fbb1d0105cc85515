"""The torchvision-free FID Inception-v3: architecture, strict loading, preprocessing.

Offline and with random weights: the real pt_inception-2015-12-05 file is not here, so these
tests pin the layout (parameter count, state-dict names and shapes) that the pytorch-fid and
torchvision sources load that file into, not numerical agreement with TF-FID.
"""
import pytest
import torch
from safetensors.torch import load_file, save_file

from trustdiff.errors import CheckpointError, InputError, UnsafeFileError
from trustdiff.metrics.fid import InceptionFeatureNet, convert_inception_weights, inception_feature_net
from trustdiff.nets.inception import FIDInceptionV3, resize_bilinear_tf1

# torchvision Inception3 with aux logits and 1000 classes has 27,161,264 parameters; its aux head
# has 3,326,696 (conv0 98,560 + conv1 2,459,136 + fc 769,000); the FID net has a 1008-way head
# (+8·2048 + 8 = 16,392) and no aux head; the FID pooling changes add no parameters.
EXPECTED_PARAMS = 27_161_264 - 3_326_696 + 16_392  # = 23,850,960


@pytest.fixture(scope="module")
def state():
    """A random-init state dict of the FID network (stands in for the real weights)."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    with torch.no_grad():  # non-trivial BN statistics, so a round trip is a real check
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def weights_file(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "inception.safetensors"
    save_file(state, str(path))
    return path


def test_parameter_count_and_names(state):
    net = FIDInceptionV3()
    assert EXPECTED_PARAMS == 23_850_960
    assert sum(p.numel() for p in net.parameters()) == EXPECTED_PARAMS
    # 94 conv+BN units (conv.weight + 5 BN tensors each) and the fc head: 94·6 + 2 entries
    assert len(state) == 94 * 6 + 2
    assert sum(k.endswith(".bn.running_var") for k in state) == 94
    assert not any(k.startswith("AuxLogits") for k in state)
    assert state["fc.weight"].shape == (1008, 2048) and state["fc.bias"].shape == (1008,)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert "Conv2d_4a_3x3.bn.running_mean" in state and "Mixed_7a.branch7x7x3_4.bn.num_batches_tracked" in state


def test_roundtrip_forward_and_grey(state, weights_file):
    fnet = inception_feature_net(weights_file)  # strict load, no allow_pickle needed
    assert isinstance(fnet, InceptionFeatureNet) and fnet.num_features == 2048
    loaded = fnet.net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    fnet.train()
    assert not fnet.training and not any(m.training for m in fnet.modules())
    assert not any(p.requires_grad for p in fnet.parameters())

    g = torch.Generator().manual_seed(1)
    grey = torch.rand(1, 1, 16, 16, generator=g)
    x = torch.cat([grey.expand(-1, 3, -1, -1), torch.rand(1, 3, 16, 16, generator=g)])
    with torch.no_grad():
        f = fnet(x)
        f_grey = fnet(grey)
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all() and not torch.equal(f[0], f[1])
    torch.testing.assert_close(f_grey[0], f[0], rtol=1e-4, atol=1e-5)  # grey = RGB with equal channels


def test_missing_key_names_the_file(state, tmp_path):
    path = tmp_path / "short.safetensors"
    save_file({k: v for k, v in state.items() if k != "Mixed_6b.branch1x1.conv.weight"}, str(path))
    with pytest.raises(CheckpointError) as e:
        inception_feature_net(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "Mixed_6b.branch1x1.conv.weight" in msg

    path2 = tmp_path / "shape.safetensors"
    save_file(dict(state, **{"fc.weight": torch.zeros(1000, 2048)}), str(path2))
    with pytest.raises(CheckpointError, match="shape mismatch") as e:
        inception_feature_net(path2)
    assert "\n" not in str(e.value) and str(path2) in str(e.value)


def test_missing_num_batches_tracked_is_accepted(state, tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(path))
    fnet = inception_feature_net(path)
    assert torch.equal(fnet.net.state_dict()["Mixed_5b.branch1x1.bn.running_var"],
                       state["Mixed_5b.branch1x1.bn.running_var"])


def test_pickle_needs_the_flag_and_converts(state, tmp_path):
    with pytest.raises(InputError, match="no file"):
        inception_feature_net(tmp_path / "missing.pth")
    pth = tmp_path / "pt_inception.pth"
    torch.save(state, pth)
    with pytest.raises(UnsafeFileError):
        inception_feature_net(pth)
    out = tmp_path / "pt_inception.safetensors"
    with pytest.warns(UserWarning, match="SHA-256"):  # random weights: not the published file
        assert convert_inception_weights(pth, out) == out
    converted = load_file(str(out))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    with pytest.raises(InputError, match=".safetensors"):
        convert_inception_weights(pth, tmp_path / "x.pth")


def test_input_checks(weights_file):
    with pytest.raises(InputError, match="preprocess"):
        inception_feature_net(weights_file, preprocess="bicubic")
    fnet = InceptionFeatureNet(FIDInceptionV3())
    with pytest.raises(InputError, match="channels"):
        fnet(torch.zeros(1, 4, 8, 8))


def test_tf1_bilinear_resize():
    x = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    # TF 1.x samples i·(in/out) = 0, .5, 1, 1.5 (clamped at the last pixel), not half-pixel centres
    want = torch.tensor([0.0, 5.0, 10.0, 10.0]).expand(4, 4)
    torch.testing.assert_close(resize_bilinear_tf1(x, 4)[0, 0], want)
    y = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resize_bilinear_tf1(y, 5), y)  # same size: identity
    z = resize_bilinear_tf1(torch.rand(1, 3, 7, 9), 4)
    assert z.shape == (1, 3, 4, 4)

import json

import pytest
import torch

from trustdiff.errors import InputError
from trustdiff.nets import SmallCNN, build_classifier, build_cond_unet, build_unet, null_label


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("size,channels", [("tiny", 1), ("small", 1), ("base", 3)])
def test_unet_forward_with_float_timesteps(size, channels):
    torch.manual_seed(0)
    net = build_unet(size, resolution=16, channels=channels)
    x = torch.randn(2, channels, 16, 16)
    with torch.no_grad():
        y = net(x, torch.tensor([0.3, -1.7])).sample
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_small_and_base_sizes():
    assert 1e6 <= n_params(build_unet("small", resolution=16, channels=1)) <= 2e6
    assert 5e6 <= n_params(build_unet("base", resolution=32, channels=3)) <= 10e6


def test_float_timesteps_are_not_truncated():
    torch.manual_seed(0)
    net = build_unet("tiny", resolution=16, channels=1)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        a, b = (net(x, torch.tensor([t])).sample for t in (0.3, 0.7))
    assert (a - b).abs().max() > 1e-6  # an int cast would map both to 0


def test_ddpm_cifar_parameter_count():
    net = build_unet("ddpm-cifar", resolution=32, channels=3)
    assert abs(n_params(net) - 35.7e6) <= 0.2e6
    assert net.config.dropout == 0.1


def test_resolution_channels_and_size_errors():
    with pytest.raises(InputError, match=r"^network 'small' needs a resolution divisible by 4, got 18$"):
        build_unet("small", resolution=18, channels=1)
    with pytest.raises(InputError, match="divisible by 8"):
        build_unet("ddpm-cifar", resolution=20, channels=3)
    with pytest.raises(InputError, match="channels 1, 3 or 4"):
        build_unet("tiny", resolution=16, channels=2)
    with pytest.raises(InputError, match="tiny, small, base, ddpm-cifar"):
        build_unet("huge", resolution=16, channels=1)
    with pytest.raises(InputError, match="known sizes: tiny, small"):
        build_cond_unet("base", resolution=16, channels=1, cross_attention_dim=8)


def test_class_conditional_null_label():
    torch.manual_seed(0)
    net = build_unet("tiny", resolution=16, channels=1, num_classes=10)
    assert net.config.num_class_embeds == 11 and null_label(net) == 10
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        y = net(torch.cat([x[:1], x[:1]]), t, class_labels=torch.tensor([3, null_label(net)])).sample
    assert y.shape == x.shape and (y[0] - y[1]).abs().max() > 1e-6  # the null class is its own row
    with pytest.raises(InputError, match="unconditional"):
        null_label(build_unet("tiny", resolution=16, channels=1))


def test_cond_unet_forward():
    torch.manual_seed(0)
    net = build_cond_unet("tiny", resolution=16, channels=1, cross_attention_dim=12)
    with torch.no_grad():
        y = net(torch.randn(2, 1, 16, 16), torch.tensor([0.1, 2.0]), torch.randn(2, 5, 12)).sample
    assert y.shape == (2, 1, 16, 16)


def test_small_cnn_shapes_config_and_rebuild():
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3, num_classes=7, width=8, resolution=16)
    x = torch.rand(5, 3, 16, 16)
    assert net(x).shape == (5, 7) and net.features(x).shape == (5, 32)
    clone = build_classifier(SmallCNN.arch, **json.loads(json.dumps(net.config)))
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone(x), net(x))
    # GroupNorm: an image's output does not depend on the rest of the batch
    torch.testing.assert_close(net(x[:1]), net(x)[:1], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"N×3×16×16"):
        net(torch.rand(5, 3, 8, 8))
    with pytest.raises(InputError, match="unknown classifier"):
        build_classifier("resnet")
    with pytest.raises(InputError, match="divisible by 4"):
        SmallCNN(resolution=18)


def test_gradients_reach_the_input():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    SmallCNN(width=8)(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    z = torch.randn(2, 1, 16, 16, requires_grad=True)
    build_unet("tiny", resolution=16, channels=1)(z, torch.tensor([0.2, 0.4])).sample.square().sum().backward()
    assert z.grad.abs().sum() > 0

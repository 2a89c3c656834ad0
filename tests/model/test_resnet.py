"""Norm-free ResNet-34 backbone of Ψ's global encoder."""

import pytest
import torch

from model.networks.resnet import ResNetBackbone, ResNetConfig


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_output_stride_and_channels(stride):
    net = ResNetBackbone(ResNetConfig.tiny().model_copy(update={"output_stride": stride}))
    out = net(torch.randn(1, 5, 64, 64))
    assert out.shape == (1, 16, 64 // stride, 64 // stride)


def test_stride_8_dilates_every_conv_of_layer3_and_layer4_like_smp():
    net = ResNetBackbone(ResNetConfig())
    for name, expected in (("layer3", 2), ("layer4", 4)):
        convs = [m for m in getattr(net, name).modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.stride == (1, 1) for c in convs)
        assert all(c.dilation == (expected, expected) for c in convs if c.kernel_size == (3, 3))
    assert net.layer2[0].conv1.stride == (2, 2)


def test_resnet34_layout_without_normalization():
    with torch.device("meta"):
        net = ResNetBackbone(ResNetConfig())
    keys = net.state_dict().keys()
    assert len(keys) == 1 + 2 * (3 + 4 + 6 + 3) + 3  # stem + 2 convs per block + 3 shortcut projections
    assert {k for k in keys if "downsample" in k} == {f"layer{i}.0.downsample.0.weight" for i in (2, 3, 4)}
    assert not any("bn" in k or "bias" in k for k in keys)
    assert net.conv1.weight.shape == (64, 5, 7, 7)


def test_first_block_of_strided_layers_keeps_its_projection_at_equal_widths():
    net = ResNetBackbone(ResNetConfig(widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1), stem_channels=8))
    assert net.layer1[0].downsample is None
    assert all(getattr(net, f"layer{i}")[0].downsample is not None for i in (2, 3, 4))


def test_bad_input_and_config():
    net = ResNetBackbone(ResNetConfig.tiny())
    with pytest.raises(ValueError, match="expected \\(B, 5, H, W\\)"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="output_stride"):
        ResNetConfig(output_stride=4)

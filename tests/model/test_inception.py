"""The FID Inception-v3: the weights file's key layout, the FID variant's pooling, frozen BN, the input contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.networks.inception import FID_FEATURE_DIM, ConvBN, FIDInceptionE, FIDInceptionV3, FrozenBatchNorm2d
from tests.model.official_keys import state_dict_shapes

# Facts of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torch-fidelity's converter
# utils/util_convert_inception_weights.py writes exactly these keys from the TF graph): 94 conv blocks x
# (conv.weight + bn weight/bias/running_mean/running_var) + fc.weight + fc.bias.
FILE_KEYS = 94 * 5 + 2
FILE_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),  # pool_features 32 in Mixed_5b, 64 in 5c/5d
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_2.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
# torchvision documents inception_v3 (1000 classes, with its auxiliary classifier) at 27,161,264 parameters.
TORCHVISION_INCEPTION_V3_PARAMS = 27_161_264


@pytest.fixture(scope="module")
def layout() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return state_dict_shapes(FIDInceptionV3())


def test_state_dict_is_the_fid_weights_file_layout(layout):
    assert len(layout) == FILE_KEYS
    assert {k: layout[k] for k in FILE_SHAPES} == FILE_SHAPES
    assert not [k for k in layout if "num_batches_tracked" in k or "AuxLogits" in k]
    # Same trunk as torchvision's: our tensors minus BN running statistics and the 8 extra TF classes, plus
    # torchvision's auxiliary head, give its documented parameter count.
    running = sum(torch.Size(s).numel() for k, s in layout.items() if ".running_" in k)
    ours = sum(torch.Size(s).numel() for s in layout.values()) - running - 8 * 2048 - 8
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
    assert ours + aux == TORCHVISION_INCEPTION_V3_PARAMS


def test_frozen_batch_norm_is_eval_mode_batch_norm():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6, eps=1e-3).eval()
    for t in (ref.weight, ref.bias, ref.running_mean):
        t.data.normal_()
    ref.running_var.data.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "num_batches_tracked"})
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(frozen(x), ref(x))


def test_pools_ignore_the_padding_and_mixed_7c_max_pools():
    """The FID graph's pooling: a constant input stays constant up to the border (TF's average ignores the
    zero padding), and Mixed_7c pools its pool branch with a max (a negative constant stays negative there)."""
    torch.manual_seed(0)
    for max_pool in (False, True):
        block = FIDInceptionE(4, max_pool=max_pool).eval()
        # only the pool branch's conv sees the pooled input: make it an identity on channel 0
        conv = block.branch_pool.conv
        conv.weight.data.zero_()
        conv.weight.data[0, 0] = 1.0
        x = torch.full((1, 4, 6, 6), 2.0)
        x[..., 0, 0] = -1.0  # one low corner pixel: the average pools pull its neighbours down, a max does not
        with torch.no_grad():
            pooled = block(x)[0, -192] * (1 + 1e-3) ** 0.5  # the pool branch's first channel, BN eps undone
        if max_pool:
            torch.testing.assert_close(pooled, torch.full_like(pooled, 2.0))
        else:
            assert pooled[5, 5].item() == pytest.approx(2.0) and pooled[0, 5].item() == pytest.approx(2.0)
            assert pooled[0, 0].item() == pytest.approx((3 * 2.0 - 1.0) / 4)  # the corner: 4 valid pixels, not 9


def test_features_take_images_in_0_1_at_any_size():
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    grey = torch.full((1, 3, 64, 64), 0.3)
    with torch.no_grad():
        small, large = net(grey), net(torch.full((1, 3, 200, 200), 0.3))  # resized to 299² first
        other = net(torch.rand(2, 3, 80, 80))
    assert small.shape == (1, FID_FEATURE_DIM) and other.shape == (2, FID_FEATURE_DIM)
    torch.testing.assert_close(small, large)  # a constant image is the same constant at 299²
    assert torch.all(small >= 0) and not torch.allclose(other[0], other[1])  # ReLU'd pool3 features, per image


def test_conv_block_keys_are_torchvision_basic_conv2d():
    assert list(state_dict_shapes(ConvBN(3, 8, (1, 7), padding=(0, 3)))) == [
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]  # fmt: skip

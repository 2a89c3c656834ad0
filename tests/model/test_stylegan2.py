"""StyleGAN2 ops, layers, mapping / synthesis networks and the super-resolution module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from model.networks.stylegan2.discriminator import MinibatchStdLayer
from model.networks.stylegan2.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)
from model.networks.stylegan2.mapping import MappingNetwork
from model.networks.stylegan2.synthesis import Generator, SynthesisBlock
from model.networks.superresolution import SuperresolutionConfig, SuperresolutionHybrid8XDC
from tests.model.official_keys import official_shapes, state_dict_shapes


def _upfirdn_reference(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Textbook definition on one (H, W) channel: zero-insert, pad/crop, true 2-D convolution, decimate."""
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    z[::up, ::up] = x
    px0, px1, py0, py1 = pad
    z = np.pad(z, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    z = z[max(-py0, 0): z.shape[0] - max(-py1, 0), max(-px0, 0): z.shape[1] - max(-px1, 0)]
    return scipy.signal.convolve2d(z, f, mode="valid")[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2, 0, 1)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)),
                                         (2, 2, (0, -1, 1, 0)), (3, 1, (1, 1, 2, 2)), (2, 1, (-1, 3, 0, -2)),
                                         (4, 1, (5, -3, -2, 6))])
def test_upfirdn2d_matches_direct_convolution(up, down, pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    f = torch.rand(3, 4, generator=g, dtype=torch.float32)  # asymmetric, so a flip error would show
    y = upfirdn2d(x, f, up=up, down=down, padding=list(pad))
    for n in range(2):
        for ch in range(3):
            ref = _upfirdn_reference(x[n, ch].numpy(), f.double().numpy(), up, down, pad)
            np.testing.assert_allclose(y[n, ch].numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("up,down,pad,flip,separable", [(1, 1, (1, 2, 0, 1), False, False),
                                                         (2, 1, (2, 1, 2, 1), True, False),
                                                         (1, 2, (1, 1, 1, 1), False, True),
                                                         (2, 2, (0, -1, 1, 0), False, False),
                                                         (3, 1, (1, 1, 2, 2), True, True)])
def test_upfirdn2d_gradients_are_the_exact_adjoint_to_second_order(up, down, pad, flip, separable):
    # The backward is the op itself with up/down swapped and the filter flipped; gradcheck compares it with
    # finite differences, gradgradcheck does the same for the double backward the R1 penalty takes.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.rand(5 if separable else (3, 4), generator=g, dtype=torch.float64)

    def op(t):
        return upfirdn2d(t, f, up=up, down=down, padding=list(pad), flip_filter=flip, gain=1.7)

    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


def test_upfirdn2d_half_inputs_are_filtered_in_float32():
    x = torch.randn(1, 1, 8, 8).bfloat16()
    f = setup_filter([1, 3, 3, 1])
    y = upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1])
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), upfirdn2d(x.float(), f, up=2, padding=[2, 1, 2, 1]), rtol=8e-3, atol=0)


@pytest.mark.parametrize("up,down,pad", [(1, 1, (3, 4, 4, 3)), (2, 1, (4, 3, 4, 3)), (1, 2, (3, 3, 3, 3)),
                                         (3, 1, (-1, 2, 3, 0))])
def test_upfirdn2d_separable_filter_equals_its_outer_product(up, down, pad):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    f = torch.rand(8, generator=g, dtype=torch.float64)
    for flip in (False, True):
        kw = dict(up=up, down=down, padding=list(pad), flip_filter=flip, gain=2.0)
        torch.testing.assert_close(upfirdn2d(x, f, **kw), upfirdn2d(x, torch.outer(f, f), **kw), rtol=1e-12, atol=1e-12)


def test_setup_filter_normalizes_and_chooses_separable():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and torch.isclose(f.sum(), torch.tensor(1.0))
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert setup_filter(list(range(1, 9))).shape == (8,)  # >= 8 taps: separable (official rule)
    with torch.device("meta"):
        assert setup_filter([1, 3, 3, 1]).device.type == "meta"


def test_resampling_keeps_constant_images_constant_inside():
    f = setup_filter([1, 3, 3, 1])
    x = torch.full((1, 2, 8, 8), 0.7)
    up = upsample2d(x, f)
    down = downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.tensor(0.7))  # DC gain 1 away from the zero padding
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.tensor(0.7))


def test_conv2d_resample_equals_conv_around_resampling_in_the_interior():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 12, 12, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    assert torch.allclose(conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))
    up = conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)  # true convolution
    ref = F.conv2d(upsample2d(x, f), w.flip([2, 3]), padding=1)
    assert up.shape == (1, 3, 24, 24)
    assert torch.allclose(up[..., 6:18, 6:18], ref[..., 6:18, 6:18])  # borders differ: padding is applied once
    down = conv2d_resample(x, w, f=f, down=2, padding=1)
    ref = downsample2d(F.conv2d(x, w, padding=1), f)
    assert down.shape == (1, 3, 6, 6)
    assert torch.allclose(down[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])


def test_bias_act_defaults_gain_and_clamp():
    x = torch.tensor([[-1.0, 2.0]])
    b = torch.tensor([0.5, -0.5])
    y = bias_act(x, b, act="lrelu")
    assert torch.allclose(y, torch.tensor([[-0.5 * 0.2, 1.5]]) * math.sqrt(2))
    assert torch.allclose(bias_act(x, act="linear", gain=3.0, clamp=4.0), torch.tensor([[-3.0, 4.0]]))
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act(x, act="gelu")
    with pytest.raises(ValueError, match="bias shape"):
        bias_act(x, torch.zeros(3))


def test_fully_connected_layer_uses_equalized_learning_rate():
    torch.manual_seed(0)
    fc = FullyConnectedLayer(16, 4, lr_multiplier=0.01, bias_init=2.0)
    x = torch.randn(3, 16)
    expected = x @ (fc.weight * 0.01 / 4).t() + fc.bias * 0.01
    assert torch.allclose(fc(x), expected, atol=1e-6)
    assert fc.weight.shape == (4, 16) and torch.all(fc.bias == 2.0)
    assert fc.weight.std() > 10  # stored as randn / lr_multiplier


def test_conv2d_layer_frozen_weights_are_buffers():
    layer = Conv2dLayer(3, 4, 3, trainable=False)
    assert [n for n, _ in layer.named_parameters()] == []
    assert {"weight", "bias", "resample_filter"} <= set(layer.state_dict())


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_demodulation_gives_unit_norm_filters(fused):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 6, generator=g)
    weight = torch.randn(5, 4, 3, 3, generator=g)
    styles = torch.rand(2, 4, generator=g) + 0.5
    y = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=fused)
    for n in range(2):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        w = w / w.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)  # unit L2 norm per output filter
        assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(5))
        assert torch.allclose(y[n:n + 1], F.conv2d(x[n:n + 1], w, padding=1), atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_shared_styles_equal_the_per_sample_path(fused, up, demodulate):
    """A (1, I) style for a batch of N is the (N, I) style repeated: same output, same gradients."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 6, 6, generator=g)
    weight = torch.randn(5, 4, 3, 3, generator=g, requires_grad=True)
    style = (torch.rand(1, 4, generator=g) + 0.5).requires_grad_()
    noise = torch.randn(1, 1, 6 * up, 6 * up, generator=g)
    f = setup_filter([1, 3, 3, 1])
    kwargs = dict(noise=noise, up=up, padding=1, resample_filter=f, demodulate=demodulate, fused_modconv=fused,
                  flip_weight=up == 1)
    shared = modulated_conv2d(x, weight, style, **kwargs)
    shared_grads = torch.autograd.grad(shared.square().sum(), [weight, style])
    repeated = modulated_conv2d(x, weight, style.expand(3, -1), **kwargs)
    repeated_grads = torch.autograd.grad(repeated.square().sum(), [weight, style])
    assert shared.shape == repeated.shape == (3, 5, 6 * up, 6 * up)
    assert torch.allclose(shared, repeated, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, repeated_grads):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match=r"styles must be \(3, 4\) or \(1, 4\)"):
        modulated_conv2d(x, weight, style.expand(2, -1), **kwargs)


def test_modulated_conv_shared_styles_run_one_dense_convolution(monkeypatch):
    """The shared path convolves the whole batch with one weight (groups=1), never per-sample weights."""
    import model.networks.stylegan2.layers as layers

    calls = []
    real = layers.conv2d_resample

    def spy(x, w, *args, **kwargs):
        calls.append((tuple(x.shape), tuple(w.shape), kwargs.get("groups", 1)))
        return real(x, w, *args, **kwargs)

    monkeypatch.setattr(layers, "conv2d_resample", spy)
    x, weight = torch.randn(4, 6, 5, 5), torch.randn(7, 6, 3, 3)
    modulated_conv2d(x, weight, torch.rand(1, 6) + 0.5, padding=1, fused_modconv=True)
    modulated_conv2d(x, weight, torch.rand(4, 6) + 0.5, padding=1, fused_modconv=True)
    assert calls == [((4, 6, 5, 5), (7, 6, 3, 3), 1), ((1, 24, 5, 5), (28, 6, 3, 3), 4)]


def test_mapping_truncation_psi_zero_gives_w_avg_and_psi_one_is_identity():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, c_dim=5, w_dim=6, num_ws=4, num_layers=2)
    mapping.w_avg.normal_()
    z, c = torch.randn(3, 8), torch.randn(3, 5)
    ws = mapping(z, c)
    assert ws.shape == (3, 4, 6)
    assert torch.allclose(mapping(z, c, truncation_psi=0.0), mapping.w_avg.expand(3, 4, 6))
    cut = mapping(z, c, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], mapping.w_avg.expand(3, 2, 6)) and torch.allclose(cut[:, 2:], ws[:, 2:])
    half = mapping(z, c, truncation_psi=0.5)
    assert torch.allclose(half, (ws + mapping.w_avg) / 2, atol=1e-6)
    before = mapping.w_avg.clone()
    mapping(z, c, update_emas=True)
    assert torch.allclose(mapping.w_avg, 0.998 * before + 0.002 * ws[:, 0].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="c must be"):
        mapping(z, torch.randn(3, 4))


def _tiny_generator() -> Generator:
    return Generator(16, 0, 16, img_resolution=16, img_channels=6, mapping_kwargs={"num_layers": 2},
                     channel_base=256, channel_max=16, num_fp16_res=2, conv_clamp=256)


def test_synthesis_network_shapes_num_ws_and_const_noise_determinism():
    torch.manual_seed(0)
    g = _tiny_generator().eval()
    assert g.num_ws == 1 + 2 + 2 + 1  # 4²: conv1; 8², 16²: conv0 + conv1; + the last ToRGB (others share ws)
    for layer in g.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    ws = g.mapping(torch.randn(2, 16), None)
    img, x = g.synthesis(ws, noise_mode="const")
    assert img.shape == (2, 6, 16, 16) and x.shape == (2, 16, 16, 16)
    assert img.dtype == torch.float32  # fp16 blocks run fp32 off CUDA
    assert torch.equal(img, g.synthesis(ws, noise_mode="const")[0])
    assert not torch.allclose(img, g.synthesis(ws, noise_mode="random")[0])
    fused = g.synthesis(ws, noise_mode="none", fused_modconv=True)[0]
    assert torch.allclose(fused, g.synthesis(ws, noise_mode="none", fused_modconv=False)[0], atol=1e-5)
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(ws[:, :-1])


def test_generator_gradients_reach_every_parameter():
    torch.manual_seed(0)
    g = _tiny_generator().train()
    img = g(torch.randn(2, 16), None, noise_mode="random")
    img.square().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_synthesis_block_without_upsampling_keeps_resolution():
    block = SynthesisBlock(8, 8, w_dim=4, resolution=16, img_channels=3, is_last=True, up=1)
    x, img = block(torch.randn(1, 8, 16, 16), None, torch.randn(1, 3, 4))
    assert x.shape == (1, 8, 16, 16) and img.shape == (1, 3, 16, 16)


def test_minibatch_std_appends_group_stddev():
    x = torch.stack([torch.full((2, 3, 3), 1.0), torch.full((2, 3, 3), 3.0)])  # std over the pair = 1
    y = MinibatchStdLayer(group_size=2)(x)
    assert y.shape == (2, 3, 3, 3)
    assert torch.allclose(y[:, 2], torch.ones(2, 3, 3), atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        MinibatchStdLayer(group_size=2)(torch.randn(3, 2, 3, 3))


def test_superresolution_paper_keys_equal_official_psi_subset():
    with torch.device("meta"):
        sr = SuperresolutionHybrid8XDC(channels=32, img_resolution=512, sr_num_fp16_res=4, sr_antialias=True)
    expected = {k.removeprefix("superresolution."): v for k, v in official_shapes("psi").items()
                if k.startswith("superresolution.")}
    assert len(expected) == 38
    assert state_dict_shapes(sr) == expected


def test_superresolution_tiny_shapes_ws_ones_and_input_checks():
    torch.manual_seed(0)
    cfg = SuperresolutionConfig.tiny()
    sr = SuperresolutionHybrid8XDC(cfg).eval()
    rgb, feat = torch.randn(2, 3, 8, 8), torch.randn(2, 8, 8, 8)
    ws = torch.randn(2, 5, 32)
    out = sr(rgb, feat, ws)
    assert out.shape == (2, 3, 64, 64)
    # only the last w styles the SR layers
    ws2 = ws.clone()
    ws2[:, :-1] = 0
    assert torch.equal(out, sr(rgb, feat, ws2))
    ones = SuperresolutionHybrid8XDC(cfg.model_copy(update={"use_ws_ones": True})).eval()
    ones.load_state_dict(sr.state_dict())
    assert torch.equal(ones(rgb, feat, ws), ones(rgb, feat, torch.randn(2, 5, 32)))
    # one w for the whole batch (Ψ's w_avg) = that w repeated per image, in eval and in training mode
    w1 = torch.randn(1, 5, 32)
    assert torch.allclose(sr(rgb, feat, w1), sr(rgb, feat, w1.expand(2, -1, -1)), atol=1e-5)
    sr.train()
    assert torch.allclose(sr(rgb, feat, w1), sr(rgb, feat, w1.expand(2, -1, -1)), atol=1e-5)
    sr.eval()
    with pytest.raises(ValueError, match=r"ws must be \(B=2 or 1"):
        sr(rgb, feat, torch.randn(3, 5, 32))
    with pytest.raises(ValueError, match="x must be"):
        sr(rgb, torch.randn(2, 7, 8, 8), ws)
    with pytest.raises(ValueError, match="4 x input_resolution"):
        SuperresolutionHybrid8XDC(cfg.model_copy(update={"img_resolution": 32}))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_superresolution_shared_style_on_cuda_fp16_blocks_and_bf16_autocast():
    """On CUDA the SR blocks run in fp16 (official sr_num_fp16_res=4) and Ψ renders under bf16 autocast: the
    shared-style dense convolutions must give the per-image grouped result within that precision."""
    torch.manual_seed(0)
    sr = SuperresolutionHybrid8XDC(SuperresolutionConfig()).cuda().eval()
    feat = torch.rand(4, 32, 128, 128, device="cuda") * 2 - 1
    w = torch.randn(1, 1, 512, device="cuda")
    with torch.no_grad():
        reference = sr(feat[:, :3], feat, w.expand(4, -1, -1)).float()
        for autocast in (False, True):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                shared = sr(feat[:, :3], feat, w).float()
                per_image = sr(feat[:, :3], feat, w.expand(4, -1, -1)).float()
            # relative to the image's range: fp16 blocks round each layer to ~1e-3, bf16 to ~8e-3
            tol = (5e-2 if autocast else 2e-2) * reference.abs().max().item()
            assert (shared - per_image).abs().max().item() <= tol
            assert (shared - reference).abs().max().item() <= tol

"""Dual discriminator: official key layout, input assembly, conditioning, R1-ability."""

from __future__ import annotations

import pytest
import torch

from model.networks.discriminator import DiscriminatorConfig, DualDiscriminator
from tests.model.official_keys import official_shapes, state_dict_shapes


@pytest.mark.parametrize("name", ["discriminator", "genhead_D"])
def test_paper_state_dict_equals_official_keys_and_shapes(name):
    with torch.device("meta"):
        d = DualDiscriminator(DiscriminatorConfig())
    assert state_dict_shapes(d) == official_shapes(name)


def _inputs(b: int = 4, res: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(image=torch.randn(b, 3, res, res, generator=g),
                image_raw=torch.randn(b, 3, res // 2, res // 2, generator=g),
                uv=torch.randn(b, 3, res, res, generator=g), seg=torch.randn(b, 1, res // 2, res // 2, generator=g),
                c=torch.randn(b, 25, generator=g))


def test_tiny_output_shape_and_camera_conditioning():
    torch.manual_seed(0)
    d = DualDiscriminator(DiscriminatorConfig.tiny())
    assert d.cfg.input_channels == 10  # sr rgb + raw rgb + uv + seg
    x = _inputs()
    logits = d(**x)
    assert logits.shape == (4, 1) and logits.dtype == torch.float32
    other_c = dict(x, c=torch.randn(4, 25))
    assert not torch.allclose(logits, d(**other_c))
    assert torch.equal(logits, d(**x))  # no randomness without disc_c_noise


def test_raw_image_is_upsampled_to_the_image_size():
    d = DualDiscriminator(DiscriminatorConfig.tiny())
    x = _inputs()
    stacked = d.assemble_input(x["image"], x["image_raw"], x["uv"], x["seg"])
    assert stacked.shape == (4, 10, 32, 32)
    assert torch.equal(stacked[:, :3], x["image"]) and torch.equal(stacked[:, 6:9], x["uv"])
    raw_mean = x["image_raw"].mean(dim=(2, 3))
    assert torch.allclose(stacked[:, 3:6].mean(dim=(2, 3)), raw_mean, atol=0.05)  # bilinear keeps the mean


def test_r1_penalty_is_differentiable_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    d = DualDiscriminator(DiscriminatorConfig.tiny())
    x = _inputs()
    image = x.pop("image").requires_grad_(True)
    image_raw = x.pop("image_raw").requires_grad_(True)
    logits = d(image, image_raw=image_raw, **x)
    (grad_image, grad_raw) = torch.autograd.grad(logits.sum(), [image, image_raw], create_graph=True)
    assert grad_image.shape == image.shape and grad_image.abs().sum() > 0 and grad_raw.abs().sum() > 0
    r1 = grad_image.square().sum(dim=(1, 2, 3)).mean() + grad_raw.square().sum(dim=(1, 2, 3)).mean()
    (r1 + torch.nn.functional.softplus(logits).mean()).backward()
    missing = [n for n, p in d.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_missing_or_malformed_inputs_are_named():
    d = DualDiscriminator(DiscriminatorConfig.tiny())
    x = _inputs()
    with pytest.raises(ValueError, match="uv must be"):
        d(**dict(x, uv=None))
    with pytest.raises(ValueError, match="image must be"):
        d(**dict(x, image=torch.randn(4, 3, 16, 16)))
    with pytest.raises(ValueError, match="c must be"):
        d(**dict(x, c=torch.randn(4, 16)))
    with pytest.raises(ValueError, match="multiple of the minibatch-std group"):
        d(**_inputs(b=3))


def test_unconditional_single_image_discriminator():
    cfg = DiscriminatorConfig.tiny().model_copy(update={"c_dim": 0, "has_superresolution": False, "has_uv": False,
                                                         "has_seg": False})
    d = DualDiscriminator(cfg)
    assert not hasattr(d, "mapping") and cfg.input_channels == 3
    assert d(torch.randn(2, 3, 32, 32), None).shape == (2, 1)


def test_freeze_layers_turns_leading_layers_into_buffers():
    d = DualDiscriminator(DiscriminatorConfig.tiny().model_copy(update={"freeze_layers": 2}))
    params = {n for n, _ in d.named_parameters()}
    assert "b32.fromrgb.weight" not in params and "b32.conv0.weight" not in params
    assert "b32.conv1.weight" in params
    assert "b32.fromrgb.weight" in d.state_dict()

"""Loss terms of Ψ_3d / Ψ training (model/losses.py): targets, pairs, values and gradients."""

from __future__ import annotations

import pytest
import torch

from model import losses as L


def test_targets_split_the_resized_image_into_foreground_and_background():
    image = torch.full((2, 3, 32, 32), 0.5)
    seg = torch.ones(2, 1, 32, 32)
    seg[..., :, :16] = -1  # left half background
    t = L.reconstruction_targets(image, seg, 8)
    assert t.image_raw.shape == (2, 3, 8, 8) and t.seg.shape == (2, 1, 8, 8)
    # away from the seam (antialiased resize blurs one pixel there)
    assert torch.allclose(t.image_raw_wobg[..., 5:], torch.full_like(t.image_raw_wobg[..., 5:], 0.5))
    assert torch.allclose(t.image_raw_wobg[..., :3], torch.full_like(t.image_raw_wobg[..., :3], -1.0))
    assert torch.allclose(t.background[..., :3], torch.full_like(t.background[..., :3], 0.5))
    assert torch.allclose(t.background[..., 5:], torch.full_like(t.background[..., 5:], -1.0))
    assert not t.background_given
    given = L.reconstruction_targets(image, seg, 8, background=torch.zeros(2, 3, 16, 16))
    assert given.background_given and torch.equal(given.background, torch.zeros(2, 3, 8, 8))


def test_four_pairs_and_the_masked_generated_background():
    gen = {k: torch.zeros(1, 3, 8, 8) for k in ("image_raw", "image_raw_wobg")}
    gen["image"] = torch.zeros(1, 3, 16, 16)
    gen["rgb_bg"] = torch.ones(1, 3, 8, 8)  # a wrong background ...
    seg = torch.ones(1, 1, 8, 8)  # ... where the target is all head does not count (official masking)
    t = L.reconstruction_targets(torch.zeros(1, 3, 16, 16), seg, 8)
    pairs = L.image_pairs(gen, t)
    assert len(pairs) == 4
    assert torch.allclose(pairs[3][0], torch.full((1, 3, 8, 8), -1.0))
    assert L.l1_term(pairs).item() == pytest.approx(0.0)
    without_background = {k: v for k, v in gen.items() if k != "rgb_bg"}
    assert len(L.image_pairs(without_background, t)) == 3


def test_l1_and_lpips_terms_sum_over_pairs():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert L.l1_term([(a, b), (a, a)]).item() == 1.0
    calls = []
    L.lpips_term([(a, b), (b, b)], lambda x, y: calls.append(1) or (x - y).abs().mean((1, 2, 3)))
    assert len(calls) == 2


def test_identity_depth_triplane_and_density_terms():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert L.identity_term(f, f).item() == pytest.approx(0.0)
    assert L.identity_term(f, -f).item() == pytest.approx(2.0)
    depth = torch.zeros(1, 1, 4, 4)
    seg = -torch.ones(1, 1, 4, 4)
    seg[..., :2, :] = 1  # top half foreground
    assert L.depth_term(depth, torch.ones(1, 1, 4, 4), seg).item() == pytest.approx(0.5)
    assert L.depth_term(depth, torch.ones(1, 1, 8, 8), seg).item() == pytest.approx(0.5)  # resized target
    with pytest.raises(ValueError, match="triplane features disagree"):
        L.triplane_term(torch.zeros(1, 4, 8), torch.zeros(1, 4, 32))
    sigma = torch.cat([torch.zeros(1, 5, 1), torch.ones(1, 5, 1)], dim=1)
    assert L.density_tv_term(sigma).item() == 1.0


def test_adversarial_terms_are_the_softplus_gan_losses():
    logits = torch.tensor([[0.0], [2.0]])
    sp = torch.nn.functional.softplus
    assert L.generator_adversarial_term(logits).item() == pytest.approx(sp(-logits).mean().item())
    value = L.discriminator_adversarial_term(real_logits=logits, fake_logits=-logits).item()
    assert value == pytest.approx(2 * sp(-logits).mean().item())


def test_r1_is_half_gamma_times_the_squared_input_gradient():
    w = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    seg = torch.randn(4, 1, 2, 2, requires_grad=True)
    # D = 0.5 sum(w x²) + 0.5 sum(seg²): dD/dx = w x, dD/dseg = seg
    logits = 0.5 * ((w * x**2).sum(dim=(1, 2, 3)) + (seg**2).sum(dim=(1, 2, 3)))[:, None]
    r1 = L.r1_term(logits, {"image": x, "seg": seg, "uv": x}, {"image": 2.0, "seg": 1.0, "uv": 0.0})
    per_sample = (2.0 / 2) * ((w * x) ** 2).sum(dim=(1, 2, 3)) + (1.0 / 2) * (seg**2).sum(dim=(1, 2, 3))
    assert r1.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    r1.backward()  # the penalty is differentiable (create_graph): D can be trained on it
    assert x.grad is not None and torch.isfinite(x.grad).all()

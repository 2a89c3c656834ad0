"""GenHead generator: official key layout, mapping/truncation, part fusion, rendering end to end (tiny)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from model.cameras import camera_label, intrinsics_normalized, look_at_cam2world
from model.networks.genhead import GenHead, GenHeadConfig
from model.networks.genhead_parts import part_radiance_field
from model.rendering.config import RenderingConfig
from tests.model.official_keys import official_shapes, state_dict_shapes


class StubDeformer:
    """Protocol stand-in: points stay put (each part shifted a little), masks are fixed rectangles."""

    def __init__(self, eye: float = 0.0, mouth: float = 0.0, inside_eye_box: float = 0.0) -> None:
        self.eye, self.mouth, self.inside = eye, mouth, inside_eye_box
        self.mask_calls: list[int] = []

    def __call__(self, points: torch.Tensor) -> SimpleNamespace:
        shift = torch.tensor([0.01, 0.0, 0.0])
        return SimpleNamespace(canonical_eye=points + shift, canonical_face=points, canonical_mouth=points - shift,
                               inside_eye_box=torch.full(points.shape[:2], self.inside))

    def part_masks(self, c: torch.Tensor, resolution: int) -> SimpleNamespace:
        self.mask_calls.append(resolution)
        full = torch.ones(c.shape[0], 1, resolution, resolution)
        return SimpleNamespace(eye=full * self.eye, mouth=full * self.mouth)


def _cameras(b: int) -> torch.Tensor:
    origin = torch.tensor([[0.4, 0.3, 3.9], [-0.5, 0.1, 4.2], [0.0, -0.2, 4.0]])[:b]
    return camera_label(look_at_cam2world(origin, torch.tensor([[0.0, 0.0, 0.03]]).expand(b, 3), None),
                        intrinsics_normalized())


def _tiny(**update) -> GenHead:
    torch.manual_seed(0)
    g = GenHead(GenHeadConfig.tiny().model_copy(update=update))
    with torch.no_grad():  # official zero-inits the density head; give the field some structure
        g.decoder.out_sigma.weight.normal_()
        g.backbone.mapping.w_avg.normal_()
    return g


def test_paper_state_dict_equals_official_keys_except_the_flame_deformer():
    with torch.device("meta"):
        g = GenHead(GenHeadConfig())
    official = official_shapes("genhead")
    ours = state_dict_shapes(g)
    assert ours == {k: v for k, v in official.items() if not k.startswith("deformer.")}
    assert len(ours) == 285 and g.num_ws == 14
    assert {k.split(".")[0] for k in official.keys() - ours.keys()} == {"deformer"}


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="6 x decoder.n_features"):
        GenHeadConfig(triplane_channels=96)
    with pytest.raises(ValueError, match="superresolution"):
        GenHeadConfig.model_validate(GenHeadConfig.tiny().model_dump() | {"img_resolution": 128})


def test_mapping_condition_and_truncation():
    g = _tiny()
    z, c, shape = torch.randn(2, 32), _cameras(2), torch.randn(2, 300)
    ws = g.mapping(z, c, shape)
    assert ws.shape == (2, g.num_ws, 32)
    assert not torch.allclose(ws, g.mapping(z, c, shape + 1))  # FLAME shape is part of the condition
    assert torch.allclose(g.mapping(z, c, shape, truncation_psi=0.0, truncation_cutoff=14),
                          g.backbone.mapping.w_avg.expand_as(ws))
    assert torch.allclose(g.mapping(z, c, shape, truncation_psi=1.0), ws)
    with pytest.raises(ValueError, match="FLAME shape must be"):
        g.mapping(z, c, None)
    with pytest.raises(ValueError, match="conditioning camera c"):
        g.mapping(z, c[:, :16], shape)


def test_forward_shapes_ranges_and_seeded_determinism():
    g = _tiny().eval()
    z, c, shape = torch.randn(2, 32), _cameras(2), torch.randn(2, 300)
    deformer = StubDeformer(eye=0.0, mouth=0.0)

    def run(seed: int):
        return g(z, c, c, shape, deformer, noise_mode="const", generator=torch.Generator().manual_seed(seed))

    out = run(0)
    assert out.image.shape == (2, 3, 64, 64) and out.image_raw.shape == (2, 3, 16, 16)
    assert out.image_feature.shape == (2, 8, 16, 16) and out.image_depth.shape == (2, 1, 16, 16)
    assert out.seg.shape == (2, 1, 16, 16) and out.seg.min() >= -1 and out.seg.max() <= 1
    assert out.image_raw.min() >= -1.01 and out.image_raw.max() <= 1.01
    radius = c[:, :16].reshape(2, 4, 4)[:, :3, 3].norm(dim=1)
    assert torch.all((out.image_depth > radius.reshape(2, 1, 1, 1) - 0.65 - 0.1)
                     & (out.image_depth < radius.reshape(2, 1, 1, 1) + 0.65 + 0.1))  # inside |cam_z| +- box/2
    assert deformer.mask_calls == [64]  # masks are rasterized at the final image size
    again = run(0)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    assert not torch.equal(out.image_raw, run(1).image_raw)  # stratified jitter follows the generator


def test_gradients_reach_every_parameter():
    g = _tiny(superresolution=GenHeadConfig.tiny().superresolution.model_copy(update={"noise_mode": "const"})).train()
    z, c, shape = torch.randn(2, 32), _cameras(2), torch.randn(2, 300)
    out = g(z, c, c, shape, StubDeformer(eye=0.5, mouth=0.3, inside_eye_box=1.0), truncation_psi=1.0,
            noise_mode="const")
    (out.image.square().mean() + out.image_raw.square().mean() + out.image_depth.mean()).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def _field_output(planes: torch.Tensor, deformer: StubDeformer, eye: float, mouth: float, auto_fuse: bool):
    b, r, s = 1, 5, 4
    decoder = lambda feats, dirs: (feats.mean(1)[..., :3], feats.mean(1)[..., 3:4])  # noqa: E731
    field = part_radiance_field(planes, decoder, deformer, torch.full((b, r, 1), eye), torch.full((b, r, 1), mouth),
                                RenderingConfig.tiny(), auto_fuse=auto_fuse)
    coords = torch.rand(b, r, s, 3, generator=torch.Generator().manual_seed(3)) - 0.5
    return field(coords, torch.zeros(b, r, s, 3))


@pytest.mark.parametrize("auto_fuse", [False, True])
def test_part_fusion_reads_the_planes_the_masks_select(auto_fuse):
    torch.manual_seed(0)
    planes = torch.rand(1, 6, 4, 8, 8)
    other_eye = planes.clone()
    other_eye[:, :3] = torch.rand(1, 3, 4, 8, 8)
    other_face = planes.clone()
    other_face[:, 3:] = torch.rand(1, 3, 4, 8, 8)
    # Face pixels: the eye/mouth planes are never read.
    face_px = _field_output(planes, StubDeformer(inside_eye_box=1.0), 0.0, 0.0, auto_fuse)
    assert all(torch.equal(a, b) for a, b in zip(face_px, _field_output(other_eye, StubDeformer(inside_eye_box=1.0),
                                                                      0.0, 0.0, auto_fuse)))
    # Eye pixels inside the eye boxes: only the eye planes count.
    eye_px = _field_output(planes, StubDeformer(inside_eye_box=1.0), 1.0, 0.0, auto_fuse)
    assert all(torch.equal(a, b) for a, b in zip(eye_px, _field_output(other_face, StubDeformer(inside_eye_box=1.0),
                                                                     1.0, 0.0, auto_fuse)))
    # Eye pixels outside the eye boxes fall back to the face planes.
    outside = _field_output(planes, StubDeformer(inside_eye_box=0.0), 1.0, 0.0, auto_fuse)
    assert torch.allclose(outside[1], face_px[1])
    # Mouth pixels: hard mask uses the mouth part only; auto-fuse adds both densities.
    mouth_px = _field_output(planes, StubDeformer(inside_eye_box=0.0), 0.0, 1.0, auto_fuse)
    changed = _field_output(other_face, StubDeformer(inside_eye_box=0.0), 0.0, 1.0, auto_fuse)
    assert torch.equal(mouth_px[1], changed[1]) != auto_fuse


def test_synthesis_rejects_bad_inputs():
    g = _tiny()
    ws = g.mapping(torch.randn(2, 32), _cameras(2), torch.randn(2, 300))
    with pytest.raises(ValueError, match="render camera c"):
        g.synthesis(ws, _cameras(2)[:, :16], StubDeformer(), z_bg=torch.randn(2, 32))
    with pytest.raises(ValueError, match="needs z_bg"):
        g.synthesis(ws, _cameras(2), StubDeformer())
    with pytest.raises(ValueError, match="patch-training"):
        g.synthesis(ws, _cameras(2), StubDeformer(), z_bg=torch.randn(2, 32), neural_rendering_resolution=256)

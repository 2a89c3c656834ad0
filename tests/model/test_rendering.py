import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from model.cameras import FOCAL_NORMALIZED, intrinsics_normalized, look_at_cam2world
from model.rendering import (
    ImportanceRenderer,
    OSGDecoder,
    OSGDecoderConfig,
    RayMarcher,
    RaySampler,
    RenderingConfig,
    camera_depth_of_origin,
    plane_mean,
    project_onto_planes,
    render_rays,
    sample_from_planes,
    sample_importance,
    sample_pdf,
    sample_stratified,
    to_image,
    triplane_axes,
    unify_samples,
)

# ---------------------------------------------------------------- helpers


def frontal_camera(radius: float = 4.0, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity-rotation OpenGL camera at (0, 0, radius) looking down -z, and its intrinsics."""
    cam2world = torch.eye(4).repeat(batch, 1, 1)
    cam2world[:, 2, 3] = radius
    return cam2world, intrinsics_normalized()[None].repeat(batch, 1, 1)


def constant_field(density: float, colour: torch.Tensor):
    """Radiance field with the same raw density and colour everywhere."""

    def field(coords, directions):
        shape = coords.shape[:-1]
        return colour.expand(*shape, colour.numel()), torch.full((*shape, 1), density)

    return field


def slab_field(z0: float, half_width: float = 0.02, colour: float = 0.7):
    """Opaque slab |z - z0| < half_width, empty elsewhere."""

    def field(coords, directions):
        inside = (coords[..., 2:3] - z0).abs() < half_width
        sigma = torch.where(inside, torch.full_like(coords[..., 2:3], 200.0), torch.full_like(coords[..., 2:3], -50.0))
        return torch.full_like(coords[..., :3], colour), sigma

    return field


def tiny_setup(seed: int = 0, batch: int = 2):
    torch.manual_seed(seed)
    decoder = OSGDecoder.from_config(OSGDecoderConfig.tiny())
    with torch.no_grad():  # a non-trivial density head (official init is zero)
        decoder.out_sigma.weight.normal_()
        decoder.out_sigma.bias.fill_(2.0)
    planes = torch.randn(batch, 3, 8, 16, 16)
    cam2world, intrinsics = frontal_camera(batch=batch)
    return decoder, planes, cam2world, intrinsics


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_official_rendering_kwargs():
    cfg = RenderingConfig()
    assert (cfg.depth_resolution, cfg.depth_resolution_importance) == (48, 48)
    assert cfg.ray_start == cfg.ray_end == "auto"
    assert cfg.box_warp == 1.3 and cfg.clamp_mode == "softplus"
    assert not cfg.disparity_space_sampling and not cfg.white_back and cfg.density_noise == 0
    assert cfg.samples_per_ray == 96
    tiny = RenderingConfig.tiny()
    assert (tiny.depth_resolution, tiny.depth_resolution_importance) == (8, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ray_start": "auto", "ray_end": 5.0}, "both be 'auto'"),
        ({"ray_start": 5.0, "ray_end": 3.0}, "ray_start < ray_end"),
        ({"depth_resolution": 3}, "depth_resolution must be >= 4"),
        ({"box_warp": 0.0}, "greater than 0"),
        ({"clamp_mode": "relu"}, "softplus"),
        ({"ray_march": 1}, "Extra inputs"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RenderingConfig(**kwargs)


def test_config_is_frozen_and_coarse_only_allows_few_samples():
    with pytest.raises(ValidationError):
        RenderingConfig().box_warp = 2.0
    assert RenderingConfig(depth_resolution=2, depth_resolution_importance=0).samples_per_ray == 2


# ---------------------------------------------------------------- rays


def test_centre_ray_of_frontal_camera_points_down_minus_z():
    cam2world, intrinsics = frontal_camera(radius=3.7)
    origins, directions = RaySampler()(cam2world, intrinsics, 5)
    assert origins.shape == directions.shape == (1, 25, 3)
    torch.testing.assert_close(origins, torch.tensor([0.0, 0.0, 3.7]).expand(1, 25, 3))
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(1, 25))
    torch.testing.assert_close(directions[0, 12], torch.tensor([0.0, 0.0, -1.0]))


def test_rays_follow_opengl_image_layout_and_fov():
    res = 4
    origins, directions = RaySampler()(*frontal_camera(), res)
    first, last_of_row = directions[0, 0], directions[0, res - 1]
    assert first[0] < 0 and first[1] > 0  # row 0, col 0 is top-left: -x, +y
    assert last_of_row[0] > 0 and last_of_row[1] > 0  # same row, right end
    assert directions[0, res * (res - 1), 1] < 0  # last row is at the bottom
    # Pixel centre 0.5/res from the left edge: tan(angle) = (0.5 - 0.5/res) / f.
    expected = (0.5 - 0.5 / res) / FOCAL_NORMALIZED
    assert (-first[0] / -first[2]).item() == pytest.approx(expected, rel=1e-5)


def test_rays_rotate_with_the_camera():
    origin = torch.tensor([[1.0, 0.5, 3.0]])
    cam2world = look_at_cam2world(origin, torch.zeros(1, 3))
    intrinsics = intrinsics_normalized()[None]
    _, dirs = RaySampler()(cam2world, intrinsics, 3)
    _, dirs_cam = RaySampler()(frontal_camera()[0], intrinsics, 3)
    torch.testing.assert_close(dirs, dirs_cam @ cam2world[:, :3, :3].transpose(1, 2))
    torch.testing.assert_close(dirs[0, 4], -origin[0] / origin.norm())  # centre ray hits the look-at point


def test_ray_sampler_rejects_bad_shapes():
    with pytest.raises(ValueError, match="cam2world"):
        RaySampler()(torch.eye(4), intrinsics_normalized()[None], 4)
    with pytest.raises(ValueError, match="intrinsics"):
        RaySampler()(torch.eye(4)[None], intrinsics_normalized(), 4)


def test_camera_depth_of_origin_matches_world2cam():
    cam2world = look_at_cam2world(torch.tensor([[0.3, -0.2, 4.1], [0.0, 0.0, 3.6]]), torch.tensor([[0, 0, 0.1]] * 2))
    torch.testing.assert_close(camera_depth_of_origin(cam2world), torch.linalg.inv(cam2world)[:, 2, 3])
    assert camera_depth_of_origin(frontal_camera(4.0)[0]).item() == pytest.approx(-4.0)


# ---------------------------------------------------------------- triplanes


def ramp_planes(size: int = 8) -> torch.Tensor:
    """(1, 3, 2, H, W): channel 0 = normalized width coordinate of each texel centre, 1 = height."""
    centres = (2 * torch.arange(size) + 1) / size - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u, v])[None, None].repeat(1, 3, 1, 1, 1)


def test_sample_from_planes_reads_xy_yz_zx_planes():
    box_warp = 2.0  # world == normalized plane coordinates
    points = torch.tensor([[[0.3, -0.4, 0.5], [-0.6, 0.2, -0.1]]])
    features = sample_from_planes(triplane_axes(), ramp_planes(), points, box_warp)  # (1, 3, 2, 2)
    x, y, z = points[0].unbind(-1)
    torch.testing.assert_close(features[0, 0], torch.stack([x, y], -1))
    torch.testing.assert_close(features[0, 1], torch.stack([y, z], -1))
    torch.testing.assert_close(features[0, 2], torch.stack([z, x], -1))


def test_sample_from_planes_scales_by_box_warp_and_zeroes_outside():
    planes = ramp_planes()
    inside = sample_from_planes(triplane_axes(), planes, torch.tensor([[[0.26, 0.13, -0.13]]]), 1.3)
    torch.testing.assert_close(inside[0, 0, 0], torch.tensor([0.4, 0.2]))
    outside = sample_from_planes(triplane_axes(), planes, torch.tensor([[[0.0, 0.0, 5.0]]]), 1.3)
    assert outside[0, 0].abs().max() < 0.2 and outside[0, 1].abs().max() == 0 and outside[0, 2].abs().max() == 0
    # per-image box_warp_scale shrinks the cube: the same point reads further out
    scaled = sample_from_planes(
        triplane_axes(), planes.repeat(2, 1, 1, 1, 1), torch.tensor([[[0.26, 0, 0]]] * 2), 1.3, torch.tensor([1.0, 0.5])
    )
    torch.testing.assert_close(scaled[:, 0, 0, 0], torch.tensor([0.4, 0.8]))


def test_plane_projection_rejects_oblique_axes_and_bad_shapes():
    with pytest.raises(ValueError, match="one-hot"):
        project_onto_planes(triplane_axes() * 0.5, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="coordinates"):
        sample_from_planes(triplane_axes(), torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 2, 2), 1.3)


def test_plane_mean_is_the_mean_over_planes_in_either_layout():
    """Bitwise the plain mean, for grid_sample's channel-first view and for contiguous features."""
    g = torch.Generator().manual_seed(5)
    planes = torch.randn(2, 3, 4, 8, 8, generator=g)
    points = torch.rand(2, 50, 3, generator=g) * 1.2 - 0.6
    sampled = sample_from_planes(triplane_axes(), planes, points, 1.3)  # (2, 3, 50, 4) view
    assert not sampled.is_contiguous()
    for features in (sampled, sampled.contiguous()):
        mean = plane_mean(features)
        assert mean.shape == (2, 50, 4) and mean.is_contiguous()
        assert torch.equal(mean, features.mean(1))
    with pytest.raises(ValueError, match="n_planes"):
        plane_mean(torch.zeros(2, 50, 4))


# ---------------------------------------------------------------- decoder


def test_osg_decoder_official_keys_init_and_formula():
    decoder = OSGDecoder()
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes == {
        "net.0.weight": (64, 32), "net.0.bias": (64,),
        "out_sigma.weight": (1, 64), "out_sigma.bias": (1,),
        "out_rgb.weight": (32, 64), "out_rgb.bias": (32,),
    }
    features = torch.randn(2, 3, 5, 32)
    rgb, sigma = decoder(features)
    assert rgb.shape == (2, 5, 32) and torch.equal(sigma, torch.zeros(2, 5, 1))  # zero-init density head
    with torch.no_grad():
        decoder.out_sigma.weight.normal_()
    rgb, sigma = decoder(features)
    # equalized-lr linear layers: weight * lr_mul / sqrt(fan_in)
    h = F.softplus(features.mean(1) @ (decoder.net[0].weight / math.sqrt(32)).T + decoder.net[0].bias)
    torch.testing.assert_close(sigma, h @ (decoder.out_sigma.weight / 8).T + decoder.out_sigma.bias)
    expected_rgb = torch.sigmoid(h @ (decoder.out_rgb.weight / 8).T + decoder.out_rgb.bias) * 1.002 - 0.001
    torch.testing.assert_close(rgb, expected_rgb)
    assert rgb.min() > -0.001 and rgb.max() < 1.001


def test_osg_decoder_rejects_wrong_feature_width():
    with pytest.raises(ValueError, match="sampled_features"):
        OSGDecoder.from_config(OSGDecoderConfig.tiny())(torch.zeros(1, 3, 4, 32))


# ---------------------------------------------------------------- ray marcher


def uniform_samples(start: float, end: float, n: int, rays: int = 3) -> torch.Tensor:
    return torch.linspace(start, end, n).reshape(1, 1, n, 1).repeat(1, rays, 1, 1)


@pytest.mark.parametrize("white_back", [False, True])
def test_constant_medium_matches_beer_lambert(white_back):
    raw_sigma, colour = 1.7, torch.tensor([0.2, 0.5, 0.9])
    depths = uniform_samples(3.0, 4.2, 25)
    colours = colour.expand(1, 3, 25, 3)
    out = RayMarcher()(colours, torch.full_like(depths, raw_sigma), depths, RenderingConfig(white_back=white_back))
    transmittance = math.exp(-F.softplus(torch.tensor(raw_sigma - 1)).item() * 1.2)
    torch.testing.assert_close(out.weights_sum, torch.full((1, 3, 1), 1 - transmittance))
    torch.testing.assert_close(out.background_transmittance, torch.full((1, 3, 1), transmittance))
    expected = colour * (1 - transmittance) + (transmittance if white_back else 0.0)
    torch.testing.assert_close(out.rgb, expected.expand(1, 3, 3))
    assert out.weights.shape == (1, 3, 24, 1)


def test_depth_of_thin_opaque_slab_and_of_empty_rays():
    depths = uniform_samples(3.0, 5.0, 201)
    sigma = torch.where((depths - 3.9).abs() < 0.015, 500.0, -60.0)
    out = RayMarcher()(torch.ones(1, 3, 201, 3), sigma, depths, RenderingConfig())
    torch.testing.assert_close(out.depth, torch.full((1, 3, 1), 3.9), atol=0.02, rtol=0)
    assert out.weights_sum.min() > 0.999
    # zero density everywhere: official sends the depth to the far end of the sampled range
    empty = RayMarcher()(torch.ones(1, 3, 201, 3), torch.full_like(depths, -math.inf), depths, RenderingConfig())
    torch.testing.assert_close(empty.depth, torch.full((1, 3, 1), 5.0))
    assert empty.weights_sum.abs().max() == 0


def test_ray_marcher_accumulates_bf16_inputs_in_fp32():
    depths = uniform_samples(3.0, 4.3, 96)
    sigma = torch.randn(1, 3, 96, 1) * 3
    colours = torch.rand(1, 3, 96, 4)
    ref = RayMarcher()(colours, sigma, depths, RenderingConfig())
    low = RayMarcher()(colours.bfloat16(), sigma.bfloat16(), depths, RenderingConfig())
    assert low.rgb.dtype == low.weights_sum.dtype == torch.float32
    torch.testing.assert_close(low.weights_sum, ref.weights_sum, atol=1e-2, rtol=0)
    torch.testing.assert_close(low.rgb, ref.rgb, atol=1e-2, rtol=0)


def test_ray_marcher_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        RayMarcher()(torch.ones(1, 2, 5, 3), torch.ones(1, 2, 4, 1), uniform_samples(1, 2, 5, 2), RenderingConfig())


# ---------------------------------------------------------------- sampling


def test_stratified_samples_cover_the_interval_with_shared_jitter():
    start, end = torch.tensor([[[3.0]], [[3.5]]]), torch.tensor([[[4.3]], [[4.8]]])
    plain = sample_stratified(start, end, n_rays=5, n_samples=6, perturb=False)
    assert plain.shape == (2, 5, 6, 1)
    torch.testing.assert_close(plain[0, 0, :, 0], torch.linspace(3.0, 4.3, 6))
    jittered = sample_stratified(start, end, 5, 6, generator=torch.Generator().manual_seed(0))
    offset = jittered - plain
    assert (offset >= 0).all() and (offset <= 1.3 / 5 + 1e-6).all()
    assert (jittered[:, 1:] == jittered[:, :1]).all()  # 'auto' bounds: one jitter per image


def test_stratified_per_ray_bounds_and_disparity_space():
    start, end = torch.full((1, 4, 1), 2.0), torch.full((1, 4, 1), 8.0)
    jittered = sample_stratified(start, end, 4, 5, generator=torch.Generator().manual_seed(0))
    assert not (jittered[:, 1:] == jittered[:, :1]).all()  # per-ray bounds: per-ray jitter
    disparity = sample_stratified(start, end, 4, 5, disparity_space=True, perturb=False)
    torch.testing.assert_close(disparity[0, 0, :, 0], 1 / torch.linspace(1 / 2, 1 / 8, 5))
    with pytest.raises(ValueError, match="ray bounds"):
        sample_stratified(torch.ones(1, 3, 1), torch.ones(1, 3, 1) * 2, 4, 5)


def test_sample_pdf_puts_samples_in_the_heavy_bin():
    bins = torch.linspace(0, 1, 11).repeat(4, 1)
    weights = torch.zeros(4, 10)
    weights[:, 6] = 1.0
    samples = sample_pdf(bins, weights, 64, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 64)
    assert ((samples >= 0.6) & (samples <= 0.7)).float().mean() > 0.99
    det = sample_pdf(bins, torch.ones(4, 10), 11, deterministic=True)
    torch.testing.assert_close(det, bins, atol=1e-4, rtol=0)  # uniform pdf: quantiles = bin edges
    with pytest.raises(ValueError, match="bins"):
        sample_pdf(bins, weights[:, :5], 3)


def test_importance_samples_concentrate_where_weights_are_high():
    depths = uniform_samples(3.0, 4.4, 48, rays=2)
    weights = torch.exp(-(((depths[:, :, :-1] + depths[:, :, 1:]) / 2 - 3.7) ** 2) / (2 * 0.03**2))
    fine = sample_importance(depths, weights, 48, generator=torch.Generator().manual_seed(0))
    assert fine.shape == (1, 2, 48, 1) and not fine.requires_grad
    near = ((fine - 3.7).abs() < 0.1).float().mean()
    assert near > 0.6  # the peak covers < 15% of the interval
    assert fine.min() >= 3.0 and fine.max() <= 4.4


def test_unify_samples_sorts_depths_and_carries_values():
    d1, d2 = torch.tensor([1.0, 3.0]).reshape(1, 1, 2, 1), torch.tensor([2.0, 0.5]).reshape(1, 1, 2, 1)
    depths, colours, densities = unify_samples(d1, d1.repeat(1, 1, 1, 3) * 10, -d1, d2, d2.repeat(1, 1, 1, 3) * 10, -d2)
    torch.testing.assert_close(depths[0, 0, :, 0], torch.tensor([0.5, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(colours[0, 0, :, 1], torch.tensor([5.0, 10.0, 20.0, 30.0]))
    torch.testing.assert_close(densities[0, 0, :, 0], -depths[0, 0, :, 0])


# ---------------------------------------------------------------- renderer


def test_render_rays_of_constant_field_matches_closed_form():
    cfg = RenderingConfig(ray_start=3.0, ray_end=4.0, depth_resolution=16, depth_resolution_importance=0, perturb=False)
    origins, directions = RaySampler()(*frontal_camera(), 4)
    colour = torch.tensor([0.1, 0.6, 0.3])
    out = render_rays(constant_field(0.4, colour), origins, directions, cfg)
    transmittance = math.exp(-F.softplus(torch.tensor(-0.6)).item() * 1.0)
    torch.testing.assert_close(out.features, (colour * (1 - transmittance)).expand(1, 16, 3))
    assert out.sample_depths.shape == (1, 16, 16, 1) and out.sample_weights.shape == (1, 16, 15, 1)


def test_importance_pass_finds_an_opaque_slab():
    cfg = RenderingConfig(depth_resolution=24, depth_resolution_importance=24)
    cam2world, _ = frontal_camera(4.0)
    origins, directions = RaySampler()(cam2world, intrinsics_normalized()[None], 3)
    out = render_rays(
        slab_field(0.1), origins, directions, cfg, cam_z=camera_depth_of_origin(cam2world),
        generator=torch.Generator().manual_seed(0),
    )
    centre_depths = out.sample_depths[0, 4, :, 0]
    assert ((centre_depths - 3.9).abs() < 0.1).sum() >= 20  # fine samples gather at the slab
    assert out.depth[0, 4].item() == pytest.approx(4.0 - 0.12, abs=0.02)  # slab front face: z = 0.12
    assert out.weights_sum[0, 4].item() > 0.99


def test_renderer_shapes_and_render_image_layout():
    decoder, planes, cam2world, intrinsics = tiny_setup()
    cfg = RenderingConfig.tiny()
    renderer = ImportanceRenderer()
    assert list(renderer.parameters()) == []
    g = torch.Generator().manual_seed(1)
    image = renderer.render_image(planes, decoder, cam2world, intrinsics, 6, cfg, generator=g)
    assert image.features.shape == (2, 8, 6, 6)
    assert image.depth.shape == image.weights_sum.shape == (2, 1, 6, 6)
    origins, directions = RaySampler()(cam2world, intrinsics, 6)
    out = renderer(planes, decoder, origins, directions, cfg, cam_z=camera_depth_of_origin(cam2world),
                   generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(to_image(out.features, 6), image.features)
    lo, hi = 4.0 - 0.65, 4.0 + 0.65 + 1.3 / 7
    assert image.depth.min() >= lo and image.depth.max() <= hi


def test_renderer_is_deterministic_for_a_seed():
    decoder, planes, cam2world, intrinsics = tiny_setup()
    renderer, cfg = ImportanceRenderer(), RenderingConfig.tiny()

    def run(seed):
        return renderer.render_image(
            planes, decoder, cam2world, intrinsics, 4, cfg, generator=torch.Generator().manual_seed(seed)
        ).features

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    fixed = cfg.model_copy(update={"perturb": False})
    a = renderer.render_image(planes, decoder, cam2world, intrinsics, 4, fixed).features
    b = renderer.render_image(planes, decoder, cam2world, intrinsics, 4, fixed).features
    assert torch.equal(a, b)


def test_gradients_reach_planes_and_decoder():
    decoder, planes, cam2world, intrinsics = tiny_setup()
    planes.requires_grad_(True)
    image = ImportanceRenderer().render_image(
        planes, decoder, cam2world, intrinsics, 4, RenderingConfig.tiny(), generator=torch.Generator().manual_seed(0)
    )
    (image.features.square().mean() + image.depth.mean() + image.weights_sum.mean()).backward()
    assert planes.grad is not None and planes.grad.abs().sum() > 0
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deform_fn_moves_sample_points_before_lookup():
    decoder, planes, cam2world, intrinsics = tiny_setup(batch=1)
    cfg, renderer = RenderingConfig.tiny(), ImportanceRenderer()
    seen = []

    def shift(coords):
        seen.append(coords.shape)
        return coords + torch.tensor([0.2, 0.0, 0.0])

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = renderer.render_image(planes, decoder, cam2world, intrinsics, 4, cfg, generator=g())
    shifted = renderer.render_image(planes, decoder, cam2world, intrinsics, 4, cfg, shift, generator=g())
    assert seen == [(1, 16 * 8, 3), (1, 16 * 8, 3)]  # coarse and fine passes, (B, P, 3)
    assert not torch.allclose(plain.features, shifted.features)
    # moving every sample point by +0.2 x is the same as moving the camera by +0.2 x
    origins, directions = RaySampler()(cam2world, intrinsics, 4)
    moved = renderer(planes, decoder, origins + torch.tensor([0.2, 0.0, 0.0]), directions, cfg,
                     cam_z=camera_depth_of_origin(cam2world), generator=g())
    torch.testing.assert_close(to_image(moved.features, 4), shifted.features)
    # an identity deformation renders exactly what no deformation renders
    identity = renderer.render_image(planes, decoder, cam2world, intrinsics, 4, cfg, lambda c: c, generator=g())
    torch.testing.assert_close(identity.features, plain.features)
    with pytest.raises(ValueError, match="deform_fn"):
        renderer.render_image(planes, decoder, cam2world, intrinsics, 4, cfg, lambda c: c[:, :5])


def test_auto_bounds_need_cam_z():
    decoder, planes, cam2world, intrinsics = tiny_setup()
    origins, directions = RaySampler()(cam2world, intrinsics, 2)
    with pytest.raises(ValueError, match="cam_z"):
        ImportanceRenderer()(planes, decoder, origins, directions, RenderingConfig.tiny())


def test_bf16_autocast_render_stays_close_to_fp32():
    decoder, planes, cam2world, intrinsics = tiny_setup()
    cfg, renderer = RenderingConfig.tiny(), ImportanceRenderer()
    ref = renderer.render_image(planes, decoder, cam2world, intrinsics, 4, cfg, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = renderer.render_image(
            planes, decoder, cam2world, intrinsics, 4, cfg, generator=torch.Generator().manual_seed(0)
        )
    assert low.features.dtype == low.weights_sum.dtype == torch.float32
    torch.testing.assert_close(low.weights_sum, ref.weights_sum, atol=3e-2, rtol=0)
    torch.testing.assert_close(low.features, ref.features, atol=3e-2, rtol=0)
    torch.testing.assert_close(low.depth, ref.depth, atol=3e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_render_matches_cpu():
    decoder, planes, cam2world, intrinsics = tiny_setup()
    cfg, renderer = RenderingConfig.tiny().model_copy(update={"perturb": False}), ImportanceRenderer()
    ref = renderer.render_image(planes, decoder, cam2world, intrinsics, 8, cfg)
    cuda = torch.device("cuda")
    out = renderer.render_image(planes.to(cuda), decoder.to(cuda), cam2world.to(cuda), intrinsics.to(cuda), 8, cfg)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = renderer.render_image(planes.to(cuda), decoder, cam2world.to(cuda), intrinsics.to(cuda), 8, cfg)
    torch.testing.assert_close(low.features.float().cpu(), ref.features, atol=3e-2, rtol=0)

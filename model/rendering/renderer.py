"""Two-pass (coarse + importance) volume rendering of a triplane radiance field."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from model.rendering.config import RenderingConfig
from model.rendering.fused_field import FusedTriplaneDecoder
from model.rendering.ray_marcher import RayMarcher
from model.rendering.ray_sampler import RaySampler, camera_depth_of_origin
from model.rendering.sampling import sample_importance, sample_stratified, unify_samples
from model.rendering.triplane import sample_from_planes, triplane_axes

# (coords (B,R,S,3), directions (B,R,S,3)) -> (rgb (B,R,S,C), raw sigma (B,R,S,1))
RadianceField = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# Maps observed-space sample points to the canonical space of the triplane: (B,P,3) -> (B,P,3).
DeformFn = Callable[[torch.Tensor], torch.Tensor]
Decoder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RenderOutput(NamedTuple):
    features: torch.Tensor  # (B, R, C) composited decoder features (rgb in the first 3)
    depth: torch.Tensor  # (B, R, 1)
    weights_sum: torch.Tensor  # (B, R, 1) opacity


class RenderResult(NamedTuple):
    """Everything the losses use: the image terms plus the merged samples (distortion loss)."""

    features: torch.Tensor  # (B, R, C)
    depth: torch.Tensor  # (B, R, 1)
    weights_sum: torch.Tensor  # (B, R, 1)
    sample_depths: torch.Tensor  # (B, R, S, 1) all samples, sorted (official 'interval')
    sample_weights: torch.Tensor  # (B, R, S-1, 1) official 'all_weights'


class RenderedImage(NamedTuple):
    features: torch.Tensor  # (B, C, H, W)
    depth: torch.Tensor  # (B, 1, H, W)
    weights_sum: torch.Tensor  # (B, 1, H, W)


def _scale_per_batch(box_warp_scale: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float or (B,) -> (B or 1, 1, 1) on like's device/dtype."""
    return torch.as_tensor(box_warp_scale, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def ray_bounds(
    cfg: RenderingConfig,
    ray_origins: torch.Tensor,
    cam_z: torch.Tensor | None,
    box_warp_scale: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ray_start, ray_end), each (B, 1, 1) for 'auto' (shared by the image's rays) or (B, R, 1)."""
    b, r, _ = ray_origins.shape
    if cfg.ray_start == "auto":
        if cam_z is None:
            raise ValueError("ray_start='auto' needs cam_z (B,): use camera_depth_of_origin(cam2world)")
        if cam_z.shape != (b,):
            raise ValueError(f"cam_z must be (B={b},), got {tuple(cam_z.shape)}")
        half = cfg.box_warp * _scale_per_batch(box_warp_scale, ray_origins) / 2
        centre = cam_z.to(ray_origins).abs().reshape(b, 1, 1)
        return centre - half, centre + half
    full = ray_origins.new_ones(b, r, 1)
    return full * cfg.ray_start, full * cfg.ray_end


def triplane_field(
    planes: torch.Tensor,
    decoder: Decoder,
    cfg: RenderingConfig,
    deform_fn: DeformFn | None = None,
    box_warp_scale: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
    fused: bool = False,
) -> RadianceField:
    """The radiance field of ``planes`` (B,3,C,H,W) read by ``decoder``, optionally deformed.

    ``fused``: when no gradient is recorded, sample the planes and run the (OSG) decoder in one Triton kernel
    (model.rendering.fused_field: same maths, fp32 outputs); with a gradient the eager path runs regardless.
    """
    axes = triplane_axes(device=planes.device)
    fused_decoder = FusedTriplaneDecoder(planes, decoder, cfg.box_warp, box_warp_scale) \
        if fused and not torch.is_grad_enabled() else None

    def field(coords: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, r, s, _ = coords.shape
        points = coords.reshape(b, r * s, 3)
        if deform_fn is not None:
            points = deform_fn(points)
            if points.shape != (b, r * s, 3):
                raise ValueError(f"deform_fn must return (B, P, 3) = {(b, r * s, 3)}, got {tuple(points.shape)}")
        if fused_decoder is not None:
            rgb, sigma = fused_decoder(points)
        else:
            features = sample_from_planes(axes, planes, points, cfg.box_warp, box_warp_scale)
            rgb, sigma = decoder(features, directions.reshape(b, r * s, 3))
        if cfg.density_noise > 0:
            noise = torch.randn(sigma.shape, generator=generator, dtype=sigma.dtype, device=sigma.device)
            sigma = sigma + noise * cfg.density_noise
        return rgb.reshape(b, r, s, -1), sigma.reshape(b, r, s, 1)

    return field


def render_rays(
    field: RadianceField,
    ray_origins: torch.Tensor,
    ray_directions: torch.Tensor,
    cfg: RenderingConfig,
    *,
    cam_z: torch.Tensor | None = None,
    box_warp_scale: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
    ray_marcher: RayMarcher | None = None,
) -> RenderResult:
    """Coarse stratified pass, importance pass where the coarse weights are high, merged composite.

    Same steps as the official ImportanceRenderer.forward; any RadianceField can be rendered (GenHead
    fuses its part triplanes inside its own field).
    """
    if ray_origins.dim() != 3 or ray_origins.shape[-1] != 3 or ray_directions.shape != ray_origins.shape:
        raise ValueError(
            f"ray_origins and ray_directions must both be (B, R, 3), got "
            f"{tuple(ray_origins.shape)} and {tuple(ray_directions.shape)}"
        )
    marcher = ray_marcher or RayMarcher()
    b, r, _ = ray_origins.shape
    start, end = ray_bounds(cfg, ray_origins, cam_z, box_warp_scale)

    def evaluate(depths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coords = ray_origins.unsqueeze(-2) + depths * ray_directions.unsqueeze(-2)  # (B, R, S, 3)
        return field(coords, ray_directions.unsqueeze(-2).expand_as(coords))

    depths = sample_stratified(
        start, end, r, cfg.depth_resolution, cfg.disparity_space_sampling, cfg.perturb, generator
    )
    colors, densities = evaluate(depths)
    if cfg.depth_resolution_importance > 0:
        coarse_weights = marcher.weights(densities, depths, cfg)  # the coarse composite itself is never used
        depths_fine = sample_importance(
            depths, coarse_weights, cfg.depth_resolution_importance, not cfg.perturb, generator
        )
        colors_fine, densities_fine = evaluate(depths_fine)
        depths, colors, densities = unify_samples(depths, colors, densities, depths_fine, colors_fine, densities_fine)
    out = marcher(colors, densities, depths, cfg)
    return RenderResult(out.rgb, out.depth, out.weights_sum, depths, out.weights)


class ImportanceRenderer(nn.Module):
    """Renders triplanes with an OSG-style decoder (no parameters of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.ray_sampler = RaySampler()
        self.ray_marcher = RayMarcher()

    def forward(
        self,
        planes: torch.Tensor,
        decoder: Decoder,
        ray_origins: torch.Tensor,
        ray_directions: torch.Tensor,
        cfg: RenderingConfig,
        deform_fn: DeformFn | None = None,
        *,
        cam_z: torch.Tensor | None = None,
        box_warp_scale: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
        fused: bool = False,
    ) -> RenderOutput:
        """planes (B,3,C,H,W), rays (B,R,3) -> (features (B,R,C_out), depth (B,R,1), weights_sum (B,R,1)).

        ``cam_z`` (B,) is required when cfg.ray_start is 'auto' (see camera_depth_of_origin);
        ``box_warp_scale`` (float or (B,)) shrinks the sampled cube per image (official Ψ_3d renders).
        For the merged samples too (distortion loss), call render_rays(triplane_field(...), ...).
        """
        field = triplane_field(planes, decoder, cfg, deform_fn, box_warp_scale, generator, fused)
        result = render_rays(
            field,
            ray_origins,
            ray_directions,
            cfg,
            cam_z=cam_z,
            box_warp_scale=box_warp_scale,
            generator=generator,
            ray_marcher=self.ray_marcher,
        )
        return RenderOutput(result.features, result.depth, result.weights_sum)

    def render_image(
        self,
        planes: torch.Tensor,
        decoder: Decoder,
        cam2world: torch.Tensor,
        intrinsics: torch.Tensor,
        resolution: int,
        cfg: RenderingConfig,
        deform_fn: DeformFn | None = None,
        *,
        box_warp_scale: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
        fused: bool = False,
    ) -> RenderedImage:
        """Render a resolution x resolution image per camera: features (B,C,H,W), depth and opacity (B,1,H,W)."""
        origins, directions = self.ray_sampler(cam2world, intrinsics, resolution)
        out = self.forward(
            planes,
            decoder,
            origins,
            directions,
            cfg,
            deform_fn,
            cam_z=camera_depth_of_origin(cam2world).to(origins),
            box_warp_scale=box_warp_scale,
            generator=generator,
            fused=fused,
        )
        return RenderedImage(*(to_image(t, resolution) for t in out))


def to_image(per_ray: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, R, C) per-ray values in RaySampler order -> (B, C, H, W) with R = H*W, row-major."""
    b, r, c = per_ray.shape
    if r != resolution * resolution:
        raise ValueError(f"{r} rays cannot form a {resolution}x{resolution} image")
    return per_ray.transpose(1, 2).reshape(b, c, resolution, resolution)

"""Triplane volume rendering (EG3D-style, as used by GenHead, Ψ_3d and Ψ)."""

from model.rendering.config import RenderingConfig
from model.rendering.decoder import DecoderOutput, OSGDecoder, OSGDecoderConfig
from model.rendering.ray_marcher import MarchResult, RayMarcher
from model.rendering.ray_sampler import RaySampler, camera_depth_of_origin
from model.rendering.renderer import (
    ImportanceRenderer,
    RenderedImage,
    RenderOutput,
    RenderResult,
    render_rays,
    to_image,
    triplane_field,
)
from model.rendering.sampling import sample_importance, sample_pdf, sample_stratified, unify_samples
from model.rendering.triplane import plane_mean, project_onto_planes, sample_from_planes, triplane_axes

__all__ = [
    "DecoderOutput",
    "ImportanceRenderer",
    "MarchResult",
    "OSGDecoder",
    "OSGDecoderConfig",
    "RayMarcher",
    "RaySampler",
    "RenderedImage",
    "RenderOutput",
    "RenderResult",
    "RenderingConfig",
    "camera_depth_of_origin",
    "plane_mean",
    "project_onto_planes",
    "render_rays",
    "sample_from_planes",
    "sample_importance",
    "sample_pdf",
    "sample_stratified",
    "to_image",
    "triplane_axes",
    "triplane_field",
    "unify_samples",
]

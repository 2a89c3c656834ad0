"""GenHead's part-wise radiance field: eyes / mouth / face deformed separately and fused per ray.

GenHead's triplane backbone emits 6 planes: planes 0-2 hold the eyes and the inner mouth, planes 3-5 the
rest of the face (official PartDeformImportanceRenderer with triplane_channels=192). Each sample point
is carried to canonical space three times by the FLAME-driven deformer (eye, face and mouth
deformations), and the two part fields are blended by rasterized eye / mouth masks of the FLAME mesh.

The deformer lives in model.deformation (it needs the FLAME mesh); GenHead only sees this protocol:

    deformer(points (B,P,3)) -> object with attributes
        canonical_eye   (B,P,3)  point moved by the eye-region deformation
        canonical_face  (B,P,3)  ... by the face-region deformation
        canonical_mouth (B,P,3)  ... by the lip-region deformation of the expression-free mesh
        inside_eye_box  (B,P)    1.0 inside the 1.2x bounding box of either eyeball, else 0.0
    deformer.part_masks(c (B,25), resolution) -> object with attributes, each (B,1,S,S) in [0,1]
        eye    eyeball mask x (1 - face-without-eyes mask)        (official eye_mask)
        mouth  head mask x (1 - head-without-inner-mouth mask)    (official mouth_mask)

A deformer is bound to one batch of FLAME parameters (official `G._deformer(shape, exp, pose, eye_pose)`).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from model.rendering.config import RenderingConfig
from model.rendering.fused_field import FusedTriplaneDecoder
from model.rendering.renderer import Decoder, RadianceField
from model.rendering.triplane import sample_from_planes, triplane_axes

N_PART_PLANES = 6  # 3 eye/mouth planes + 3 face planes


class PartCoordinatesLike(Protocol):
    canonical_eye: torch.Tensor
    canonical_face: torch.Tensor
    canonical_mouth: torch.Tensor
    inside_eye_box: torch.Tensor


class PartMasksLike(Protocol):
    eye: torch.Tensor
    mouth: torch.Tensor


class PartDeformer(Protocol):
    def __call__(self, points: torch.Tensor) -> PartCoordinatesLike: ...

    def part_masks(self, c: torch.Tensor, resolution: int) -> PartMasksLike: ...


def resize_mask(mask: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B,1,S,S) -> (B,1,r,r), antialiased bilinear (official F.interpolate(..., antialias=True))."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"part mask must be (B, 1, S, S), got {tuple(mask.shape)}")
    if mask.shape[-1] == resolution and mask.shape[-2] == resolution:
        return mask
    return F.interpolate(mask, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def _check_parts(parts: PartCoordinatesLike, b: int, p: int) -> None:
    for name in ("canonical_eye", "canonical_face", "canonical_mouth"):
        t = getattr(parts, name)
        if t.shape != (b, p, 3):
            raise ValueError(f"deformer returned {name} of shape {tuple(t.shape)}, expected {(b, p, 3)}")
    if parts.inside_eye_box.shape != (b, p):
        raise ValueError(f"deformer returned inside_eye_box of shape {tuple(parts.inside_eye_box.shape)}, "
                         f"expected {(b, p)}")


def part_radiance_field(planes: torch.Tensor, decoder: Decoder, deformer: PartDeformer, eye_mask: torch.Tensor,
                        mouth_mask: torch.Tensor, cfg: RenderingConfig, auto_fuse: bool,
                        generator: torch.Generator | None = None, fused: bool = False) -> RadianceField:
    """Radiance field of GenHead's 6 part planes (B,6,C,H,W); eye/mouth masks are per ray (B,R,1).

    `auto_fuse` (official: neural rendering resolution > 64) lets eye and face densities add up inside
    the mouth, colours softmax-weighted by density, instead of the hard mask blend. ``fused``: without a
    gradient, each part's sampling + decoder runs as one Triton kernel (model.rendering.fused_field).
    """
    if planes.ndim != 5 or planes.shape[1] != N_PART_PLANES:
        raise ValueError(f"part planes must be (B, {N_PART_PLANES}, C, H, W), got {tuple(planes.shape)}")
    axes = triplane_axes(device=planes.device)
    part_planes = {"eye": planes[:, :3], "face": planes[:, 3:]}  # eye/mouth planes, face planes
    kernels = {}
    if fused and not torch.is_grad_enabled():
        kernels = {name: FusedTriplaneDecoder(p, decoder, cfg.box_warp) for name, p in part_planes.items()}

    def decode(part: str, points: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if kernels:
            rgb, sigma = kernels[part](points)
        else:
            rgb, sigma = decoder(sample_from_planes(axes, part_planes[part], points, cfg.box_warp), directions)
        if cfg.density_noise > 0:
            noise = torch.randn(sigma.shape, generator=generator, dtype=sigma.dtype, device=sigma.device)
            sigma = sigma + noise * cfg.density_noise
        return rgb, sigma

    def field(coords: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, r, s, _ = coords.shape
        if eye_mask.shape != (b, r, 1) or mouth_mask.shape != (b, r, 1):
            raise ValueError(f"eye/mouth masks must be per ray (B={b}, R={r}, 1), "
                             f"got {tuple(eye_mask.shape)} and {tuple(mouth_mask.shape)}")
        points = coords.reshape(b, r * s, 3)
        dirs = directions.reshape(b, r * s, 3)
        parts = deformer(points)
        _check_parts(parts, b, r * s)

        mouth = mouth_mask.unsqueeze(2).expand(b, r, s, 1).to(coords.dtype)  # (B,R,S,1)
        inside = parts.inside_eye_box.reshape(b, r, s, 1).to(coords.dtype)
        # Inside the mouth the eye/mouth planes are read at the mouth-deformed point.
        eye_points = torch.where(mouth.reshape(b, r * s, 1) > 0, parts.canonical_mouth, parts.canonical_eye)
        rgb_eye, sigma_eye = decode("eye", eye_points, dirs)
        rgb_face, sigma_face = decode("face", parts.canonical_face, dirs)
        rgb_eye, rgb_face = rgb_eye.reshape(b, r, s, -1), rgb_face.reshape(b, r, s, -1)
        # The eye/mouth field only exists inside the eye boxes and the mouth.
        sigma_eye = sigma_eye.reshape(b, r, s, 1) * (inside + mouth)
        sigma_face = sigma_face.reshape(b, r, s, 1)

        eye_sel = eye_mask.unsqueeze(2) * inside  # (B,R,S,1): eye pixels, only inside the eye boxes
        face_sel = 1 - eye_sel - mouth
        sigma = sigma_eye * eye_sel + sigma_eye * mouth + sigma_face * face_sel
        rgb = rgb_eye * eye_sel + rgb_eye * mouth + rgb_face * face_sel
        if auto_fuse:
            weights = torch.softmax(torch.stack([sigma_eye, sigma_face], dim=-1), dim=-1)  # (B,R,S,1,2)
            sigma_both = sigma_eye + sigma_face
            rgb_both = weights[..., 0] * rgb_eye + weights[..., 1] * rgb_face
            in_mouth = (mouth > 0).to(sigma.dtype)
            sigma = sigma * (1 - in_mouth) + sigma_both * in_mouth
            rgb = rgb * (1 - in_mouth) + rgb_both * in_mouth
        return rgb, sigma

    return field

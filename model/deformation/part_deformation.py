"""GenHead's part-wise deformation: eyes, face and mouth each map to the canonical head separately.

Official: training/deformer/deformation.py ``closest_point_deformation_separate``. For each part,
a point takes the FLAME vertex of that part nearest to it, and moves by the inverse-squared-
distance weighted mean of (canonical - target) over that vertex's 1-ring region. The mouth uses
the target mesh without expression and eye pose (teeth follow the jaw only). Points are also
flagged as inside either eyeball's bounding box (enlarged 1.2x), which gates the eye planes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from model.deformation.config import DeformationConfig
from model.deformation.nearest import nearest_vertex


class PartVertexSets(NamedTuple):
    """Device-resident vertex ids of the parts (see model.deformation.flame_parts.FlameParts)."""

    left_eye: torch.Tensor  # (Ve/2,)
    right_eye: torch.Tensor  # (Ve/2,)
    face: torch.Tensor  # (Vf,)
    lips: torch.Tensor  # (Vl,)
    vertex_regions: torch.Tensor  # (V, K) padded with V


class PartDeformation(NamedTuple):
    canonical_eye: torch.Tensor  # (B, P, 3)
    canonical_face: torch.Tensor  # (B, P, 3)
    canonical_mouth: torch.Tensor  # (B, P, 3); zeros when the mouth part is off (official)
    dist_eye: torch.Tensor  # (B, P) distance to the nearest eyeball vertex
    dist_face: torch.Tensor  # (B, P)
    dist_mouth: torch.Tensor  # (B, P); 1e-6 when the mouth part is off (official sqrt(0 + 1e-12))
    inside_eye_box: torch.Tensor  # (B, P) float 0/1


def _region_offset(
    points: torch.Tensor,
    nearest: torch.Tensor,
    target: torch.Tensor,
    canonical: torch.Tensor,
    regions: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Weighted mean of canonical - target over the region of each point's nearest vertex -> (B, P, 3)."""
    n_vertices = target.shape[1]
    region = regions[nearest]  # (B, P, K), padded with n_vertices
    valid = region < n_vertices
    region = region.clamp_max(n_vertices - 1)
    bsz, p, k = region.shape
    flat = region.reshape(bsz, p * k, 1).expand(-1, -1, 3)
    tgt = torch.gather(target, 1, flat).reshape(bsz, p, k, 3)
    can = torch.gather(canonical.expand(bsz, -1, -1), 1, flat).reshape(bsz, p, k, 3)
    # The official code pads regions with a far-away point whose weight is ~1e-7; masking is the
    # same up to that rounding.
    inv = valid / ((points[:, :, None] - tgt).square().sum(-1) + eps)
    weights = inv / inv.sum(-1, keepdim=True)
    return (weights[..., None] * (can - tgt)).sum(-2)


def _inside_box(points: torch.Tensor, part: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, P) bool: inside the axis-aligned box of part vertices (B, Vp, 3), enlarged by scale."""
    centre = part.mean(1, keepdim=True)
    half = (part.amax(1, keepdim=True) - part.amin(1, keepdim=True)) * scale * 0.5
    return ((points - centre).abs() < half).all(-1)


def part_deformation(
    points: torch.Tensor,
    target: torch.Tensor,
    canonical: torch.Tensor,
    parts: PartVertexSets,
    cfg: DeformationConfig,
    mouth_target: torch.Tensor | None = None,
) -> PartDeformation:
    """Canonical coordinates of points (B,P,3) for each part.

    target (B,V,3): the posed FLAME mesh with the neck rotation already removed; canonical (1|B,V,3):
    the canonical head; mouth_target (B,V,3) or None: target without expression and eye pose, which
    switches the mouth part on.
    """
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != target.shape[0]:
        raise ValueError(f"points must be (B={target.shape[0]}, P, 3), got {tuple(points.shape)}")
    if target.shape[1] != parts.vertex_regions.shape[0]:
        raise ValueError(f"parts describe {parts.vertex_regions.shape[0]} vertices, the mesh has {target.shape[1]}")
    regions = parts.vertex_regions
    eyes = torch.cat([parts.left_eye, parts.right_eye])
    eps = cfg.region_weight_eps

    def part(ids: torch.Tensor, mesh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hit = nearest_vertex(points, mesh[:, ids], cfg.vertex_search_pairs, kernel=cfg.vertex_search_kernel)
        offset = _region_offset(points, ids[hit.index], mesh, canonical, regions, eps)
        return points + offset, torch.sqrt(hit.dist_sq + 1e-12)

    canonical_eye, dist_eye = part(eyes, target)
    canonical_face, dist_face = part(parts.face, target)
    if mouth_target is not None:
        canonical_mouth, dist_mouth = part(parts.lips, mouth_target)
    else:
        canonical_mouth = torch.zeros_like(points)
        dist_mouth = torch.full_like(dist_eye, 1e-6)
    inside = _inside_box(points, target[:, parts.left_eye], cfg.eye_bbox_scale) | _inside_box(
        points, target[:, parts.right_eye], cfg.eye_bbox_scale
    )
    return PartDeformation(
        canonical_eye, canonical_face, canonical_mouth, dist_eye, dist_face, dist_mouth, inside.to(points.dtype)
    )

"""Images of the FLAME head for a camera: correspondence ("uv") map, part masks, 2D landmarks.

Official training/deformer/deformation.py ``FlameDeformationModule.renderer`` (pytorch3d) with the
calls GenHead and Ψ make (training/generator/triplane.py, training/loss/loss_genhead.py):
- correspondence map (discriminator condition, ``only_face=True``): the face region plus eyeballs,
  each vertex coloured by its canonical position / 0.6, eyeballs' z shifted by -0.5; back faces culled;
- eye mask = eyeballs (culled) x (1 - face without eyes (culled));
- head mask = proxy mesh, no culling;
- mouth mask = head mask x (1 - mesh without the inner mouth (culled));
- landmarks: the 3D landmarks projected with the label's intrinsics.
Images use the RaySampler's pixel grid, so masks line up with volume-rendered pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from model.cameras import split_camera_label
from model.deformation.flame_head import FlameHead
from model.deformation.rasterizer import Fragments, interpolate, project_points, rasterize


class CorrespondenceMap(NamedTuple):
    image: torch.Tensor  # (B, 3, H, W) canonical coordinates / 0.6 of the visible surface, 0 elsewhere
    mask: torch.Tensor  # (B, 1, H, W)
    depth: torch.Tensor  # (B, 1, H, W) camera depth, 0 elsewhere


class PartMasks(NamedTuple):
    eye: torch.Tensor  # (B, 1, H, W)
    head: torch.Tensor  # (B, 1, H, W)
    mouth: torch.Tensor  # (B, 1, H, W)


def _screen(head: FlameHead, points: torch.Tensor, c: torch.Tensor, size: int) -> torch.Tensor:
    cam2world, intrinsics = split_camera_label(c)
    if cam2world.shape[0] != points.shape[0]:
        raise ValueError(f"camera batch {cam2world.shape[0]} != mesh batch {points.shape[0]}")
    return project_points(points, cam2world.to(points), intrinsics.to(points), size)


def _raster(head: FlameHead, screen: torch.Tensor, faces: torch.Tensor, size: int, cull: bool) -> Fragments:
    cfg = head.config
    return rasterize(screen, faces, size, cull_backfaces=cull, tile=cfg.raster_tile, chunk=cfg.raster_chunk)


def correspondence_features(head: FlameHead) -> torch.Tensor:
    """(V, 3) per-vertex colours of the correspondence map."""
    cfg = head.config
    features = head.canonical_vertices / cfg.correspondence_scale
    shift = features.new_tensor([0.0, 0.0, cfg.correspondence_eye_shift])
    return features + head.is_eyeball[:, None] * shift


def render_correspondence(head: FlameHead, vertices: torch.Tensor, c: torch.Tensor, size: int) -> CorrespondenceMap:
    """Correspondence map of posed heads vertices (B,V,3) seen by cameras c (B,25) at size²."""
    frags = _raster(head, _screen(head, vertices, c, size), head.faces_correspondence, size, cull=True)
    image = interpolate(frags, correspondence_features(head).to(vertices), head.faces_correspondence)
    return CorrespondenceMap(image, frags.mask, frags.depth[:, None])


def render_part_masks(head: FlameHead, vertices: torch.Tensor, c: torch.Tensor, size: int) -> PartMasks:
    """Raw eye / head / mouth masks at size² (GenHead blurs and resizes them itself)."""
    screen = _screen(head, vertices, c, size)
    eyeballs = _raster(head, screen, head.faces_eyeballs, size, cull=True).mask
    skin = _raster(head, screen, head.faces_without_eyes, size, cull=True).mask
    proxy_screen = _screen(head, head.proxy_vertices(vertices), c, size)
    whole = _raster(head, proxy_screen, head.proxy_faces, size, cull=False).mask
    no_mouth = _raster(head, screen, head.faces_no_inner_mouth, size, cull=True).mask
    return PartMasks(eye=eyeballs * (1 - skin), head=whole, mouth=whole * (1 - no_mouth))


def project_landmarks(head: FlameHead, vertices: torch.Tensor, c: torch.Tensor, size: int) -> torch.Tensor:
    """(B, L, 2) landmark pixel coordinates at size²: x right, y DOWN, pixel j spans [j, j+1).

    The official renderer returns y measured upwards (y_official = size - y); code ported from it
    with ``reverse_y=True`` must convert. Differentiable with respect to the vertices.
    """
    return _screen(head, head.landmarks3d(vertices), c, size)[..., :2]

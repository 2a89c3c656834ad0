"""Triplane feature lookup: project 3D points onto three axis-aligned planes and sample bilinearly."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def triplane_axes(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """(3, 2, 3): for each plane, the world axes read as its (width, height) grid coordinates.

    Planes are (x, y), (y, z), (z, x), as official project_onto_planes() indexes them. (The official
    generate_planes() matrices are never used by that projection; read through EG3D's inverse they
    would give (x, z) for the second plane, which is NOT what the released weights were trained with.)
    """
    eye = torch.eye(3, dtype=dtype, device=device)
    return torch.stack([eye[[0, 1]], eye[[1, 2]], eye[[2, 0]]])


def project_onto_planes(plane_axes: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """plane_axes (n_planes, 2, 3), coordinates (B, P, 3) -> plane coordinates (B, n_planes, P, 2).

    Axes must be world axes (one-hot rows): the projection is then a pure coordinate selection,
    exact in any dtype and untouched by autocast (a matmul here would run in bf16 under autocast).
    """
    if plane_axes.dim() != 3 or plane_axes.shape[1:] != (2, 3):
        raise ValueError(f"plane_axes must be (n_planes, 2, 3), got {tuple(plane_axes.shape)}")
    one_hot = ((plane_axes == 0) | (plane_axes == 1)).all() and (plane_axes.sum(-1) == 1).all()
    if not one_hot:
        raise ValueError("plane_axes rows must be world axes (one-hot), e.g. triplane_axes()")
    index = plane_axes.argmax(-1).reshape(-1).to(coordinates.device)  # (n_planes * 2,)
    selected = coordinates.index_select(-1, index)  # (B, P, n_planes * 2)
    b, p, _ = coordinates.shape
    return selected.reshape(b, p, -1, 2).transpose(1, 2)


def sample_from_planes(
    plane_axes: torch.Tensor,
    planes: torch.Tensor,
    coordinates: torch.Tensor,
    box_warp: float,
    box_warp_scale: float | torch.Tensor = 1.0,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Features of world points from a triplane.

    planes (B, n_planes, C, H, W), coordinates (B, P, 3) -> (B, n_planes, P, C).
    The cube of side ``box_warp * box_warp_scale`` centred at the origin maps onto the full planes;
    outside it features are zero (official sample_from_planes: align_corners=False, zero padding).
    ``box_warp_scale`` may be a float or a (B,) tensor.
    """
    if planes.dim() != 5:
        raise ValueError(f"planes must be (B, n_planes, C, H, W), got {tuple(planes.shape)}")
    if coordinates.dim() != 3 or coordinates.shape[-1] != 3 or coordinates.shape[0] != planes.shape[0]:
        raise ValueError(f"coordinates must be (B={planes.shape[0]}, P, 3), got {tuple(coordinates.shape)}")
    b, n_planes, c, h, w = planes.shape
    if plane_axes.shape[0] != n_planes:
        raise ValueError(f"{plane_axes.shape[0]} plane axes for {n_planes} planes")
    # Bilinear weights in bf16/fp16 would blur the lookup by whole texels; sample in >= fp32.
    dtype = torch.promote_types(planes.dtype, torch.float32)
    scale = torch.as_tensor(box_warp_scale, dtype=dtype, device=planes.device).reshape(-1, 1, 1)
    grid = project_onto_planes(plane_axes, coordinates.to(dtype) * (2.0 / (box_warp * scale)))  # (B,n,P,2)
    grid = grid.reshape(b * n_planes, 1, -1, 2)
    sampled = F.grid_sample(
        planes.to(dtype).reshape(b * n_planes, c, h, w),
        grid,
        mode=mode,
        padding_mode=padding_mode,
        align_corners=False,
    )  # (B*n, C, 1, P)
    return sampled.reshape(b, n_planes, c, -1).transpose(2, 3)


def plane_mean(features: torch.Tensor) -> torch.Tensor:
    """(B, n_planes, P, C) per-plane features -> (B, P, C) contiguous mean over the planes.

    ``sample_from_planes`` returns its features as a view of grid_sample's (B, n_planes, C, P) memory; a mean
    over dim 1 of that view would write (P, C) order while reading every value P elements apart. Reducing in
    the memory's own order and transposing once gives the same numbers (the same three values summed in the
    same order) with contiguous reads.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, n_planes, P, C), got {tuple(features.shape)}")
    channel_first = features.transpose(2, 3)
    if not channel_first.is_contiguous():
        return features.mean(1)
    return channel_first.mean(1).transpose(1, 2).contiguous()

"""One ray per pixel centre of a camera given as (cam2world, normalized intrinsics)."""

from __future__ import annotations

import torch
from torch import nn


def _check_camera(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> None:
    if cam2world.dim() != 3 or cam2world.shape[1:] != (4, 4):
        raise ValueError(f"cam2world must be (B, 4, 4), got {tuple(cam2world.shape)}")
    if intrinsics.shape != (cam2world.shape[0], 3, 3):
        raise ValueError(f"intrinsics must be (B, 3, 3) with B={cam2world.shape[0]}, got {tuple(intrinsics.shape)}")


def pixel_centres(resolution: int, device: torch.device | None = None) -> torch.Tensor:
    """(R, 2) normalized (u, v) of pixel centres in row-major order: u = (col + 0.5)/res, v = (row + 0.5)/res."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    t = (torch.arange(resolution, dtype=torch.float32, device=device) + 0.5) / resolution
    v, u = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def camera_depth_of_origin(cam2world: torch.Tensor) -> torch.Tensor:
    """(B,) z of the world origin in camera space (official ``cam_z`` = world2cam[:, 2, 3]).

    world2cam = [R^T | -R^T t], so its [2, 3] entry is -(third column of R) . t.
    """
    return -(cam2world[:, :3, 2] * cam2world[:, :3, 3]).sum(-1)


class RaySampler(nn.Module):
    """Rays through pixel centres; OpenGL cameras (look down -z, image row 0 at +y).

    Same rays as official training/volumetric_rendering/ray_sampler.py (which sets z_cam = -1 and
    mirrors x so that the EG3D lifting formula yields an OpenGL camera-space direction).
    """

    def forward(
        self, cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cam2world (B,4,4), intrinsics (B,3,3) -> ray_origins (B,R,3), unit ray_directions (B,R,3), R = res²."""
        _check_camera(cam2world, intrinsics)
        dtype = torch.promote_types(cam2world.dtype, torch.float32)
        cam2world, intrinsics = cam2world.to(dtype), intrinsics.to(dtype)
        uv = pixel_centres(resolution, cam2world.device).to(dtype)  # (R, 2)
        u, v = uv[None, :, 0], uv[None, :, 1]  # (1, R)
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]  # (B, 1)
        cx, cy, skew = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
        # Invert the pinhole projection at depth 1 in front of the camera (camera z = -1).
        y_cam = -(v - cy) / fy  # image v grows downwards, camera y upwards
        x_cam = (u - cx - skew * (v - cy) / fy) / fx
        z_cam = -torch.ones_like(x_cam.expand_as(y_cam))
        dirs_cam = torch.stack(torch.broadcast_tensors(x_cam, y_cam, z_cam), dim=-1)  # (B, R, 3)
        directions = nn.functional.normalize(dirs_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
        origins = cam2world[:, None, :3, 3].expand_as(directions).contiguous()
        return origins, directions

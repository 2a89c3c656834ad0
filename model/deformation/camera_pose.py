"""Split a head pose carried by the camera into a FLAME neck pose plus a new camera.

Official training/deformer/deformation.py ``decompose_camera_pose`` (used by GenHead training and
synthesis): given the composed camera (head pose fully in the camera) and a neck pose, return the
camera that, looking at the head rotated by that neck pose, sees it as the composed camera saw the
unrotated head, with the neck joint kept at the same camera-space position.
"""

from __future__ import annotations

import torch

from model.cameras import camera_label, split_camera_label
from model.deformation.flame_head import NECK_JOINT, FlameHead
from model.flame import batch_rodrigues


def _invert_rigid(m: torch.Tensor) -> torch.Tensor:
    rot_t = m[:, :3, :3].transpose(1, 2)
    out = torch.zeros_like(m)
    out[:, :3, :3] = rot_t
    out[:, :3, 3] = -(rot_t @ m[:, :3, 3:])[..., 0]
    out[:, 3, 3] = 1.0
    return out


@torch.no_grad()
def decompose_camera_pose(
    head: FlameHead,
    c_compose: torch.Tensor,
    shape: torch.Tensor,
    expression: torch.Tensor,
    neck_pose: torch.Tensor,
    jaw_pose: torch.Tensor,
) -> torch.Tensor:
    """(B, 25) camera label c_decompose such that c_compose = neck pose + c_decompose."""
    cam2world, intrinsics = split_camera_label(c_compose)
    world2cam = _invert_rigid(cam2world)
    zeros = torch.zeros_like(neck_pose)
    joint_rest = head(shape, expression, zeros, jaw_pose, None).joints[:, NECK_JOINT]  # (B, 3)
    joint_posed = head(shape, expression, neck_pose, jaw_pose, None).joints[:, NECK_JOINT]
    joint_cam = (world2cam[:, :3, :3] @ joint_rest[..., None])[..., 0] + world2cam[:, :3, 3]
    rot = world2cam[:, :3, :3] @ batch_rodrigues(neck_pose).transpose(1, 2).to(world2cam)
    w2c = torch.zeros_like(world2cam)
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = joint_cam - (rot @ joint_posed[..., None])[..., 0]
    w2c[:, 3, 3] = 1.0
    return camera_label(_invert_rigid(w2c), intrinsics)

"""Axis-angle rotations for FLAME joints."""

from __future__ import annotations

import torch

_SMALL_ANGLE_SQ = 1e-8  # below this, sin/cos ratios use their Taylor series


def batch_rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) from axis-angle vectors (N, 3) (Rodrigues' formula).

    R = I + (sin t / t) K + ((1 - cos t) / t^2) K^2 with K the skew matrix of the *unnormalised*
    vector, so the result and its gradient stay exact at t = 0 (the official code adds 1e-8
    to the vector instead, which biases the gradient at rest pose).
    """
    if axis_angle.ndim != 2 or axis_angle.shape[-1] != 3:
        raise ValueError(f"batch_rodrigues expects (N, 3) axis-angles, got {tuple(axis_angle.shape)}")
    theta_sq = (axis_angle * axis_angle).sum(dim=-1)[:, None, None]  # (N,1,1)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    sin_term = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    cos_term = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / safe_sq)

    x, y, z = axis_angle.unbind(dim=-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + sin_term * skew + cos_term * (skew @ skew)

"""Cameras and the per-image label layout shared by every stage.

Conventions (official Portrait-4D / EG3D):
- The camera label ``c`` is 25 floats: a flattened 4x4 cam2world matrix in the OpenGL convention
  (camera looks down its -z axis, +y is up in the image) followed by a flattened 3x3 intrinsics
  matrix normalised by image size (fx = fy = 1 / (2 tan(fov/2)), cx = cy = 0.5).
- The full FLAME label is 437 floats; its layout is defined once here (``LabelLayout``).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

FOV_DEG = 12.0
FOCAL_NORMALIZED = 1.0 / (2.0 * math.tan(math.radians(FOV_DEG / 2)))  # ≈ 4.7572
CAMERA_LABEL_DIM = 25
LABEL_DIM = 437


class LabelLayout:
    """Named slices of the 437-float per-image label (official dataset labels)."""

    CAM2WORLD = slice(0, 16)
    INTRINSICS = slice(16, 25)
    CAMERA = slice(0, 25)
    SHAPE = slice(25, 325)  # 300 FLAME shape coefficients
    EXPRESSION = slice(325, 425)  # 100 FLAME expression coefficients
    NECK_POSE = slice(425, 428)  # axis-angle
    JAW_POSE = slice(428, 431)  # axis-angle
    EYE_POSE = slice(431, 437)  # two axis-angles (left, right)

    @classmethod
    def fields(cls) -> dict[str, slice]:
        return {
            name: value
            for name, value in vars(cls).items()
            if isinstance(value, slice) and name != "CAMERA"
        }


def intrinsics_normalized(fov_deg: float = FOV_DEG) -> torch.Tensor:
    """(3, 3) intrinsics normalised by image size for a square image with the given fov."""
    focal = 1.0 / (2.0 * math.tan(math.radians(fov_deg / 2)))
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def look_at_cam2world(
    origin: torch.Tensor, target: torch.Tensor, roll: torch.Tensor | None = None
) -> torch.Tensor:
    """OpenGL cam2world (B, 4, 4) for cameras at ``origin`` (B, 3) looking at ``target`` (B, 3).

    World +y is up. ``roll`` (B,) radians rotates the up vector about the viewing axis the way the
    official LookAtPoseSampler does (up' = up·cos r + right·sin r).
    """
    forward = _normalize(target - origin)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=origin.dtype, device=origin.device).expand_as(forward)
    right = _normalize(torch.cross(forward, world_up, dim=-1))
    up = _normalize(torch.cross(right, forward, dim=-1))
    if roll is not None:
        r = roll.reshape(-1, 1).to(origin.dtype)
        up, right = up * torch.cos(r) + right * torch.sin(r), right * torch.cos(r) - up * torch.sin(r)
    cam2world = torch.zeros(origin.shape[0], 4, 4, dtype=origin.dtype, device=origin.device)
    # Columns: camera x (right), camera y (up), camera z (backwards, since the camera looks down -z).
    cam2world[:, :3, 0] = right
    cam2world[:, :3, 1] = up
    cam2world[:, :3, 2] = -forward
    cam2world[:, :3, 3] = origin
    cam2world[:, 3, 3] = 1.0
    return cam2world


def camera_label(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Pack (B, 4, 4) cam2world and (3, 3) or (B, 3, 3) intrinsics into the (B, 25) label."""
    b = cam2world.shape[0]
    k = intrinsics.to(cam2world).expand(b, 3, 3) if intrinsics.dim() == 2 else intrinsics.to(cam2world)
    return torch.cat([cam2world.reshape(b, 16), k.reshape(b, 9)], dim=1)


def split_camera_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack a (B, >=25) label into cam2world (B, 4, 4) and intrinsics (B, 3, 3)."""
    if c.dim() != 2 or c.shape[1] < CAMERA_LABEL_DIM:
        raise ValueError(f"camera label must be (B, >= {CAMERA_LABEL_DIM}), got {tuple(c.shape)}")
    return c[:, LabelLayout.CAM2WORLD].reshape(-1, 4, 4), c[:, LabelLayout.INTRINSICS].reshape(-1, 3, 3)


def pitch_yaw_roll_cam2world(
    pitch: torch.Tensor,
    yaw: torch.Tensor,
    roll: torch.Tensor,
    radius: torch.Tensor,
    lookat: torch.Tensor,
) -> torch.Tensor:
    """Orbit camera around ``lookat`` (B, 3) as the official LookAtPoseSampler places it.

    pitch > 0 looks from above, yaw > 0 moves the camera towards -x; at pitch = yaw = 0 the
    camera sits on the +z axis looking towards -z (a frontal view of a FLAME head). As in the
    official sampler, the camera's height above ``lookat`` is radius * 2 * pitch / pi.
    """
    theta = math.pi / 2 + yaw  # official: horizontal_mean = pi/2 + yaw
    v = (math.pi / 2 - pitch) / math.pi  # official: vertical_mean = pi/2 - pitch, then v/pi
    phi = torch.arccos(1 - 2 * v.clamp(1e-5 / math.pi, 1 - 1e-5 / math.pi)) + math.pi
    r = radius
    origin = torch.stack(
        [
            r * torch.sin(phi) * torch.cos(math.pi - theta),
            -r * torch.cos(phi),
            -r * torch.sin(phi) * torch.sin(math.pi - theta),
        ],
        dim=-1,
    )
    return look_at_cam2world(origin + lookat, lookat, roll)


class CameraDistribution(BaseModel):
    """The seed's camera distribution for synthesized views (paper §A; radians, world units)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pitch: tuple[float, float] = Field((-0.25, 0.65), description="uniform pitch range (rad)")
    yaw: tuple[float, float] = Field((-0.78, 0.78), description="uniform yaw range (rad)")
    roll: tuple[float, float] = Field((-0.25, 0.25), description="uniform roll range (rad)")
    radius: tuple[float, float] = Field((3.65, 4.45), description="uniform camera distance range")
    lookat_min: tuple[float, float, float] = Field(
        (-0.01, -0.01, 0.02), description="look-at box lower corner (x, y, z)"
    )
    lookat_max: tuple[float, float, float] = Field(
        (0.01, 0.01, 0.04), description="look-at box upper corner (x, y, z)"
    )
    # The official sampler (training/loss/loss_recon_v1.py) multiplies the sampled pivot by 3
    # before use; the seed's box is quoted before that factor.
    lookat_scale: float = Field(3.0, gt=0, description="factor applied to the sampled look-at point")
    fov_deg: float = Field(FOV_DEG, gt=0, lt=180, description="fixed field of view (degrees)")

    @model_validator(mode="after")
    def _ordered(self) -> "CameraDistribution":
        for name in ("pitch", "yaw", "roll", "radius"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} range must be (low, high) with low <= high, got {(lo, hi)}")
        if any(lo > hi for lo, hi in zip(self.lookat_min, self.lookat_max)):
            raise ValueError(f"lookat_min {self.lookat_min} must be <= lookat_max {self.lookat_max}")
        if self.radius[0] <= 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        return self


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64).mul(hi - lo).add(lo).float()


def sample_cameras(
    dist: CameraDistribution, n: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Draw ``n`` cameras from ``dist``; returns cam2world, c (25-float labels) and the raw draws."""
    pitch = _uniform(*dist.pitch, n, generator)
    yaw = _uniform(*dist.yaw, n, generator)
    roll = _uniform(*dist.roll, n, generator)
    radius = _uniform(*dist.radius, n, generator)
    lookat = torch.stack(
        [_uniform(lo, hi, n, generator) for lo, hi in zip(dist.lookat_min, dist.lookat_max)], dim=-1
    )
    cam2world = pitch_yaw_roll_cam2world(pitch, yaw, roll, radius, lookat * dist.lookat_scale)
    c = camera_label(cam2world, intrinsics_normalized(dist.fov_deg))
    return {
        "cam2world": cam2world,
        "c": c,
        "pitch": pitch,
        "yaw": yaw,
        "roll": roll,
        "radius": radius,
        "lookat": lookat,
    }


def cam2world_angles(cam2world: torch.Tensor, lookat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Recover pitch, yaw, roll, radius of orbit cameras built by ``pitch_yaw_roll_cam2world``."""
    offset = cam2world[:, :3, 3] - lookat
    radius = offset.norm(dim=-1)
    d = offset / radius[:, None]
    # The official sampler maps pitch through arccos(1 - 2v): the camera's height is
    # radius * 2 * pitch / pi (uniform-on-sphere parameterisation), not radius * sin(pitch).
    pitch = d[:, 1] * (math.pi / 2)
    yaw = torch.atan2(-d[:, 0], d[:, 2])
    # Roll: angle between the camera's up vector and the roll-free up vector for the same view.
    forward = -d
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=d.dtype, device=d.device).expand_as(forward)
    right0 = _normalize(torch.cross(forward, world_up, dim=-1))
    up0 = _normalize(torch.cross(right0, forward, dim=-1))
    up = cam2world[:, :3, 1]
    roll = torch.atan2((up * right0).sum(-1), (up * up0).sum(-1))
    return {"pitch": pitch, "yaw": yaw, "roll": roll, "radius": radius}

"""Volume-rendering settings shared by GenHead, Ψ_3d and Ψ (the official ``rendering_kwargs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# 'auto' is the official 'auto-plane' mode: every ray of an image is sampled over
# [|cam_z| - box_warp/2, |cam_z| + box_warp/2], cam_z being the world origin's camera-space depth.
RayBound = float | Literal["auto"]


class RenderingConfig(BaseModel):
    """Defaults are the values of official train_genhead.py / train_recon_v1.py / train_recon_v2.py."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth_resolution: int = Field(48, ge=2, description="stratified (coarse) samples per ray")
    depth_resolution_importance: int = Field(
        48, ge=0, description="importance (fine) samples per ray; 0 renders the coarse pass only"
    )
    ray_start: RayBound = Field(
        "auto", description="near bound along each ray, or 'auto' = |cam_z| - box_warp/2"
    )
    ray_end: RayBound = Field("auto", description="far bound along each ray, or 'auto' = |cam_z| + box_warp/2")
    box_warp: float = Field(
        1.3, gt=0, description="side length of the cube spanned by the triplanes (world units)"
    )
    clamp_mode: Literal["softplus"] = Field(
        "softplus", description="density activation; the official ray marcher supports softplus only"
    )
    disparity_space_sampling: bool = Field(
        False, description="space coarse samples uniformly in inverse depth instead of depth"
    )
    white_back: bool = Field(False, description="composite onto white instead of black")
    density_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to raw densities")
    perturb: bool = Field(
        True,
        description="jitter coarse depths and draw importance samples at random (official); "
        "False gives deterministic renders (evaluation, serving)",
    )
    avg_camera_radius: float = Field(
        1.0, gt=0, description="orbit radius used only by interactive viewers (official value)"
    )
    avg_camera_pivot: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.2), description="orbit pivot used only by interactive viewers (official value)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "RenderingConfig":
        auto = (self.ray_start == "auto", self.ray_end == "auto")
        if auto[0] != auto[1]:
            raise ValueError(
                f"ray_start and ray_end must both be 'auto' or both numbers, got {self.ray_start!r}, {self.ray_end!r}"
            )
        if not auto[0] and not 0 < self.ray_start < self.ray_end:  # type: ignore[operator]
            raise ValueError(f"need 0 < ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.depth_resolution_importance > 0 and self.depth_resolution < 4:
            # importance sampling drops the two end weights of the coarse pass (see sampling.py)
            raise ValueError(
                f"depth_resolution must be >= 4 when importance sampling is on, got {self.depth_resolution}"
            )
        return self

    @property
    def samples_per_ray(self) -> int:
        return self.depth_resolution + self.depth_resolution_importance

    @classmethod
    def tiny(cls) -> "RenderingConfig":
        """8 coarse + 8 fine samples: fast CPU tests."""
        return cls(depth_resolution=8, depth_resolution_importance=8)

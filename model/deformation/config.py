"""Settings of the FLAME-driven deformation fields and of the proxy-mesh renderer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DeformationConfig(BaseModel):
    """Defaults are the official values (training/deformer/deformation.py, models/FLAME/cfg.yaml,
    train_genhead.py / train_recon_v2.py ``deformation_kwargs``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- FLAME in the triplane world -----------------------------------------------------------
    flame_scale: float = Field(
        3.0, gt=0, description="FLAME (metres) is scaled by this to match the EG3D world (official v_template *= 3)"
    )
    canonical_jaw_pose: tuple[float, float, float] = Field(
        (0.3, 0.0, 0.0), description="jaw axis-angle of the canonical head (official models/FLAME/ca_pose.txt)"
    )

    # --- neck-pose rotation field (paper: 24^3 grid, Surface Field on the FLAME mesh) -------------
    box_warp: float = Field(1.3, gt=0, description="side of the cube the deformation grids span (= rendering box_warp)")
    grid_resolution: int = Field(24, ge=2, description="voxels per side of the fine deformation grid")
    smooth_grid_resolution: int = Field(8, ge=2, description="voxels per side of the coarse, box-filtered grid")
    smooth_passes: int = Field(2, ge=0, description="3x3x3 box-filter passes over the coarse grid")
    smooth_threshold_sq: float = Field(
        3e-3, ge=0, description="squared distance to the proxy mesh under which the fine grid is used as is"
    )
    smooth_falloff: float = Field(
        1000.0, gt=0, description="w = exp(-falloff * relu(d^2 - threshold)) blends fine (w) and smooth (1-w) grids"
    )
    min_triangle_area: float = Field(
        5e-3,
        ge=0,
        description="pytorch3d point-face distance: smaller triangles count only by their edges "
        "(official deform_utils.py _DEFAULT_MIN_TRIANGLE_AREA; every FLAME proxy triangle is smaller)",
    )

    # --- GenHead part deformation ----------------------------------------------------------------
    eye_bbox_scale: float = Field(1.2, gt=0, description="eyeball bounding boxes are enlarged by this factor")
    region_weight_eps: float = Field(1e-10, gt=0, description="eps in the inverse-squared-distance weights")

    # --- correspondence ("uv") map -----------------------------------------------------------------
    correspondence_scale: float = Field(
        0.6, gt=0, description="canonical coordinates are divided by this for contrast (official 3 * 0.2)"
    )
    correspondence_eye_shift: float = Field(
        -0.5, description="added to the z feature of eyeball vertices so eyes get their own colour"
    )

    # --- work bounds (memory, not maths) ---------------------------------------------------------
    search_bytes: int = Field(
        1 << 28, ge=1, description="working memory of one chunk of the nearest-triangle / nearest-vertex searches"
    )
    vertex_search_kernel: Literal["torch", "triton"] = Field(
        "torch", description="the part field's float32 nearest-vertex candidate pass: torch (inductor on CUDA, eager "
        "elsewhere) or triton (one Triton kernel, model/deformation/nearest_top2.py; CUDA only, elsewhere the torch "
        "pass runs). The same answer either way; triton's GPU speed is not measured yet")
    raster_tile: int = Field(16, ge=1, description="rasteriser tile side (pixels)")
    raster_chunk: int = Field(1 << 22, ge=1, description="pixel-triangle tests per rasteriser chunk")

    @model_validator(mode="after")
    def _grids(self) -> "DeformationConfig":
        if self.smooth_grid_resolution > self.grid_resolution:
            raise ValueError(
                f"smooth_grid_resolution ({self.smooth_grid_resolution}) must not exceed "
                f"grid_resolution ({self.grid_resolution})"
            )
        return self

    # Bytes per pair of the eager searches: ~8 live float64 (B, p, E) tensors for point-edge
    # distances, one for the point-vertex matrix product and its argmin.
    @property
    def face_search_pairs(self) -> int:
        return max(1, self.search_bytes // 64)

    @property
    def vertex_search_pairs(self) -> int:
        return max(1, self.search_bytes // 8)

    @classmethod
    def tiny(cls) -> "DeformationConfig":
        """Small grids and chunks for CPU tests."""
        return cls(grid_resolution=8, smooth_grid_resolution=4, search_bytes=1 << 22, raster_tile=8, raster_chunk=1 << 16)

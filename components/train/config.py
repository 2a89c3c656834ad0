"""Settings of the two training stages that P4DConfig does not carry yet (to attach as ``P4DConfig.train``).

P4DConfig already holds the paper's schedules (``psi3d`` / ``psi``), loss weights (``losses``), the
DeepSpeed section, checkpoints, tracking and metrics; this section adds the official training-loop
constants those sections leave out (optimizer betas, lazy-regularization intervals, the extra loss
terms of the official losses) and the run's bookkeeping (log / sample intervals, data workers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Defaults: official train_recon_v1.py / train_recon_v2.py / training_loop_recon_v*.py /
    loss_recon_v*.py with configs/portrait4d-static-genhead512.yaml and portrait4d-v2-vfhq512.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- optimizer (both G and D) -----------------------------------------------------------------------
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of G and D (official G/D_opt_kwargs)")
    adam_eps: float = Field(1e-5, gt=0, description="Adam eps of G and D (official)")
    # --- EMA of the generator ---------------------------------------------------------------------------
    ema_rampup: float | None = Field(
        0.05, ge=0, description="EMA half-life is at most images_seen x this (official ema_rampup); None = no ramp-up"
    )
    # --- discriminator ----------------------------------------------------------------------------------
    r1_every: int = Field(16, gt=0, description="R1 on every N-th D step with gain N (official D_reg_interval)")
    r1_gamma_uv: float = Field(10.0, ge=0, description="R1 strength on the correspondence-map input (gamma_uv)")
    r1_gamma_seg: float = Field(1.0, ge=0, description="R1 strength on the segmentation input (official gamma_seg)")
    # --- extra terms of the official reconstruction loss -----------------------------------------------
    seg_weight: float = Field(0.3, ge=0, description="L1 between rendered and target segmentation (official x0.3)")
    identity_start_images: int = Field(
        400_000, ge=0, description="Ψ_3d: identity loss off before this many images (official 400k)"
    )
    density_reg: float = Field(
        0.25, ge=0, description="Ψ_3d: density TV regularisation weight (official density_reg, reg_type l1)"
    )
    density_reg_every: int = Field(16, gt=0, description="Ψ_3d: density regularisation on every N-th G step, gain N")
    density_reg_points: int = Field(1000, gt=0, description="Ψ_3d: random points (and as many perturbed) per sample")
    density_reg_p_dist: float = Field(0.004, ge=0, description="Ψ_3d: perturbation std, in units of box_warp")
    cross_view_weight: float = Field(
        1.0, ge=0, description="Ψ: LPIPS against frozen Ψ_3d at a random camera (official G_fix_img density_reg)"
    )
    cross_view_every: int = Field(4, gt=0, description="Ψ: cross-view term on every N-th G step, gain N")
    cross_view_eye_rescale: bool = Field(
        True, description="Ψ: shrink Ψ_3d's box with the eye opening, as official g_fix_reg_img_aug"
    )
    # --- bookkeeping ------------------------------------------------------------------------------------
    log_every_images: int = Field(1_000, gt=0, description="metrics to MLflow / Prometheus every N images")
    sample_every_images: int = Field(200_000, gt=0, description="fixed-seed sample grid every N images")
    sample_grid_rows: int = Field(4, gt=0, description="samples (rows) in the sample grid")
    novel_views: int = Field(3, gt=0, description="novel-view columns of the sample grid")
    data_workers: int = Field(2, ge=0, description="DataLoader workers per rank for stored shards")

    @classmethod
    def tiny(cls) -> "TrainConfig":
        """Every interval shrunk to the tiny profile's image counts (48 / 32 images per stage)."""
        return cls(
            identity_start_images=8,
            density_reg_points=64,
            density_reg_every=4,
            r1_every=4,
            cross_view_every=2,
            log_every_images=2,
            sample_every_images=16,
            sample_grid_rows=2,
            novel_views=2,
            data_workers=0,
        )

    @classmethod
    def for_profile(cls, profile: str) -> "TrainConfig":
        return cls.tiny() if profile == "tiny" else cls()


def train_config(cfg) -> TrainConfig:
    """The ``train`` section of a P4DConfig (the profile's defaults until P4DConfig carries one)."""
    section = getattr(cfg, "train", None)
    return section if isinstance(section, TrainConfig) else TrainConfig.for_profile(cfg.profile)

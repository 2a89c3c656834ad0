"""The training sections: the paper's schedules of Ψ_3d (``psi3d``) and Ψ (``psi``), the loss weights
(``losses``), DeepSpeed (``deepspeed``), checkpoints (``checkpoints``) and the official training-loop
constants the schedules leave out (``train``: optimizer betas, lazy-regularization intervals, bookkeeping).

Schedules are counted in *images seen*, so they do not depend on the number of GPUs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import Strict


class Psi3dSchedule(Strict):
    """Ψ_3d training (paper §4 / supplementary): the switches happen at image counts."""

    lr: float = Field(1e-4, gt=0, description="Adam learning rate (generator)")
    d_lr: float = Field(1e-4, gt=0, description="Adam learning rate (discriminator), official dlr")
    batch: int = Field(32, gt=0, description="global batch size, whatever the GPU count")
    total_images: int = Field(10_000_000, gt=0, description="images seen over the whole run")
    adversarial_start_images: int = Field(
        1_000_000, ge=0, description="adversarial loss off before this many images"
    )
    renderer_frozen_until_images: int = Field(
        1_000_000, ge=0, description="MLP radiance decoder and super-resolution frozen before this"
    )
    depth_and_triplane_loss_until_images: int = Field(
        1_000_000, ge=0, description="depth loss and triplane loss L_T removed after this"
    )
    neural_resolution_initial: int = Field(64, gt=0, description="neural rendering resolution at start")
    neural_resolution_final: int = Field(128, gt=0, description="neural rendering resolution at the end of the ramp")
    resolution_ramp_start_images: int = Field(1_000_000, ge=0, description="ramp begins here")
    resolution_ramp_images: int = Field(1_000_000, ge=0, description="linear ramp length in images")

    @model_validator(mode="after")
    def _consistent(self) -> "Psi3dSchedule":
        if self.neural_resolution_final < self.neural_resolution_initial:
            raise ValueError(
                f"neural_resolution_final ({self.neural_resolution_final}) must be >= "
                f"neural_resolution_initial ({self.neural_resolution_initial})"
            )
        return self


class PsiSchedule(Strict):
    """Ψ (4D) training: init from Ψ_3d except the motion cross-attention layers."""

    lr: float = Field(1e-4, gt=0, description="Adam learning rate for all but the motion layers")
    lr_motion: float = Field(2.5e-4, gt=0, description="Adam learning rate for the motion layers")
    d_lr: float = Field(1e-4, gt=0, description="Adam learning rate (discriminator), official dlr")
    batch: int = Field(32, gt=0, description="global batch size, whatever the GPU count")
    total_images: int = Field(6_000_000, gt=0, description="images seen over the whole run")
    neural_resolution: int = Field(128, gt=0, description="neural rendering resolution throughout")
    mot_aug_prob: float = Field(
        0.9, ge=0, le=1, description="probability of re-extracting driving motion from a Ψ_3d render"
    )
    training_clips: int = Field(10_000, gt=0, description="VFHQ training clips")
    frames_per_clip: int = Field(50, gt=0, description="frames sampled per clip")


class LossWeights(Strict):
    """Every loss weight of Ψ_3d and Ψ (DESIGN §3, official loss_recon_v1.py / loss_recon_v2.py). When a term
    is on (its schedule, its interval) lives in ``psi3d`` / ``psi`` / ``train``; how much it counts lives here."""

    l1: float = Field(1.0, ge=0)
    lpips: float = Field(1.0, ge=0)
    identity: float = Field(1.0, ge=0, description="ArcFace-r18 identity loss")
    adversarial: float = Field(0.01, ge=0, description="softplus adversarial loss weight")
    r1_gamma: float = Field(1.0, ge=0, description="R1 regularisation strength on the image inputs")
    r1_gamma_uv: float = Field(10.0, ge=0, description="R1 strength on the correspondence-map input (gamma_uv)")
    r1_gamma_seg: float = Field(1.0, ge=0, description="R1 strength on the segmentation input (official gamma_seg)")
    segmentation: float = Field(0.3, ge=0, description="L1 between rendered and target segmentation (official x0.3)")
    depth: float = Field(1.0, ge=0, description="early depth term (Ψ_3d, first 1M images)")
    # official loss_recon_v1.py: loss_recon_triplane * 0.1
    triplane: float = Field(0.1, ge=0, description="early triplane-feature term L_T (Ψ_3d, first 1M images)")
    density_reg: float = Field(
        0.25, ge=0, description="Ψ_3d: density TV regularisation weight (official density_reg, reg_type l1)"
    )
    cross_view: float = Field(
        1.0, ge=0, description="Ψ: LPIPS against frozen Ψ_3d at a random camera (official G_fix_img density_reg)"
    )


class DeepSpeedSection(Strict):
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="ZeRO optimisation stage")
    bf16: bool = Field(True, description="bf16 mixed precision (CUDA only; CPU runs fp32)")
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_clipping: float = Field(0.0, ge=0, description="0 disables clipping")


class CheckpointSection(Strict):
    every_images: int = Field(200_000, gt=0, description="write a checkpoint every N images")
    keep_last: int = Field(3, gt=0, description="checkpoints to keep")
    ema_half_life_images: int = Field(10_000, ge=0, description="EMA half-life of the generator (official ema_kimg=10)")


class TrainConfig(Strict):
    """Defaults: official train_recon_v1.py / train_recon_v2.py / training_loop_recon_v*.py /
    loss_recon_v*.py with configs/portrait4d-static-genhead512.yaml and portrait4d-v2-vfhq512.yaml."""

    # --- optimizer (both G and D) -----------------------------------------------------------------------
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of G and D (official G/D_opt_kwargs)")
    adam_eps: float = Field(1e-5, gt=0, description="Adam eps of G and D (official)")
    # --- EMA of the generator ---------------------------------------------------------------------------
    ema_rampup: float | None = Field(
        0.05, ge=0, description="EMA half-life is at most images_seen x this (official ema_rampup); None = no ramp-up"
    )
    # --- discriminator ----------------------------------------------------------------------------------
    r1_every: int = Field(16, gt=0, description="R1 on every N-th D step with gain N (official D_reg_interval)")
    # --- when the extra terms of the official reconstruction loss run (their weights: ``losses``) -------
    identity_start_images: int = Field(
        400_000, ge=0, description="Ψ_3d: identity loss off before this many images (official 400k)"
    )
    density_reg_every: int = Field(16, gt=0, description="Ψ_3d: density regularisation on every N-th G step, gain N")
    density_reg_points: int = Field(1000, gt=0, description="Ψ_3d: random points (and as many perturbed) per sample")
    density_reg_p_dist: float = Field(0.004, ge=0, description="Ψ_3d: perturbation std, in units of box_warp")
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

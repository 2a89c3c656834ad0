"""The ``synthesize`` section: settings of the `synthesize` stage.

Facts shared with other stages are NOT repeated here: the camera distribution
(``P4DConfig.cameras``), the fitted/sampled camera mix (``P4DConfig.camera_mix_fitted_prob``) and the
truncation ψ (``P4DConfig.networks.genhead.truncation_psi``) are read from the main config; the truncation
cutoff is a GenHead fact (``GenHeadConfig.truncation_cutoff``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config.base import Strict


class SynthesizeConfig(Strict):
    """Defaults: the official online sampler (training_loop_recon_v1.py ``fetch_random_params`` and
    loss_recon_v1.py ``gen_data_by_G_syn``) where it has a value; dataset sizes are ours."""

    identities: int = Field(100_000, gt=0, description="identities (latent z + FLAME conditions) to render")
    views: int = Field(
        3, gt=0, description="views per identity from the same latent and conditions (official: 3 = app, mot, recon)"
    )
    shard_size: int = Field(100, gt=0, description="identities per tar shard (all views of an identity share a shard)")
    batch: int = Field(8, gt=0, description="views per GenHead forward pass")
    seed: int = Field(0, ge=0, description="root seed; identity i draws from a generator seeded by (seed, i)")
    neural_rendering_resolution: int = Field(
        64, ge=4, description="GenHead volume-render size (official gen_data_by_G_syn uses 64)"
    )
    noise_mode: Literal["const", "random", "none"] = Field(
        "const", description="StyleGAN2 per-pixel noise while synthesizing (official 'const')"
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="autocast dtype of the GenHead forward (bfloat16 on CUDA for speed)"
    )
    # --- conditions -------------------------------------------------------------------------------
    jaw_augment_prob: float = Field(
        0.5, ge=0, le=1, description="probability that the jaw opening (jaw pose x) is replaced by U[0, jaw_augment_max]"
    )
    jaw_augment_max: float = Field(0.2, ge=0, description="upper bound of the random jaw opening (rad)")
    cond_frontal_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that the mapping is conditioned on a frontal camera at cond_frontal_radius instead "
        "of the identity's first fitted camera. Official gen_data_by_G_syn builds a 50/50 mix but passes the "
        "fitted one to the mapping, so 0 reproduces what the official sampler renders",
    )
    cond_frontal_radius: float = Field(4.0, gt=0, description="distance of the frontal conditioning camera")
    # --- what is stored -------------------------------------------------------------------------
    triplane_points: int = Field(
        4000,
        ge=0,
        description="target-space points per view with their face-triplane features, for the early triplane loss "
        "L_T (official 4000 coarse samples outside the eye/mouth masks); 0 stores none",
    )
    png_compress_level: int = Field(3, ge=0, le=9, description="zlib level of stored PNGs (lossless at every level)")
    fused_field: bool = Field(False, description="CUDA only: sample GenHead's part triplanes and run its radiance "
                              "decoder in one Triton kernel (same maths, fp32; model/rendering/fused_field.py). "
                              "Checked on the CPU through Triton's interpreter; its GPU speed is not measured yet")
    # --- faults ---------------------------------------------------------------------------------
    max_failure_ratio: float = Field(
        0.1, ge=0, le=1, description="fail if more than this fraction of label rows is unusable (NaN, wrong width)"
    )

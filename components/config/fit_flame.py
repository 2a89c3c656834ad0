"""The ``fit_flame`` section: settings of the ``fit_flame`` stage (defaults: the paper / official preprocessing)."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from components.config.base import Strict


class FitFlameConfig(Strict):
    """Landmarks, 512 alignment, FLAME fitting and motion features for real images / video clips."""

    # --- inputs -------------------------------------------------------------------------------
    frames_per_clip: int = Field(50, gt=0, description="frames sampled evenly from each video clip (paper: 50)")
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="larger images are decoded at a reduced size (JPEG) or refused (others)"
    )
    reject_grayscale: bool = Field(
        False, description="fail grayscale photos instead of converting them to 3 equal channels"
    )

    # --- landmarks ----------------------------------------------------------------------------
    detect_max_side: int = Field(
        1024, ge=128, description="face detection runs on a copy downscaled to this longest side"
    )
    min_detection_confidence: float = Field(0.5, gt=0, lt=1, description="MediaPipe face detector threshold")
    min_face_px: float = Field(
        100.0, gt=0, description="faces whose landmark box (longest side, source px) is smaller are refused"
    )
    mesh_input_px: int = Field(
        384, ge=128, description="the largest face is cropped and resized to this size for the face mesh"
    )

    # --- alignment (official 5-point POS crop) -----------------------------------------------
    crop_size: int = Field(512, gt=0, description="aligned crop size (px)")
    # The two numbers below reproduce the official framing with MediaPipe's 5 points: they are the
    # mean POS scale / translation of our 5 points on the official aligned examples
    # (portrait4d/examples/align_images, 32 images at 512). The official detector's own 68 points
    # give 181.3 at (256.1, 257.3) on the same crops: the two detectors place the points differently.
    crop_pos_scale: float = Field(
        176.1, gt=0, description="POS scale of the 5 points in a 512 crop (framing; scales with crop_size)"
    )
    crop_pos_center: tuple[float, float] = Field(
        (257.0, 270.2), description="where the POS translation lands in a 512 crop (x, y down)"
    )
    smooth_min_cutoff_scale: float = Field(
        1e-4, gt=0, description="one-euro min cutoff for the crop scale over video frames (official)"
    )
    smooth_beta_scale: float = Field(0.005, ge=0, description="one-euro beta for the crop scale (official)")
    smooth_min_cutoff_center: float = Field(
        1e-3, gt=0, description="one-euro min cutoff for the crop centre over video frames (official)"
    )
    smooth_beta_center: float = Field(0.05, ge=0, description="one-euro beta for the crop centre (official)")
    smooth_video: bool = Field(True, description="temporally smooth the crop of video frames")

    # --- FLAME fitting ------------------------------------------------------------------------
    n_shape: int = Field(300, gt=0, le=300, description="FLAME shape coefficients fitted")
    n_expression: int = Field(100, gt=0, le=100, description="FLAME expression coefficients fitted")
    iterations_camera: int = Field(50, ge=0, description="stage 1 L-BFGS iterations: camera rotation + position")
    iterations_full: int = Field(
        500, ge=0, description="stage 2 L-BFGS iterations: shape, expression, jaw, eyes, camera"
    )
    coefficient_px: float = Field(
        5.0, gt=0, description="landmark motion (px at 512) of one unit of a FLAME coefficient (preconditioning)"
    )
    weight_eye_mouth: float = Field(
        2.0, ge=0, description="extra weight of eye and lip landmarks (official: 2x eye corners and mouth)"
    )
    # Priors in px² (at 512) per unit²: with a mean-over-landmarks data term, σ²/L is the Gaussian
    # MAP weight of a unit-variance coefficient for σ ≈ 2 px landmark noise and L = 105 points.
    weight_shape: float = Field(0.04, ge=0, description="L2 prior on shape coefficients (px² per unit²)")
    weight_expression: float = Field(0.04, ge=0, description="L2 prior on expression coefficients")
    weight_jaw: float = Field(1.0, ge=0, description="L2 prior on the jaw axis-angle (px² per rad²)")
    weight_eye: float = Field(1.0, ge=0, description="L2 prior on the eye axis-angle (px² per rad²)")
    max_reprojection_px: float = Field(
        12.0, gt=0, description="fits whose mean landmark error at 512 exceeds this are failed"
    )

    # --- stage ---------------------------------------------------------------------------------
    max_failure_ratio: float = Field(
        0.3, ge=0, le=1, description="the stage exits non-zero when failed rows / all rows exceed this"
    )

    @model_validator(mode="after")
    def _framing_fits(self) -> "FitFlameConfig":
        cx, cy = self.crop_pos_center
        if not (0 < cx < 512 and 0 < cy < 512):
            raise ValueError(f"crop_pos_center {self.crop_pos_center} must lie inside a 512 crop")
        return self

    def fingerprint(self) -> str:
        """Short hash of every value that changes the outputs (the resume key, with the input sha256)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

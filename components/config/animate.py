"""The ``animate`` section: settings of the inference engine and `p4d animate` (the network itself comes with
its weights)."""

from __future__ import annotations

from pydantic import Field

from components.config.base import Strict


class OneEuro(Strict):
    """One-euro filter settings; time runs in frames, so smoothing does not depend on the frame rate."""

    min_cutoff: float = Field(..., gt=0, description="cutoff (cycles per frame) of a still signal: lower = steadier")
    beta: float = Field(..., ge=0, description="how fast the cutoff rises with speed: higher = less lag on fast motion")


class AnimateConfig(Strict):
    """Driving-video smoothing, batching and output defaults of the Animator."""

    smooth_motion: OneEuro = Field(OneEuro(min_cutoff=0.1, beta=0.5),
                                   description="one-euro filter of the 548-d PD-FGC motion over driving frames")
    smooth_pose: OneEuro = Field(OneEuro(min_cutoff=0.1, beta=0.5),
                                 description="one-euro filter of FLAME expression / jaw / eyes / neck and the camera")
    batch: int = Field(8, gt=0, description="frames rendered per network call")
    fit_batch: int = Field(64, gt=0, description="driving frames per batched FLAME fit (one shape per chunk)")
    fps: float = Field(25.0, gt=0, description="output frame rate when the driving input has none (frames, image)")
    max_frames: int = Field(10_000, gt=0, description="longest driving input accepted, in frames")
    orbit_frames: int = Field(48, gt=1, description="frames of a turntable (`--camera orbit` on a single image)")
    seed: int = Field(0, ge=0, description="kept for stochastic options; inference renders with fixed ray samples")
    compile: bool = Field(False, description="CUDA only: torch.compile Ψ's per-frame modules at load (about a "
                          "minute of compiling on the first frames; H200 bf16 batch 1: 25.2 -> 19.9 ms per frame, "
                          "batch 8 unchanged; docs/benchmarks.md). Worth it for a long-running server")
    fused_field: bool = Field(False, description="CUDA only: sample Ψ's triplanes and run its radiance decoder in one "
                              "Triton kernel on the serving path (same maths, fp32; model/rendering/fused_field.py). "
                              "Checked against the eager path on the CPU through Triton's interpreter; its GPU speed "
                              "is not measured yet, so it is off by default")

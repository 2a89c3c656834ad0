"""The ``evaluate`` section: settings of the `evaluate` stage.

The gate lives here: for every stable metric name an absolute bound (``threshold``) and the allowed
relative regression against the current champion (``max_regression``, a fraction). ``evaluate``
writes them to ``gate.json`` next to ``metrics.json``; ``register`` applies them. Whether a metric is
better high or low is a fact of the metric (``GREATER_IS_BETTER`` below),
not a setting, so it cannot be configured the wrong way round.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from components.config.base import Strict

# Where the FID Inception weights (pytorch-fid's file, user-supplied) sit in the asset dir by default; the
# asset manifest lists the file at this path.
FID_INCEPTION_WEIGHTS = "weights/pt_inception-2015-12-05.pth"

# The stable metric names (the registry compares model versions by them) and their direction.
# The stage, the gate, the summary table and the tests read this table.
GREATER_IS_BETTER: dict[str, bool] = {
    "eval/self/psnr": True,
    "eval/self/ssim": True,
    "eval/self/lpips": False,
    "eval/self/csim": True,
    "eval/self/aed": False,
    "eval/self/apd": False,
    "eval/self/akd": False,
    "eval/self/face_rate": True,
    "eval/cross/csim": True,
    "eval/cross/aed": False,
    "eval/cross/apd": False,
    "eval/cross/face_rate": True,
    "eval/novel/csim": True,
    "eval/fid": False,
}
METRIC_NAMES: tuple[str, ...] = tuple(GREATER_IS_BETTER)


class GateRule(Strict):
    """What a candidate must reach on one metric (None = no such rule)."""

    threshold: float | None = Field(None, description="absolute bound: >= for greater-is-better metrics, else <=")
    max_regression: float | None = Field(
        None, ge=0, description="allowed relative regression vs the champion, a fraction (0.05 = 5% worse at most)"
    )


def _paper_gate() -> dict[str, GateRule]:
    """Loose absolute floors that only a broken model misses (papers differ by several dB between
    protocols, DESIGN §9), plus 5% regression against our own champion on every metric."""
    floors = {
        "eval/self/psnr": 15.0, "eval/self/ssim": 0.5, "eval/self/lpips": 0.4, "eval/self/csim": 0.5,
        "eval/self/aed": 1.0, "eval/self/apd": 0.3, "eval/self/akd": 20.0, "eval/self/face_rate": 0.9,
        "eval/cross/csim": 0.4, "eval/cross/aed": 1.5, "eval/cross/apd": 0.4, "eval/cross/face_rate": 0.9,
        "eval/novel/csim": 0.4, "eval/fid": None,
    }  # fmt: skip
    return {name: GateRule(threshold=floors[name], max_regression=0.05) for name in METRIC_NAMES}


class EvaluateConfig(Strict):
    """Held-out reenactment evaluation: what is rendered, how it is summarised, what the gate asks."""

    frames_per_clip: int = Field(
        50, ge=2, description="at most this many frames per test clip (source + drivings), evenly spaced"
    )
    novel_yaws: tuple[float, ...] = Field(
        (-0.6, -0.3, 0.3, 0.6), min_length=1, description="yaw offsets (rad, pitch 0) of the novel-view renders"
    )
    bootstrap_samples: int = Field(1000, ge=10, description="bootstrap resamples of the clips for the 95% interval")
    bootstrap_seed: int = Field(0, ge=0, description="seed of the bootstrap (intervals are reproducible)")
    confidence: float = Field(0.95, gt=0, lt=1, description="coverage of the bootstrap interval")
    sample_items: int = Field(4, ge=1, description="test clips shown in samples/grid.png (the first ones by id)")
    turntable_frames: int = Field(48, ge=2, description="frames of samples/turntable.mp4")
    video_fps: int = Field(25, gt=0, description="frame rate of the sample videos")
    render_batch: int = Field(8, gt=0, description="frames per Ψ forward pass")
    fid_inception_weights: str = Field(
        FID_INCEPTION_WEIGHTS,
        description="FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth), relative to "
        "the asset dir; FID is computed only when this file is present",
    )
    max_failure_ratio: float = Field(
        0.3, ge=0, le=1, description="the stage fails when unusable test frames / all test frames exceed this"
    )
    gate: dict[str, GateRule] = Field(default_factory=_paper_gate, description="per metric: threshold, max_regression")

    @field_validator("gate", mode="before")
    @classmethod
    def _over_defaults(cls, value):
        """Rules given (params.yaml, --params) are laid over the default gate field by field, so setting one
        threshold keeps every other rule."""
        if not isinstance(value, dict):
            return value
        merged = {name: rule.model_dump() for name, rule in _paper_gate().items()}
        for name, rule in value.items():
            rule = rule.model_dump() if isinstance(rule, GateRule) else rule
            merged[name] = {**merged[name], **rule} if isinstance(rule, dict) and name in merged else rule
        return merged

    @model_validator(mode="after")
    def _known_metrics(self) -> "EvaluateConfig":
        unknown = sorted(set(self.gate) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(f"gate: unknown metric(s) {unknown}; known: {', '.join(METRIC_NAMES)}")
        return self

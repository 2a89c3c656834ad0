"""The one typed configuration of the system (pydantic v2).

Everything else derives from it: the ``p4d`` CLI, ``params.yaml`` (DVC), the Kubeflow pipeline
parameters and the DeepSpeed JSON. Two profiles exist:

- ``paper``: the numbers of the Portrait4D-v2 paper verbatim and the official network sizes
  (8x A100-80GB).
- ``tiny``: the same structure scaled down so that the embedded default runs on 2 CPU cores in
  minutes.

Schedules are counted in *images seen*, so they do not depend on the number of GPUs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here)
from model.cameras import CameraDistribution
from model.deformation import DeformationConfig
from model.networks.arcface import ArcFaceConfig
from model.networks.discriminator import DiscriminatorConfig
from model.networks.genhead import GenHeadConfig
from model.networks.lpips import LPIPSConfig
from model.networks.pdfgc import PDFGCConfig
from model.networks.psi.config import PsiConfig
from components.animate.config import AnimateConfig
from components.deploy.config import DeployConfig
from components.evaluate.config import EvaluateConfig
from components.fit_flame.config import FitFlameConfig
from components.platform import PlatformConfig, tiny_overrides as platform_tiny_overrides
from components.register.config import RegisterConfig
from components.synthesize.config import SynthesizeConfig
from components.train.config import TrainConfig

PROFILES = ("tiny", "paper")
Profile = Literal["tiny", "paper"]


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


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
    """Loss terms shared by Ψ_3d and Ψ (DESIGN §3)."""

    l1: float = Field(1.0, ge=0)
    lpips: float = Field(1.0, ge=0)
    identity: float = Field(1.0, ge=0, description="ArcFace-r18 identity loss")
    adversarial: float = Field(0.01, ge=0, description="softplus adversarial loss weight")
    r1_gamma: float = Field(1.0, ge=0, description="R1 regularisation strength")
    depth: float = Field(1.0, ge=0, description="early depth term (Ψ_3d, first 1M images)")
    # official loss_recon_v1.py: loss_recon_triplane * 0.1
    triplane: float = Field(0.1, ge=0, description="early triplane-feature term L_T (Ψ_3d, first 1M images)")


class DeepSpeedSection(Strict):
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="ZeRO optimisation stage")
    bf16: bool = Field(True, description="bf16 mixed precision (CUDA only; CPU runs fp32)")
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_clipping: float = Field(0.0, ge=0, description="0 disables clipping")


class CheckpointSection(Strict):
    every_images: int = Field(200_000, gt=0, description="write a checkpoint every N images")
    keep_last: int = Field(3, gt=0, description="checkpoints to keep")
    ema_half_life_images: int = Field(10_000, ge=0, description="EMA half-life of the generator (official ema_kimg=10)")


class StorageSection(Strict):
    """Object store. Credentials never live here: boto3 reads them from the environment."""

    bucket: str = Field("p4d", min_length=3, description="S3 bucket for data, artifacts and models")
    prefix: str = Field("", description="key prefix inside the bucket")
    endpoint_url_env: str = Field("AWS_ENDPOINT_URL", description="env var holding the S3 endpoint (MinIO/moto)")


class TrackingSection(Strict):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (env MLFLOW_TRACKING_URI wins)")
    experiment: str = Field("portrait4d-v2", min_length=1)
    registered_model: str = Field("portrait4d-v2", min_length=1)


class MetricsSection(Strict):
    port: int = Field(0, ge=0, le=65535, description="Prometheus HTTP port on rank 0 (0 = pick a free one)")
    pushgateway_url: str | None = Field(None, description="Pushgateway for batch steps (env PUSHGATEWAY_URL wins)")


class NetworksSection(Strict):
    """Architecture of every network; defaults are the official sizes (state dicts load 1:1)."""

    genhead: GenHeadConfig = GenHeadConfig()
    psi3d: PsiConfig = PsiConfig.psi3d()
    psi: PsiConfig = PsiConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    pdfgc: PDFGCConfig = PDFGCConfig()
    arcface: ArcFaceConfig = ArcFaceConfig()
    lpips: LPIPSConfig = LPIPSConfig()
    deformation: DeformationConfig = DeformationConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "NetworksSection":
        if not self.psi3d.static or self.psi.static:
            raise ValueError("networks.psi3d must be static (Ψ_3d) and networks.psi must not be")
        sizes = {
            "genhead.img_resolution": self.genhead.img_resolution,
            "psi3d.img_resolution": self.psi3d.img_resolution,
            "psi.img_resolution": self.psi.img_resolution,
            "discriminator.img_resolution": self.discriminator.img_resolution,
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"image resolutions must agree across networks, got {sizes}")
        for name in ("psi3d", "psi"):
            if getattr(self, name).motion_dim != self.pdfgc.motion_dim:
                raise ValueError(
                    f"networks.{name}.motion_dim ({getattr(self, name).motion_dim}) must equal the PD-FGC "
                    f"embedding width networks.pdfgc.motion_dim ({self.pdfgc.motion_dim})"
                )
        return self

    @property
    def image_resolution(self) -> int:
        return self.psi.img_resolution


# The `register` section's name is also ABCMeta.register (pydantic models are ABCs); the field shadows it on
# instances, which is what we want: silence pydantic's warning about it, and only it.
warnings.filterwarnings("ignore", message='Field name "register" in "P4DConfig" shadows', category=UserWarning)


class P4DConfig(Strict):
    profile: Profile = Field("tiny", description="named profile this config was built from")
    seed: int = Field(0, ge=0)
    networks: NetworksSection = NetworksSection()
    cameras: CameraDistribution = CameraDistribution()
    camera_mix_fitted_prob: float = Field(
        0.5, ge=0, le=1, description="probability of a fitted (real) camera instead of a sampled one"
    )
    fit_flame: FitFlameConfig = FitFlameConfig()
    synthesize: SynthesizeConfig = SynthesizeConfig()
    train: TrainConfig = TrainConfig()
    psi3d: Psi3dSchedule = Psi3dSchedule()
    psi: PsiSchedule = PsiSchedule()
    losses: LossWeights = LossWeights()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    checkpoints: CheckpointSection = CheckpointSection()
    storage: StorageSection = StorageSection()
    tracking: TrackingSection = TrackingSection()
    metrics: MetricsSection = MetricsSection()
    platform: PlatformConfig = PlatformConfig()
    register: RegisterConfig = RegisterConfig()
    animate: AnimateConfig = AnimateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()


def _paper() -> dict[str, Any]:
    return {"profile": "paper"}


def _tiny() -> dict[str, Any]:
    """Same structure, scaled for 2 CPU cores: every size and image count shrinks, no switch is dropped."""
    return {
        "profile": "tiny",
        "networks": {
            "genhead": GenHeadConfig.tiny().model_dump(),
            # Ψ consumes PD-FGC's motion embedding, so the tiny Ψ takes the tiny encoder's width
            "psi3d": PsiConfig.tiny(static=True, motion_dim=PDFGCConfig.tiny().motion_dim).model_dump(),
            "psi": PsiConfig.tiny(motion_dim=PDFGCConfig.tiny().motion_dim).model_dump(),
            "discriminator": DiscriminatorConfig.tiny().model_copy(update={"img_resolution": 64}).model_dump(),
            "pdfgc": PDFGCConfig.tiny().model_dump(),
            "arcface": ArcFaceConfig.tiny().model_dump(),
            "lpips": LPIPSConfig.tiny().model_dump(),
            "deformation": DeformationConfig.tiny().model_dump(),
        },
        "fit_flame": FitFlameConfig.tiny().model_dump(),
        "synthesize": SynthesizeConfig.tiny().model_dump(),
        "train": TrainConfig.tiny().model_dump(),
        "psi3d": {
            "batch": 2,
            "total_images": 48,
            "adversarial_start_images": 16,
            "renderer_frozen_until_images": 16,
            "depth_and_triplane_loss_until_images": 16,
            "neural_resolution_initial": 16,
            "neural_resolution_final": 32,
            "resolution_ramp_start_images": 16,
            "resolution_ramp_images": 16,
        },
        "psi": {
            "batch": 2,
            "total_images": 32,
            "neural_resolution": 32,
            "training_clips": 2,
            "frames_per_clip": 4,
        },
        "deepspeed": {"zero_stage": 0, "bf16": False},
        "platform": platform_tiny_overrides(),
        "checkpoints": {"every_images": 16, "keep_last": 2, "ema_half_life_images": 8},
        "register": RegisterConfig.tiny().model_dump(),
        "evaluate": EvaluateConfig.tiny().model_dump(),
        "deploy": DeployConfig.tiny().model_dump(),
    }


PROFILE_DEFAULTS = {"paper": _paper, "tiny": _tiny}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _allowed(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at ``loc`` (the parent of an unknown key)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def format_validation_error(err: ValidationError, model: type[BaseModel] = P4DConfig) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed(model, loc[:-1])
            lines.append(f"{where}: unknown key (allowed here: {', '.join(allowed) or 'none'})")
        else:
            lines.append(f"{where}: got {e.get('input')!r}; {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def build_config(profile: str = "tiny", overrides: dict[str, Any] | None = None) -> P4DConfig:
    """The resolved config: the profile's values, then ``overrides`` on top, validated."""
    if profile not in PROFILE_DEFAULTS:
        raise ConfigError(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
    data = deep_merge(PROFILE_DEFAULTS[profile](), overrides or {})
    if data.get("profile", profile) != profile:
        raise ConfigError(f"profile: overrides set profile {data['profile']!r} but {profile!r} was asked for")
    try:
        return P4DConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_params(path: str | Path) -> P4DConfig:
    """Read ``params.yaml``: ``profile: NAME`` plus any section overrides, validated."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    profile = raw.get("profile", "tiny")
    try:
        return build_config(profile, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def resolve_config(
    profile: str | None = None,
    params: str | Path | None = None,
    section: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> P4DConfig:
    """What a stage's CLI runs with: ``--params`` (or the bare ``--profile``), then its own command-line
    ``overrides`` on top of its ``section``, validated as one config."""
    raw: dict[str, Any] = {}
    if params is not None:
        raw = load_params(params).model_dump(mode="json")
        if profile is not None and profile != raw["profile"]:
            raise ConfigError(f"--profile {profile} contradicts {params} (profile: {raw['profile']})")
        profile = raw["profile"]
    profile = profile or "tiny"
    if section and overrides:
        raw = deep_merge(raw, {section: overrides})  # build_config lays raw over the profile's values
    return build_config(profile, raw)


def dump_config(cfg: P4DConfig, fmt: Literal["json", "yaml"] = "yaml") -> str:
    data = cfg.model_dump(mode="json")
    if fmt == "json":
        import json

        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False)

"""``P4DConfig``: the root of the typed configuration, one field per section.

Each section lives in its own module of this package (``fit_flame.py``, ``train.py``, ...); the stage
packages import their section from there, and this package imports nothing from the stages.
"""

from __future__ import annotations

import warnings

from pydantic import Field

from components.config.animate import AnimateConfig
from components.config.base import Strict
from components.config.deploy import DeployConfig
from components.config.evaluate import EvaluateConfig
from components.config.fit_flame import FitFlameConfig
from components.config.io import MetricsSection, StorageSection, TrackingSection
from components.config.networks import NetworksSection
from components.config.platform import PlatformConfig
from components.config.profiles import Profile
from components.config.register import RegisterConfig
from components.config.synthesize import SynthesizeConfig
from components.config.train import (
    CheckpointSection,
    DeepSpeedSection,
    LossWeights,
    Psi3dSchedule,
    PsiSchedule,
    TrainConfig,
)
from model.cameras import CameraDistribution

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

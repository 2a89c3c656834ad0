"""``P4DConfig``: the root of the typed configuration, one field per section.

Each section lives in its own module of this package (``fit_flame.py``, ``train.py``, ...); the stage
packages import their section from there, and this package imports nothing from the stages.
"""

from __future__ import annotations

import warnings

from pydantic import Field, model_validator

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

    @model_validator(mode="after")
    def _one_neural_resolution(self) -> "P4DConfig":
        """The schedules say at which neural rendering resolution Ψ_3d and Ψ train; the network configs carry
        the resolution their weights render at when served (``render_frame``'s default, recorded in every
        model file). They must agree, or a served Ψ renders at another resolution than it was trained at."""
        pairs = (
            ("psi.neural_resolution", self.psi.neural_resolution,
             "networks.psi.neural_rendering_resolution", self.networks.psi.neural_rendering_resolution),
            ("psi3d.neural_resolution_initial", self.psi3d.neural_resolution_initial,
             "networks.psi3d.neural_rendering_resolution", self.networks.psi3d.neural_rendering_resolution),
        )
        for train_key, trained, net_key, served in pairs:
            if trained != served:
                raise ValueError(f"{train_key} ({trained}) and {net_key} ({served}) must be equal: Ψ is served "
                                 f"at the resolution it was trained at; set both")
        return self

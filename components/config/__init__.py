"""The one typed configuration of the system (pydantic v2).

Everything else derives from it: the ``p4d`` CLI, ``params.yaml`` (DVC), the Kubeflow pipeline
parameters and the DeepSpeed JSON. This package owns every section, one module each (``fit_flame``,
``synthesize``, ``train`` with the schedules and loss weights, ``animate``, ``evaluate``, ``register``,
``deploy``, ``platform``, ``networks``, ``io``); ``profiles`` holds what ``paper`` and ``tiny`` set,
``schema`` the root ``P4DConfig`` and ``loading`` how a run's config is resolved. It imports nothing from
the stage packages (only ``model/`` and ``components.errors``), so every stage can import it.
"""

from components.config.animate import AnimateConfig, OneEuro
from components.config.deploy import DeployConfig
from components.config.evaluate import GREATER_IS_BETTER, METRIC_NAMES, EvaluateConfig, GateRule
from components.config.fit_flame import FitFlameConfig
from components.config.io import MetricsSection, StorageSection, TrackingSection
from components.config.loading import (
    build_config,
    deep_merge,
    dump_config,
    format_validation_error,
    load_params,
    resolve_config,
)
from components.config.networks import NetworksSection
from components.config.platform import PlatformConfig
from components.config.profiles import PROFILE_DEFAULTS, PROFILES, Profile
from components.config.register import RegisterConfig
from components.config.schema import P4DConfig
from components.config.synthesize import SynthesizeConfig
from components.config.train import (
    CheckpointSection,
    DeepSpeedSection,
    LossWeights,
    Psi3dSchedule,
    PsiSchedule,
    TrainConfig,
)
from components.errors import ConfigError

__all__ = [
    "GREATER_IS_BETTER",
    "METRIC_NAMES",
    "PROFILES",
    "PROFILE_DEFAULTS",
    "AnimateConfig",
    "CheckpointSection",
    "ConfigError",
    "DeepSpeedSection",
    "DeployConfig",
    "EvaluateConfig",
    "FitFlameConfig",
    "GateRule",
    "LossWeights",
    "MetricsSection",
    "NetworksSection",
    "OneEuro",
    "P4DConfig",
    "PlatformConfig",
    "Profile",
    "Psi3dSchedule",
    "PsiSchedule",
    "RegisterConfig",
    "StorageSection",
    "SynthesizeConfig",
    "TrackingSection",
    "TrainConfig",
    "build_config",
    "deep_merge",
    "dump_config",
    "format_validation_error",
    "load_params",
    "resolve_config",
]

"""The cluster side of the typed config, for the orchestration code: ``P4DConfig.platform``.

The section itself lives in components/platform.py (the typed config composes it); this module keeps
the names the pipeline code imports and the two helpers that resolve it from a profile or a config.
"""

from __future__ import annotations

from typing import Any

from components.config import P4DConfig, build_config, deep_merge
from components.platform import (  # noqa: F401  (re-exported for the pipeline code)
    IMAGE_VERSION,
    Endpoints,
    GpuNodePool,
    Images,
    PlatformConfig,
    PyTorchJobSection,
    SecretRefs,
    StageResources,
    tiny_overrides,
)


def build_platform(profile: str, overrides: dict[str, Any] | None = None) -> PlatformConfig:
    """The platform section of ``profile`` with ``overrides`` on top, validated with the whole config."""
    base = build_config(profile).platform
    if not overrides:
        return base
    # ``stages`` is a mapping: merge into the profile's full section so unnamed stages keep their values
    return build_config(profile, {"platform": deep_merge(base.model_dump(mode="json"), overrides)}).platform


def platform_for(cfg: P4DConfig) -> PlatformConfig:
    return cfg.platform

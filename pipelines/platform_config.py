"""Resolve the cluster section of the typed config (``P4DConfig.platform``, defined in components/config/platform.py)."""

from __future__ import annotations

from typing import Any

from components.config import build_config, deep_merge
from components.config.platform import PlatformConfig


def build_platform(profile: str, overrides: dict[str, Any] | None = None) -> PlatformConfig:
    """The platform section of ``profile`` with ``overrides`` on top, validated with the whole config."""
    base = build_config(profile).platform
    if not overrides:
        return base
    # ``stages`` is a mapping: merge into the profile's full section so unnamed stages keep their values
    return build_config(profile, {"platform": deep_merge(base.model_dump(mode="json"), overrides)}).platform

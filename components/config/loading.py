"""Building the resolved config: a profile's values, then ``params.yaml`` and command-line overrides on top,
validated as one ``P4DConfig``; and the one-line-per-problem message of a config that does not validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from components.config.profiles import PROFILE_DEFAULTS, PROFILES
from components.config.schema import P4DConfig
from components.errors import ConfigError


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
        if not loc:  # a rule across sections (a model validator): its message names the keys, the input is all
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
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
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False)

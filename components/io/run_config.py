"""The resolved config saved in every run folder, and the one way a refused resume names what changed.

Every stage writes ``config.yaml`` (the ``dump_config`` YAML of the run's ``P4DConfig``) into the folder it
writes, as nerfstudio's ``Config.save_config`` does, so a run folder says what made it and
``components.config.load_params`` reads it back into the same config.

A stage that resumes into an existing folder compares what it saved there with what it would use now
(synthesize: its settings fingerprint; train: the part of the config its checkpoints cover). When they
differ, the refusal names the dotted keys with both values, e.g.
``resume refused: these settings differ from the run in runs/psi3d: psi3d.lr (0.0001 -> 0.0002)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.config import P4DConfig, dump_config
from components.io.atomic import atomic_write_text
from components.io.tracking import flatten_config  # the same dotted keys the MLflow params carry

RUN_CONFIG_FILE = "config.yaml"
MAX_NAMED_KEYS = 8  # keys a refusal names with their values; the rest are counted
MAX_VALUE_CHARS = 24  # a longer value (a sha256, a list) is cut in the message: the key is what matters
_ABSENT = object()


def run_config_text(cfg: P4DConfig | Mapping[str, Any]) -> str:
    """The YAML saved as ``config.yaml``: the whole resolved config, in the order its sections are declared."""
    if isinstance(cfg, P4DConfig):
        return dump_config(cfg, "yaml")
    return yaml.safe_dump(dict(cfg), sort_keys=False)


def write_run_config(run_dir: str | Path, cfg: P4DConfig | Mapping[str, Any]) -> Path:
    """Write ``run_dir/config.yaml`` atomically (a reader never sees half of it); returns its path."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    atomic_write_text(path, run_config_text(cfg))
    return path


def config_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two nested configs, added and removed keys included, sorted."""
    old, new = flatten_config(saved), flatten_config(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT))


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def describe_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"a.b (old -> new), c (absent -> 1)"`` for the differing keys, at most ``MAX_NAMED_KEYS`` of them."""
    old, new = flatten_config(saved), flatten_config(current)
    keys = config_difference(saved, current)
    parts = [f"{k} ({_show(old.get(k, _ABSENT))} -> {_show(new.get(k, _ABSENT))})" for k in keys[:MAX_NAMED_KEYS]]
    if len(keys) > MAX_NAMED_KEYS:
        parts.append(f"and {len(keys) - MAX_NAMED_KEYS} more")
    return ", ".join(parts)


def resume_refusal(run: str | Path, saved: Mapping[str, Any], current: Mapping[str, Any], advice: str) -> str:
    """The one-line message of a refused resume: which settings differ from the run in ``run``, then ``advice``."""
    keys = describe_difference(saved, current)
    return f"resume refused: these settings differ from the run in {run}: {keys}; {advice}"

"""Generate ``dvc.yaml`` from the DAG description (pipelines/dag.py).

Each available stage becomes a DVC stage: ``cmd`` is the stage's ``p4d`` argv with local paths,
``deps`` its input nodes, ``outs`` its output nodes, ``params`` the config sections it depends on
that ``params.yaml`` can hold (fields of the typed config; a section appears in ``params.yaml`` as
``{}`` when it only has the profile's values, so DVC sees the key and a later override re-runs the
stage). Paths are relative to the directory holding ``dvc.yaml`` (the repository root, or a
``p4d demo`` run directory, which uses the same layout).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel

from components.config import P4DConfig, load_params
from components.io.atomic import atomic_write_text
from pipelines.dag import DATA, ResolvedStage, Stage

HEADER = (
    "# GENERATED from pipelines/dag.py by `p4d pipeline dvc` — do not edit by hand.\n"
    "# The Kubeflow pipeline (pipelines/compiled/) comes from the same description.\n"
)
PARAMS_FILE = "params.yaml"


def tracked_params(stage: Stage) -> list[str]:
    """The stage's config sections that params.yaml can hold (unattached sections are skipped)."""
    return [p for p in stage.params if p in P4DConfig.model_fields]


def dvc_stage(rs: ResolvedStage, paths: Mapping[str, str] | None = None, params_file: str = PARAMS_FILE) -> dict:
    s = rs.stage
    values = {n: (paths or {}).get(n, DATA[n].path) for n in (*s.inputs, *s.outputs)}
    values.update(params=params_file, device=rs.device)
    stage = {
        "desc": s.description,
        "cmd": shlex.join(["p4d", *s.render(values)]),
        "deps": [values[n] for n in s.inputs],
        "params": tracked_params(s),
        "outs": [values[n] for n in s.outputs],
    }
    if params_file != PARAMS_FILE:
        stage["params"] = [{params_file: stage["params"]}]
    return stage


def render_dvc(stages: list[ResolvedStage], paths: Mapping[str, str] | None = None) -> dict:
    return {"stages": {rs.name: dvc_stage(rs, paths) for rs in stages}}


def dvc_yaml_text(doc: dict) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


def params_keys(stages: list[ResolvedStage]) -> list[str]:
    keys: list[str] = []
    for rs in stages:
        keys += [k for k in tracked_params(rs.stage) if k not in keys]
    return keys


def missing_params_keys(params_path: Path, keys: list[str]) -> list[str]:
    raw = yaml.safe_load(params_path.read_text()) or {}
    return [k for k in keys if k not in raw]


def _entry(key: str, cfg: P4DConfig) -> str:
    """``section: {}`` (the profile's values) for a section, ``key: value`` for a plain value."""
    value = getattr(cfg, key)
    if isinstance(value, BaseModel):
        return f"{key}: {{}}\n"
    return yaml.safe_dump({key: value}, default_flow_style=False)


def ensure_params_keys(params_path: Path, keys: list[str]) -> list[str]:
    """Append every tracked key params.yaml lacks, with the profile's value (comments and order kept)."""
    missing = missing_params_keys(params_path, keys)
    if missing:
        cfg = load_params(params_path)
        text = params_path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        if "# Keys the DVC stages track" not in text:
            text += "# Keys the DVC stages track ({} = the profile's values; put overrides inside).\n"
        text += "".join(_entry(k, cfg) for k in missing)
        atomic_write_text(params_path, text)
    return missing


def write_dvc(root: Path, stages: list[ResolvedStage], paths: Mapping[str, str] | None = None) -> Path:
    """Write ``root/dvc.yaml`` and make ``root/params.yaml`` hold every tracked key."""
    target = root / "dvc.yaml"
    text = dvc_yaml_text(render_dvc(stages, paths))
    if not target.exists() or target.read_text() != text:
        atomic_write_text(target, text)
    ensure_params_keys(root / PARAMS_FILE, params_keys(stages))
    return target

"""Generate ``dvc.yaml`` from the DAG description (pipelines/dag.py).

Each available stage becomes a DVC stage: ``cmd`` is the stage's ``p4d`` argv with local paths,
``deps`` its input nodes, ``outs`` its output nodes, ``params`` the config keys it reads that
``params.yaml`` can hold (fields of the typed config, dotted for a sub-section such as
``networks.genhead``; a section appears in ``params.yaml`` as ``{}`` when it only has the profile's
values, so DVC sees the key and a later override re-runs exactly the stages that read it). Paths are
relative to the directory holding ``dvc.yaml`` (the repository root, or a ``p4d demo`` run directory,
which uses the same layout).

The outputs of a stage that resumes from its own output (training: checkpoints) are ``persist: true``:
DVC would otherwise delete them before running the stage, and ``dvc repro`` after a kill would start
training from image 0 instead of resuming.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from components.config import P4DConfig, load_params
from components.io.atomic import atomic_write_text
from pipelines.dag import DATA, ResolvedStage, Stage
from pipelines.stage_exec import resumes

HEADER = (
    "# GENERATED from pipelines/dag.py by `p4d pipeline dvc` — do not edit by hand.\n"
    "# The Kubeflow pipeline (pipelines/compiled/) comes from the same description.\n"
)
PARAMS_FILE = "params.yaml"


def config_field(key: str) -> Any:
    """The field class (a pydantic model) or annotation at dotted ``key`` of P4DConfig; KeyError if none."""
    model: Any = P4DConfig
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            raise KeyError(key)
        model = fields[part].annotation
    return model


def is_section(key: str) -> bool:
    model = config_field(key)
    return isinstance(model, type) and issubclass(model, BaseModel)


def tracked_params(stage: Stage) -> list[str]:
    """The stage's config keys that params.yaml can hold (keys of unattached sections are skipped)."""
    out = []
    for key in stage.params:
        try:
            config_field(key)
        except KeyError:
            continue
        out.append(key)
    return out


def dvc_stage(rs: ResolvedStage, paths: Mapping[str, str] | None = None, params_file: str = PARAMS_FILE) -> dict:
    s = rs.stage
    values = {n: (paths or {}).get(n, DATA[n].path) for n in (*s.inputs, *s.outputs)}
    values.update(params=params_file, device=rs.device)
    stage = {
        "desc": s.description,
        "cmd": shlex.join(["p4d", *s.render(values)]),
        "deps": [values[n] for n in s.inputs],
        "params": tracked_params(s),
        "outs": [{values[n]: {"persist": True}} if resumes(s) else values[n] for n in s.outputs],
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


def _has(raw: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


def missing_params_keys(params_path: Path, keys: list[str]) -> list[str]:
    raw = yaml.safe_load(params_path.read_text()) or {}
    return [k for k in keys if not _has(raw, k)]


def _value(key: str, cfg: P4DConfig) -> Any:
    """``{}`` (the profile's values) for a section, the value itself for a plain field."""
    if is_section(key):
        return {}
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _top_level_span(lines: list[str], key: str) -> tuple[int, int] | None:
    """[start, end) of the lines holding top-level ``key`` and its nested block."""
    pattern = re.compile(rf"^{re.escape(key)}\s*:")
    for i, line in enumerate(lines):
        if pattern.match(line):
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t"):
                end += 1
            return i, end
    return None


def ensure_params_keys(params_path: Path, keys: list[str]) -> list[str]:
    """Add every tracked key params.yaml lacks, with the profile's value: a new top-level key is appended
    (comments and order kept); a sub-key (``networks.genhead``) is added inside its section, whose lines
    are rewritten with the values they held."""
    missing = missing_params_keys(params_path, keys)
    if not missing:
        return missing
    cfg = load_params(params_path)
    raw = yaml.safe_load(params_path.read_text()) or {}
    lines = params_path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    appended: list[str] = []
    for top in dict.fromkeys(k.split(".")[0] for k in missing):
        if not is_section(top):  # a plain value (seed, camera_mix_fitted_prob): missing means absent
            appended.append(yaml.safe_dump({top: _value(top, cfg)}, default_flow_style=False, sort_keys=False))
            continue
        section = dict(raw[top]) if isinstance(raw.get(top), dict) else {}
        for key in (k for k in missing if k.split(".")[0] == top and "." in k):
            node = section
            *parents, leaf = key.split(".")[1:]
            for part in parents:
                node = node.setdefault(part, {})
            node.setdefault(leaf, _value(key, cfg))
        block = yaml.safe_dump({top: section}, default_flow_style=False, sort_keys=False)
        span = _top_level_span(lines, top)
        if span is None:
            appended.append(block)
        else:
            lines[span[0]:span[1]] = [block]
    text = "".join(lines)
    if appended:
        if "# Keys the DVC stages track" not in text:
            text += "# Keys the DVC stages track ({} = the profile's values; put overrides inside).\n"
        text += "".join(appended)
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

"""Where a registered Ψ came from: DVC hashes of its data, the MLflow runs that made it, the schedule reached.

Data hashes are DVC's own (``dvc.lock``): the ``outs[].md5`` that the stage which wrote a data node
recorded, or the ``deps[].md5`` of a source node (raw footage, assets) that no stage writes. Training data
is everything upstream of the Ψ folder; test data is what the evaluation read besides Ψ and its upstream.
Nothing here hashes files itself: without a ``dvc.lock`` (a run outside DVC) there are no DVC tags and the
card says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.errors import P4DError


class LineageError(P4DError):
    """``dvc.lock`` is unreadable or does not describe the given Ψ / evaluation folders."""


@dataclass(frozen=True)
class DvcLineage:
    lock: Path | None
    train: dict[str, str] = field(default_factory=dict)  # data node path (relative to dvc.yaml) -> DVC md5
    test: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        if self.lock is None:
            return {"dvc.lock": "none"}
        return {"dvc.lock": str(self.lock), **{_tag_key("dvc.train", p): h for p, h in self.train.items()},
                **{_tag_key("dvc.test", p): h for p, h in self.test.items()}}


def _tag_key(prefix: str, path: str) -> str:
    """An MLflow tag key for a data path. MLflow refuses keys that would resolve to other names as files
    (``..`` segments, absolute paths): data outside the DVC project (e.g. ``--assets`` elsewhere) is keyed
    ``external/<its path without the climb>``."""
    parts = [p for p in Path(path).as_posix().split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts:
        parts = ["external", *[p for p in parts if p != ".."]]
    return f"{prefix}.{'/'.join(parts)}"


def _norm(root: Path, path: str) -> str:
    return os.path.normpath(os.path.join(root, path))


def _read_lock(lock: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise LineageError(f"{lock}: not a readable dvc.lock ({err})") from None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        raise LineageError(f"{lock}: no 'stages' mapping; is it a DVC 2/3 lock file?")
    return stages


def _entries(stage: dict, key: str) -> list[dict]:
    return [e for e in (stage.get(key) or []) if isinstance(e, dict) and "path" in e]


def dvc_lineage(lock: str | Path | None, psi_dir: str | Path, evaluation_dir: str | Path) -> DvcLineage:
    """Training and test data hashes of ``psi_dir`` / ``evaluation_dir`` from ``lock`` (None: no DVC run)."""
    if lock is None:
        return DvcLineage(None)
    lock = Path(lock)
    stages = _read_lock(lock)
    root = lock.resolve().parent
    writer: dict[str, tuple[str, str]] = {}  # normalised path -> (stage, md5)
    for name, stage in stages.items():
        for out in _entries(stage, "outs"):
            writer[_norm(root, out["path"])] = (name, str(out.get("md5", "")))

    def written(folder: str | Path, what: str) -> tuple[str, str, str]:
        """(relative path, writing stage, its md5) of an output folder."""
        path = os.path.normpath(Path(folder).resolve())
        if path not in writer:
            raise LineageError(f"{lock}: no stage writes {what} {folder}; pass the dvc.lock of the run that made "
                               "it (or none, outside DVC)")
        return (os.path.relpath(path, root), *writer[path])

    def upstream(stage_name: str, seen: dict[str, str]) -> dict[str, str]:
        for dep in _entries(stages[stage_name], "deps"):
            path = _norm(root, dep["path"])
            rel = os.path.relpath(path, root)
            if rel in seen:
                continue
            if path in writer:
                parent, md5 = writer[path]
                seen[rel] = md5
                upstream(parent, seen)
            else:  # a source node: DVC's hash of it as a dependency
                seen[rel] = str(dep.get("md5", ""))
        return seen

    psi_rel, psi_stage, psi_md5 = written(psi_dir, "the Ψ folder")
    train = upstream(psi_stage, {psi_rel: psi_md5})
    _, eval_stage, _ = written(evaluation_dir, "the evaluation folder")
    test = {p: h for p, h in upstream(eval_stage, {}).items() if p not in train}
    return DvcLineage(lock, dict(sorted(train.items())), dict(sorted(test.items())))


@dataclass(frozen=True)
class TrainingRecord:
    """What a `p4d train` folder says about its run (from the newest complete checkpoint)."""

    run_id: str | None
    images_seen: int | None
    config_sha256: str | None


def training_record(run_dir: str | Path | None) -> TrainingRecord:
    from components.train.checkpoint import STATE_FILE, complete_checkpoints

    if run_dir is None or not Path(run_dir).is_dir():
        return TrainingRecord(None, None, None)
    done = complete_checkpoints(Path(run_dir) / "checkpoints")
    if not done:  # only the final export: its metadata holds the images seen
        return TrainingRecord(None, _exported_images_seen(Path(run_dir)), None)
    state = json.loads((done[-1] / STATE_FILE).read_text(encoding="utf-8"))
    return TrainingRecord(state.get("mlflow_run_id"), state.get("images_seen"), state.get("config_sha256"))


def _exported_images_seen(run_dir: Path) -> int | None:
    import safetensors

    from components.train.models import MODEL_DIR

    for path in sorted((run_dir / MODEL_DIR).glob("*.safetensors")):
        if path.name.startswith("discriminator"):
            continue
        with safetensors.safe_open(str(path), "pt") as fh:
            seen = (fh.metadata() or {}).get("images_seen")
        return int(seen) if seen and seen.isdigit() else None
    return None


def psi3d_folder(psi_run_params: dict[str, str]) -> Path | None:
    """The Ψ_3d run folder that Ψ was initialised from: the Ψ run records the weights path it read
    (``run.psi3d_weights``: the folder itself, its ``model/`` export or a checkpoint's EMA file)."""
    weights = psi_run_params.get("run.psi3d_weights")
    if not weights:
        return None
    path = Path(weights)
    for candidate in (path, *list(path.parents)[:3]):  # file -> ckpt-* -> checkpoints -> run folder
        if (candidate / "checkpoints").is_dir():
            return candidate
    return None

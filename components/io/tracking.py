"""MLflow tracking of a training stage: one run per stage, written by rank 0 only.

The run carries the resolved config as params (flattened ``section.field`` keys), metrics by step,
images (sample grids, loss curves) and artifacts (the DeepSpeed JSON, the final model and checkpoint),
and the lineage tags reviewers filter on: ``git_commit``, ``data_version`` and ``pipeline_run_id``.
The tracking URI is ``MLFLOW_TRACKING_URI`` when set (the cluster's server), else
``TrackingSection.tracking_uri`` (a local sqlite store by default).

Lineage, decided here once:
- ``data_version``: env ``P4D_DATA_VERSION`` (what the Kubeflow pipeline computed for the run), else,
  under ``dvc repro`` (DVC sets ``DVC_ROOT`` / ``DVC_STAGE``), the md5 that ``dvc.lock`` records for
  the data dependency (the producing stage's out, or a ``.dvc`` file's), else the stage's own digest.
- parent run: env ``MLFLOW_PARENT_RUN_ID`` (an MLflow run id) when set; else, when env
  ``P4D_PIPELINE_RUN_ID`` names a pipeline run (``p4d pipeline exec`` sets it from the KFP run id), the
  run tagged ``p4d.kind=pipeline`` with that id in the stage's experiment, created on first use. Stage
  runs carry ``mlflow.parentRunId`` so the MLflow UI nests them under it.
- a resumed stage continues its run; a start that finds the run of a process that died (still
  RUNNING) ends it as KILLED and links old and new with ``p4d.superseded_by`` / ``p4d.previous_run_id``.
- artifacts are referred to as ``runs:/<run id>/<path>``, relative to the configured artifact store.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import P4DError

MAX_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
DATA_VERSION_ENV = "P4D_DATA_VERSION"
PIPELINE_RUN_ENV = "P4D_PIPELINE_RUN_ID"
PARENT_RUN_ENV = "MLFLOW_PARENT_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs


class TrackingError(P4DError):
    """The MLflow server cannot be reached or refused a request; the message names the URI."""


def tracking_uri(section) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or section.tracking_uri


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"a.b.c": value}; lists and scalars are values, mappings are descended."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def flatten_params(data: Mapping[str, Any]) -> dict[str, str]:
    """Nested config dict -> {"a.b.c": "value"}; values longer than MLflow allows are cut with a marker."""
    texts = {name: str(value) for name, value in flatten_config(data).items()}
    return {name: text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
            for name, text in texts.items()}


def git_commit() -> str:
    """``P4D_GIT_COMMIT`` (set by images / pipelines), else the checkout's HEAD, else 'unknown'."""
    if os.environ.get("P4D_GIT_COMMIT"):
        return os.environ["P4D_GIT_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def resolve_data_version(own: str) -> str:
    """The data version a stage records: the pipeline's (env), else DVC's for ``own``'s data, else ``own``."""
    return os.environ.get(DATA_VERSION_ENV) or own


def lineage_tags(stage: str, data_version: str) -> dict[str, str]:
    return {
        "stage": stage,
        "git_commit": git_commit(),
        "data_version": resolve_data_version(data_version),
        "pipeline_run_id": os.environ.get(PIPELINE_RUN_ENV, "local"),
    }


def _dvc_files() -> tuple[Path, str] | None:
    """(directory of the running stage's dvc.yaml, stage name) under ``dvc repro``, else None."""
    root, stage = os.environ.get("DVC_ROOT"), os.environ.get("DVC_STAGE")
    if not root or not stage:
        return None
    file, sep, name = stage.rpartition(":")  # "train_psi3d" or "sub/dvc.yaml:train_psi3d"
    folder = Path(root) / Path(file).parent if sep else Path(root)
    return folder, name


def _lock_hash(lock: dict, folder: Path, rel: str) -> str | None:
    for entry in (lock.get("stages") or {}).values():
        for out in entry.get("outs") or []:
            if out.get("path") == rel and out.get("md5"):
                return str(out["md5"])
    dvc_file = folder / f"{rel}.dvc"
    if dvc_file.is_file():
        import yaml

        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    return None


def dvc_dep_hashes() -> dict[str, str]:
    """Under ``dvc repro``: {dep path: md5} for the running stage's deps, as ``dvc.lock`` records the data.

    A dep's md5 is the one its producing stage's out got in ``dvc.lock`` (DVC writes the lock after each
    stage), or its ``.dvc`` file's: the same value DVC records for this stage's dep once it completes.
    Deps DVC has not hashed yet (a plain source folder on the first run) are left out.
    """
    found = _dvc_files()
    if found is None:
        return {}
    import yaml

    folder, name = found
    try:
        stages = (yaml.safe_load((folder / "dvc.yaml").read_text()) or {}).get("stages") or {}
        lock = yaml.safe_load((folder / "dvc.lock").read_text()) if (folder / "dvc.lock").is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
    hashes = {}
    for dep in (stages.get(name) or {}).get("deps") or []:
        md5 = _lock_hash(lock or {}, folder, str(dep))
        if md5:
            hashes[str(dep)] = md5
    return hashes


def dvc_data_version(path: str | Path) -> str | None:
    """The md5 ``dvc.lock`` records for the data at ``path`` when this process runs under ``dvc repro``."""
    found = _dvc_files()
    if found is None or "://" in str(path):
        return None
    folder = found[0]
    rel = os.path.relpath(Path(path).resolve(), folder.resolve())
    return dvc_dep_hashes().get(Path(rel).as_posix())


def artifact_uri(run_id: str, path: str) -> str:
    """A logged artifact, relative to the configured artifact store (never a local path)."""
    return f"runs:/{run_id}/{path}"


def _local_artifacts(uri: str) -> str | None:
    """Artifacts of a local sqlite store go next to the database (MLflow's default is ./mlruns in the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server (or another store) decides where artifacts live
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


def _experiment_id(client, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_local_artifacts(uri))


def _existing_run(client, run_id: str | None) -> str | None:
    """``run_id`` if this tracking server has it (a checkpoint may come from another server's run)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        return None
    return run_id


def _retire(client, old: str, new: str) -> None:
    """End ``old`` as KILLED if its process died while it was RUNNING; link it and ``new`` either way."""
    if _existing_run(client, old) is None:
        return
    if client.get_run(old).info.status == "RUNNING":
        client.set_terminated(old, status="KILLED")
        client.set_tag(old, "p4d.ended_by", "restart: its process died (found RUNNING by the next start)")
    client.set_tag(old, "p4d.superseded_by", new)
    client.set_tag(new, "p4d.previous_run_id", old)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parent_run_id(client, experiment_id: str) -> str | None:
    """The run a stage run nests under (see the module docstring); None outside a pipeline."""
    explicit = os.environ.get(PARENT_RUN_ENV)
    if explicit:
        return explicit
    pipeline = os.environ.get(PIPELINE_RUN_ENV, "")
    if not pipeline or pipeline == "local":
        return None
    query = f"tags.`p4d.kind` = 'pipeline' and tags.pipeline_run_id = {_quoted(pipeline)}"

    def oldest() -> str | None:
        found = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
        return found[0].info.run_id if found else None

    existing = oldest()
    if existing:
        return existing
    run = client.create_run(experiment_id, run_name=f"pipeline-{pipeline}",
                            tags={"p4d.kind": "pipeline", "pipeline_run_id": pipeline})
    # A grouping run: its outcome is the orchestrator's, so it is not left RUNNING for anyone to clean up.
    client.set_terminated(run.info.run_id, status="FINISHED")
    winner = oldest() or run.info.run_id
    if winner != run.info.run_id:  # two stages started at once and both created one: the oldest stays
        client.delete_run(run.info.run_id)
    return winner


class TrackingRun:
    """A started (or resumed) MLflow run; every call goes to that run id, no global active run."""

    def __init__(self, client, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    @classmethod
    def start(cls, section, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_run_id: str | None = None, previous_run_id: str | None = None) -> "TrackingRun":
        """Continue ``resume_run_id`` (the checkpoint's run) when the server has it, else open a new run.

        ``previous_run_id``: the run an earlier start of this stage opened (the output folder's run record)
        when it is not the one continued; if its process died it is still RUNNING: it ends as KILLED, and
        the two runs are linked by tags.
        """
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(section)
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, section.experiment, uri)
            resumed = _existing_run(client, resume_run_id)
            if resumed is not None:
                client.update_run(resumed, status="RUNNING")
                client.set_tag(resumed, "resumed", "true")
                run_id = resumed
            else:
                all_tags = dict(tags)
                parent = parent_run_id(client, experiment_id)
                if parent:
                    all_tags[PARENT_TAG] = parent
                run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
                flat = [Param(k, v) for k, v in flatten_params(params).items()]
                for i in range(0, len(flat), MAX_PARAMS_PER_BATCH):
                    client.log_batch(run_id, params=flat[i : i + MAX_PARAMS_PER_BATCH])
            for old in {resume_run_id, previous_run_id} - {None, run_id}:
                _retire(client, old, run_id)
        except (MlflowException, OSError) as err:
            raise TrackingError(f"MLflow at {uri}: {str(err).splitlines()[0]}") from None
        return cls(client, run_id, uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(rows), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i : i + MAX_METRICS_PER_BATCH])

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """(H, W, 3) uint8 image saved as PNG at ``artifact_file`` (e.g. 'samples/step-000100.png')."""
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            Image.fromarray(image).save(path)
            self.log_artifact(path, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str) -> str:
        """Every file below ``folder`` under ``artifact_path``; returns its ``runs:/`` URI."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        return artifact_uri(self.run_id, artifact_path)

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of (H, W, 3) uint8 tiles (each row the same tile count; tiles resized by the caller) -> one image."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = tile
    return grid


def loss_curve_png(history: Mapping[str, Sequence[tuple[int, float]]], title: str = "") -> np.ndarray:
    """Curves {name: [(images_seen, value), ...]} plotted with matplotlib (Agg) -> (H, W, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, points in sorted(history.items()):
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, linewidth=1.2)
    ax.set_xlabel("images seen")
    ax.set_ylabel("loss")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return np.asarray(Image.open(buf).convert("RGB"))

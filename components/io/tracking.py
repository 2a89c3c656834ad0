"""MLflow tracking of a training stage: one run per stage, written by rank 0 only.

The run carries the resolved config as params (flattened ``section.field`` keys), metrics by step,
images (sample grids, loss curves) and artifacts (the DeepSpeed JSON, the final model), and the
lineage tags reviewers filter on: ``git_commit``, ``data_version`` (the DVC / input digest) and
``pipeline_run_id``. The tracking URI is ``MLFLOW_TRACKING_URI`` when set (the cluster's server),
else ``TrackingSection.tracking_uri`` (a local sqlite store by default). A resumed stage continues
its MLflow run (the run id is stored in the checkpoint).
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


class TrackingError(P4DError):
    """The MLflow server cannot be reached or refused a request; the message names the URI."""


def tracking_uri(section) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or section.tracking_uri


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> {"a.b.c": "value"}; values longer than MLflow allows are cut with a marker."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            text = str(value)
            out[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return out


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


def lineage_tags(stage: str, data_version: str) -> dict[str, str]:
    return {
        "stage": stage,
        "git_commit": git_commit(),
        "data_version": os.environ.get("P4D_DATA_VERSION") or data_version,
        "pipeline_run_id": os.environ.get("P4D_PIPELINE_RUN_ID", "local"),
    }


def _local_artifacts(uri: str) -> str | None:
    """Artifacts of a local sqlite store go next to the database (MLflow's default is ./mlruns in the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server (or another store) decides where artifacts live
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


class TrackingRun:
    """A started (or resumed) MLflow run; every call goes to that run id, no global active run."""

    def __init__(self, client, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    @classmethod
    def start(cls, section, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
              resume_run_id: str | None = None) -> "TrackingRun":
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(section)
        try:
            client = MlflowClient(tracking_uri=uri)
            if resume_run_id is not None:
                client.update_run(resume_run_id, status="RUNNING")
                client.set_tag(resume_run_id, "resumed", "true")
                return cls(client, resume_run_id, uri)
            experiment = client.get_experiment_by_name(section.experiment)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                experiment_id = client.create_experiment(section.experiment, artifact_location=_local_artifacts(uri))
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
            flat = [Param(k, v) for k, v in flatten_params(params).items()]
            for i in range(0, len(flat), MAX_PARAMS_PER_BATCH):
                client.log_batch(run.info.run_id, params=flat[i : i + MAX_PARAMS_PER_BATCH])
        except (MlflowException, OSError) as err:
            raise TrackingError(f"MLflow at {uri}: {str(err).splitlines()[0]}") from None
        return cls(client, run.info.run_id, uri)

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

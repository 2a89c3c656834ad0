"""`p4d pipeline exec`: run one DAG stage inside a pipeline pod.

It writes the run's params text to a file (the argv element ``{params}`` becomes its path), syncs
inputs from S3 when the pod is not a KFP task (PyTorchJob), runs the stage's own ``p4d`` argv —
in-process, or under ``torchrun`` for several GPUs / nodes — syncs outputs back from node 0, and
records the stage's timing, item counts and failures as Prometheus metrics (pushed when a
Pushgateway is configured) and as an MLflow run tagged with the pipeline run (when tracking is set).

A training stage (one that resumes from its own output) gets a durable checkpoint store,
``P4D_CHECKPOINT_URI`` = ``<root>/<pipeline run>/<stage>``: derived from the pipeline run and the stage,
not the attempt, so a retried task (a new pod, a new output path) resumes from what the killed attempt
uploaded. ``<root>`` is env ``P4D_CHECKPOINT_ROOT`` when set, else ``s3://<storage.bucket>/<storage.prefix>/
checkpoints`` from the run's params. The pipeline run id also reaches the stage as ``P4D_PIPELINE_RUN_ID``
(MLflow nests the stage's run under the pipeline's: components.io.tracking).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.io.metrics import MetricsError, StageMetrics
from components.io.storage import open_store
from pipelines.dag import PARAMS_TOKEN, STAGE_BY_NAME, Stage


CHECKPOINT_ROOT_ENV = "P4D_CHECKPOINT_ROOT"
RESUME_FLAG = "--resume"


def resumes(stage: Stage) -> bool:
    """A stage that continues from what its output folder (or checkpoint store) holds: the training stages."""
    return RESUME_FLAG in stage.args


def checkpoint_store_uri(stage: Stage, params_path: Path, pipeline_run: str) -> str | None:
    """Where ``stage`` of pipeline run ``pipeline_run`` keeps its checkpoints (the same for every attempt)."""
    if not pipeline_run or not resumes(stage):
        return None
    root = os.environ.get(CHECKPOINT_ROOT_ENV)
    if not root:
        from components.config import load_params

        storage = load_params(params_path).storage
        root = "/".join(p for p in (f"s3://{storage.bucket}", storage.prefix.strip("/"), "checkpoints") if p)
    run = re.sub(r"[^A-Za-z0-9._-]+", "-", pipeline_run).strip("-.") or "run"
    return f"{root.rstrip('/')}/{run}/{stage.name}"


def output_paths(stage: Stage, argv: list[str]) -> dict[str, str]:
    """Where the rendered argv puts each output node (the template position of ``{node}``)."""
    offset = len(stage.command)
    return {
        arg[1:-1]: argv[offset + i]
        for i, arg in enumerate(stage.args)
        if arg.startswith("{") and arg[1:-1] in stage.outputs and offset + i < len(argv)
    }


def count_items(out_dir: str | Path) -> tuple[int, int]:
    """(ok, failed) items of a stage output: rows of ``manifest.parquet`` (fit_flame), or rendered views
    and skipped label rows of a shard dataset's ``index.json`` (synthesize), in the output or its parts."""
    import json

    import pyarrow.parquet as pq

    from pipelines.gather import part_dirs

    ok = failed = 0
    for part in part_dirs(out_dir):
        manifest = Path(part) / "manifest.parquet"
        index = Path(part) / "index.json"
        if manifest.exists():
            status = pq.read_table(manifest, columns=["status"]).column("status").to_pylist()
            ok += sum(s == "ok" for s in status)
            failed += sum(s == "failed" for s in status)
        elif index.exists():
            data = json.loads(index.read_text())
            ok += int(data.get("totals", {}).get("views", 0))
            failed += sum(int(n) for n in data.get("labels", {}).get("skipped", {}).values())
    return ok, failed


def sync_down(uri: str, local: Path) -> int:
    """Copy every object under ``uri`` to ``local``; returns the number of files."""
    store = open_store(uri)
    keys = store.list()
    for key in keys:
        target = local / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get_bytes(key))
    return len(keys)


def sync_up(local: Path, uri: str) -> int:
    store = open_store(uri)
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]
    for p in files:
        store.put_bytes(p.relative_to(local).as_posix(), p.read_bytes())
    return len(files)


def is_node_zero() -> bool:
    """Node rank 0 of a PyTorchJob (the training operator sets PET_NODE_RANK), or a plain pod."""
    return os.environ.get("PET_NODE_RANK", "0") == "0"


def _launch(argv: list[str], nproc_per_node: int) -> int:
    if nproc_per_node > 1 or "PET_NNODES" in os.environ:
        # torchrun reads --nnodes/--node-rank/--master-* from the PET_* env of a PyTorchJob pod
        cmd = ["torchrun", f"--nproc-per-node={nproc_per_node}"]
        if "PET_NNODES" not in os.environ:
            cmd.append("--standalone")
        return subprocess.call([*cmd, "--no-python", "p4d", *argv])
    from pipelines.cli import main

    return main(argv)


def _checkpoint_store(stage: Stage, params: Path, pipeline_run: str) -> str | None:
    from components.errors import P4DError

    try:
        return checkpoint_store_uri(stage, params, pipeline_run)
    except P4DError:
        return None  # invalid params: the stage itself reports them, naming the field


MLFLOW_EXPERIMENT = "portrait4d-v2-pipeline"


def log_stage_run(
    tracking_uri: str, stage: str, seconds: float, ok: int, failed: int, succeeded: bool, tags: dict[str, str]
) -> str:
    """One MLflow run per stage execution, tagged with the pipeline run: the pipeline run's metrics."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(MLFLOW_EXPERIMENT)
    with mlflow.start_run(run_name=stage, tags={"p4d.kind": "stage", "p4d.stage": stage, **tags}) as run:
        mlflow.log_metrics({"seconds": seconds, "items_ok": ok, "items_failed": failed, "succeeded": float(succeeded)})
        return run.info.run_id


def run_stage(
    stage_name: str,
    argv: list[str],
    params_text: str,
    data_version: str,
    nproc_per_node: int = 1,
    sync_in: list[tuple[Path, str]] = (),
    sync_out: list[tuple[Path, str]] = (),
    pipeline_run: str = "",
) -> int:
    # The stage (in this process or launched) reads these; they are put back afterwards, so an in-process
    # run (tests, a notebook) does not leak one run's lineage into the next.
    values = {"P4D_STAGE": stage_name, "P4D_DATA_VERSION": data_version}  # data version: tagged on MLflow runs
    if pipeline_run:
        values["P4D_PIPELINE_RUN_ID"] = pipeline_run  # the stage's MLflow run nests under the pipeline's
    with _environment(values, also_restore=("P4D_CHECKPOINT_URI",)):
        return _run_stage(STAGE_BY_NAME[stage_name], argv, params_text, data_version, nproc_per_node, sync_in,
                          sync_out, pipeline_run)


@contextlib.contextmanager
def _environment(values: dict[str, str], also_restore: tuple[str, ...] = ()):
    names = (*values, *also_restore)
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_stage(stage: Stage, argv: list[str], params_text: str, data_version: str, nproc_per_node: int,
               sync_in, sync_out, pipeline_run: str) -> int:
    stage_name = stage.name
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p4d-params-") as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(params_text)
        argv = [str(params) if a == PARAMS_TOKEN else a for a in argv]
        store = _checkpoint_store(stage, params, pipeline_run)
        if store:
            os.environ["P4D_CHECKPOINT_URI"] = store
            print(f"p4d pipeline exec: {stage_name} checkpoints: {store} (shared by every attempt)", flush=True)
        for local, uri in sync_in:
            n = sync_down(uri, local)
            print(f"p4d pipeline exec: {uri} -> {local} ({n} files)", flush=True)
        rc = _launch(argv, nproc_per_node)
    if rc == 0 and is_node_zero():
        for local, uri in sync_out:
            n = sync_up(local, uri)
            print(f"p4d pipeline exec: {local} -> {uri} ({n} files)", flush=True)
    seconds = time.monotonic() - started
    ok = failed = 0
    for path in output_paths(stage, argv).values():
        if not path.startswith("s3://") and Path(path).is_dir():
            o, f = count_items(path)
            ok, failed = ok + o, failed + f
    if is_node_zero():
        metrics = StageMetrics(stage_name)
        metrics.record(seconds, ok, failed, succeeded=rc == 0)
        try:
            metrics.push(grouping={"data_version": data_version})
        except MetricsError as err:  # metrics never fail a finished stage
            print(f"p4d pipeline exec: warning: {err}", file=sys.stderr)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            try:
                log_stage_run(os.environ["MLFLOW_TRACKING_URI"], stage_name, seconds, ok, failed, rc == 0,
                              {"p4d.pipeline_run_id": pipeline_run, "p4d.data_version": data_version})
            except Exception as err:  # an unreachable tracking server must not fail a finished stage
                print(f"p4d pipeline exec: warning: MLflow {os.environ['MLFLOW_TRACKING_URI']}: {err}", file=sys.stderr)
    print(f"p4d pipeline exec: {stage_name} exit {rc} in {seconds:.1f}s ({ok} ok, {failed} failed items)", flush=True)
    return rc

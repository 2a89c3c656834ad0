"""MLflow tracking of a training stage against a REAL `mlflow server` (sqlite backend, local artifact store).

The server is started on 127.0.0.1:<free port> for this module and stopped by its process id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from components.io.tracking import flatten_params, tracking_uri
from tests.components.test_train import (
    _free_port,
    assert_ok,
    make_assets,
    make_shards,
    records,
    train,
    write_params,
)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = str(Path(sys.executable).with_name("mlflow"))
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log_text = (root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server exited ({proc.returncode}): {log_text}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not come up within 120 s") from None
                time.sleep(0.3)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group we started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_flatten_params_names_every_leaf_and_caps_long_values():
    flat = flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x" * 7000})
    assert flat["a.b"] == "1" and flat["a.c.d"] == "[1, 2]"
    assert len(flat["e"]) == 6000 and flat["e"].endswith("...")


def test_tracking_uri_prefers_the_environment(monkeypatch):
    from components.config import build_config

    section = build_config("tiny").tracking
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(section) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(section) == "http://mlflow:5000"


@pytest.mark.slow
def test_a_training_run_records_params_metrics_images_and_artifacts(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    assets = make_assets(tmp_path)
    shards = make_shards(tmp_path, assets)
    params = write_params(tmp_path / "params.yaml", {})
    out = tmp_path / "run"
    proc = train(tmp_path, 1, "psi3d", "--data", str(shards), "--assets", str(assets), "--out", str(out),
                 "--params", str(params), MLFLOW_TRACKING_URI=mlflow_server, P4D_DATA_VERSION="md5:0123abcd",
                 P4D_PIPELINE_RUN_ID="pipeline-run-42")
    assert_ok(proc)
    run_id = proc.stdout.strip().rsplit("MLflow run ", 1)[1]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train_psi3d"

    p = run.data.params  # the resolved config, flattened
    assert p["profile"] == "tiny" and p["psi3d.batch"] == "2" and p["psi3d.adversarial_start_images"] == "16"
    assert p["networks.psi3d.img_resolution"] == "64" and p["deepspeed.zero_stage"] == "0"
    assert p["losses.adversarial"] == "0.01" and p["train.r1_every"] == "4" and p["run.world_size"] == "1"
    assert len(p) > 200

    tags = run.data.tags
    assert tags["data_version"] == "md5:0123abcd" and tags["pipeline_run_id"] == "pipeline-run-42"
    assert tags["stage"] == "train_psi3d" and len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"

    def history(key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    l1 = history("loss/G/l1")
    assert [s for s, _ in l1] == list(range(2, 50, 2)) and all(v > 0 for _, v in l1)
    for key in ("loss/G/lpips", "loss/G/seg", "loss/G/identity", "loss/G/depth", "loss/G/triplane", "loss/G/total",
                "images_per_second", "accelerator_memory_bytes", "schedule/lr", "schedule/d_lr", "schedule/lr_motion"):
        assert len(history(key)) == 24, key
    assert len(history("loss/D/loss")) == 16  # the discriminator trains from 16 images on
    adversarial = history("schedule/adversarial")
    assert [v for _, v in adversarial] == [0.0] * 8 + [1.0] * 16
    resolution = [v for _, v in history("schedule/neural_rendering_resolution")]
    assert resolution[7:17] == [16, 16, 18, 20, 22, 24, 26, 28, 30, 32]
    assert [r["losses"]["G/l1"] for r in records(out)] == pytest.approx([v for _, v in l1], rel=1e-6)

    def listing(path=None):
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert {"deepspeed_config.json", "metrics.jsonl", "samples", "curves", "model", "checkpoint"} <= listing()
    assert listing("model") == {"model/psi3d.safetensors"}
    # the final checkpoint is logged whole, and tags refer to artifacts relative to the artifact store
    assert tags["final_checkpoint"] == f"runs:/{run_id}/checkpoint/ckpt-000000000048"
    assert tags["model_uri"] == f"runs:/{run_id}/model/psi3d.safetensors"
    assert "checkpoint/ckpt-000000000048/ema.safetensors" in listing("checkpoint/ckpt-000000000048")
    assert not [k for k, v in tags.items() if v.startswith(("/", "file:")) or str(tmp_path) in v]
    assert client.get_run(tags["mlflow.parentRunId"]).data.tags["pipeline_run_id"] == "pipeline-run-42"
    assert listing("samples") == {f"samples/grid-{n:012d}.png" for n in (16, 32, 48)}
    assert listing("curves") == {"curves/losses-000000000048.png"}
    from PIL import Image

    grid = Image.open(client.download_artifacts(run_id, "samples/grid-000000000048.png", str(tmp_path)))
    # 2 rows (sample_grid_rows) x (source | target | output | 2 novel views) tiles of 64² with 2 px padding
    assert grid.size == (5 * 66 + 2, 2 * 66 + 2)
    ds = Path(client.download_artifacts(run_id, "deepspeed_config.json", str(tmp_path))).read_text()
    assert '"train_batch_size": 2' in ds


def test_runs_continue_retire_dead_ones_and_nest_under_the_pipeline_run(mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    from components.config import build_config
    from components.io.tracking import TrackingRun

    section = build_config("tiny").tracking
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("P4D_PIPELINE_RUN_ID", "kfp-run-7")
    monkeypatch.delenv("MLFLOW_PARENT_RUN_ID", raising=False)
    client = MlflowClient(tracking_uri=mlflow_server)

    first = TrackingRun.start(section, "train_psi3d", {"a": 1}, {"stage": "train_psi3d"})
    other = TrackingRun.start(section, "train_psi", {"a": 1}, {"stage": "train_psi"})
    parent = client.get_run(first.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(other.run_id).data.tags["mlflow.parentRunId"] == parent  # one pipeline run
    assert client.get_run(parent).data.tags["p4d.kind"] == "pipeline"

    # the process of `first` died before a checkpoint: the next start retires it and links the two
    second = TrackingRun.start(section, "train_psi3d", {"a": 1}, {}, previous_run_id=first.run_id)
    old = client.get_run(first.run_id)
    assert old.info.status == "KILLED" and old.data.tags["p4d.superseded_by"] == second.run_id
    assert client.get_run(second.run_id).data.tags["p4d.previous_run_id"] == first.run_id

    # a start that resumes the checkpoint of `second` continues it
    client.set_terminated(second.run_id, "KILLED")
    again = TrackingRun.start(section, "train_psi3d", {"a": 1}, {}, resume_run_id=second.run_id,
                              previous_run_id=second.run_id)
    assert again.run_id == second.run_id and again.status() == "RUNNING"
    assert client.get_run(again.run_id).data.tags["resumed"] == "true"

    # a checkpoint whose run this server does not know: a new run, not a crash
    unknown = TrackingRun.start(section, "train_psi3d", {"a": 1}, {}, resume_run_id="f" * 32)
    assert unknown.run_id != "f" * 32

    monkeypatch.setenv("MLFLOW_PARENT_RUN_ID", other.run_id)  # given explicitly, it wins
    child = TrackingRun.start(section, "train_psi3d", {"a": 1}, {})
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == other.run_id

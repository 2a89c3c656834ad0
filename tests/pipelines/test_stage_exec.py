"""`p4d pipeline exec`: params file, stage argv, S3/local sync, metrics of the stage."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dag import STAGE_BY_NAME
from pipelines.gather import gather_parts, part_dirs
from pipelines.stage_exec import count_items, output_paths, run_stage, sync_down, sync_up


def _manifest(root: Path, statuses: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"status": statuses}), root / "manifest.parquet")


def test_output_paths_and_item_counts(tmp_path):
    stage = STAGE_BY_NAME["fit_flame"]
    argv = stage.render({"raw_images": "in", "assets": "a", "labels_images": str(tmp_path / "o"),
                         "device": "cpu", "params": "{params}"})
    assert output_paths(stage, argv) == {"labels_images": str(tmp_path / "o")}
    _manifest(tmp_path / "s0", ["ok", "ok", "failed"])
    _manifest(tmp_path / "s1", ["ok"])
    gathered = gather_parts([tmp_path / "s0", tmp_path / "s1"], tmp_path / "g")
    assert [p.name for p in part_dirs(gathered)] == ["part-00000", "part-00001"]
    assert count_items(gathered) == (3, 1) and count_items(tmp_path / "s0") == (2, 1)
    assert part_dirs(tmp_path / "s0") == [tmp_path / "s0"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        gather_parts([tmp_path / "missing"], tmp_path / "g2")


def test_sync_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "ckpt").mkdir(parents=True)
    (src / "ckpt" / "a.pt").write_bytes(b"weights")
    (src / "index.json").write_text("{}")
    assert sync_up(src, str(tmp_path / "store")) == 2
    assert sync_down(str(tmp_path / "store"), tmp_path / "dst") == 2
    assert (tmp_path / "dst" / "ckpt" / "a.pt").read_bytes() == b"weights"


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_PUT(self):  # the Pushgateway API: PUT /metrics/job/<job>/<label>/<value>...
        self.bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args):
        pass


@pytest.fixture
def pushgateway():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.bodies = []
    yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.bodies
    server.shutdown()


def test_exec_runs_the_stage_with_the_params_and_records_metrics(tmp_path, monkeypatch, capsys, pushgateway):
    url, bodies = pushgateway
    monkeypatch.setenv("PUSHGATEWAY_URL", url)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    rc = run_stage("fit_flame", ["config", "show", "--params", "{params}", "--format", "json"],
                   '{"profile": "tiny", "seed": 7}', "v123", pipeline_run="run-7")
    assert rc == 0
    out = capsys.readouterr().out
    assert '"seed": 7' in out and "fit_flame exit 0" in out
    [(path, body)] = bodies
    assert path == "/metrics/job/p4d_pipeline/data_version/v123/stage/fit_flame"
    assert b'p4d_stage_runs_total{outcome="success",stage="fit_flame"} 1.0' in body
    assert b"p4d_stage_duration_seconds" in body
    import mlflow

    from pipelines.stage_exec import MLFLOW_EXPERIMENT

    mlflow.set_tracking_uri(tracking)
    [run] = mlflow.search_runs(experiment_names=[MLFLOW_EXPERIMENT], output_format="list",
                               filter_string="tags.`p4d.pipeline_run_id` = 'run-7'")
    assert run.data.tags["p4d.stage"] == "fit_flame" and run.data.tags["p4d.data_version"] == "v123"
    assert run.data.metrics["succeeded"] == 1.0 and "seconds" in run.data.metrics


def test_exec_reports_a_failing_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    rc = run_stage("fit_flame", ["config", "show", "--params", "{params}"], "profile: huge", "v1")
    assert rc == 2
    assert "profile: got 'huge'" in capsys.readouterr().err


def test_exec_command_syncs_inputs_first(tmp_path, capsys, monkeypatch):
    import os

    from pipelines.cli import main

    monkeypatch.delenv("P4D_DATA_VERSION", raising=False)
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "params.yaml").write_text("profile: tiny\nseed: 4\n")
    local = tmp_path / "work"
    rc = main(["pipeline", "exec", "--stage", "fit_flame", "--params-text", "{}", "--data-version", "v",
               "--sync-in", f"{local}={tmp_path / 'remote'}", "--",
               "config", "show", "--params", str(local / "params.yaml")])
    assert rc == 0 and "seed: 4" in capsys.readouterr().out
    assert "P4D_DATA_VERSION" not in os.environ  # one run's lineage never leaks into the next (a later stage)


def test_count_items_reads_a_shard_index(tmp_path):
    import json

    (tmp_path / "index.json").write_text(
        json.dumps({"totals": {"views": 12}, "labels": {"skipped": {"non-finite values": 2, "wrong width": 1}}})
    )
    assert count_items(tmp_path) == (12, 3)


def test_training_checkpoint_store_is_per_pipeline_run_and_stage_not_per_attempt(tmp_path, monkeypatch):
    from pipelines.stage_exec import checkpoint_store_uri

    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nstorage:\n  bucket: models-bucket\n  prefix: team/p4d\n")
    monkeypatch.delenv("P4D_CHECKPOINT_ROOT", raising=False)
    train = STAGE_BY_NAME["train_psi3d"]
    uri = checkpoint_store_uri(train, params, "1f0c-run/7")
    assert uri == "s3://models-bucket/team/p4d/checkpoints/1f0c-run-7/train_psi3d"
    assert checkpoint_store_uri(train, params, "1f0c-run/7") == uri  # a retry gets the same prefix
    assert checkpoint_store_uri(STAGE_BY_NAME["train_psi"], params, "1f0c-run/7").endswith("/train_psi")
    assert checkpoint_store_uri(train, params, "") is None  # outside a pipeline run: local checkpoints only
    assert checkpoint_store_uri(STAGE_BY_NAME["synthesize"], params, "r") is None  # not a resuming stage
    monkeypatch.setenv("P4D_CHECKPOINT_ROOT", str(tmp_path / "durable"))
    assert checkpoint_store_uri(train, params, "r1") == f"{tmp_path / 'durable'}/r1/train_psi3d"

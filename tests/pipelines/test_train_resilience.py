"""Training that survives the cluster (issue 16), with the faults injected for real (tiny profile, CPU):

- kill -9 of a training stage under `dvc repro` (real DVC), then `dvc repro` again: it resumes;
- a Kubeflow retry: `p4d pipeline exec` twice with the same pipeline run id, the first attempt stopped
  by SIGTERM mid-run, checkpoints on S3 (a real moto_server): the second attempt, with an empty output
  folder, resumes from the uploaded checkpoint;
- a truncated newest checkpoint: resume takes the previous one and says why;
- a kill before the first checkpoint: the old MLflow run ends KILLED and is linked to the new one.

The images-seen counter (metrics.jsonl, trainer.json) and the MLflow record are checked afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.components.test_train import (
    TINY,
    assert_ok,
    command,
    make_assets,
    make_shards,
    records,
    run_env,
    train,
    write_params,
)

P4D = str(Path(sys.executable).with_name("p4d"))  # this environment's entry point


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resilience")
    assets = make_assets(root)
    return {"root": root, "assets": assets, "shards": make_shards(root, assets)}


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _iterations(out: Path) -> list[int]:
    return [r["iteration"] for r in records(out)]


def _images_seen(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer.json").read_text())["images_seen"]


# ------------------------------------------------------------------------------------------------ DVC
def _dvc(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_kill_9_under_dvc_repro_then_repro_resumes_where_it_stopped(tmp_path, world):
    from components.train.checkpoint import PREFIX
    from pipelines.dag import STAGE_BY_NAME, resolve
    from pipelines.dvc_gen import dvc_yaml_text, ensure_params_keys, params_keys, render_dvc
    from pipelines.platform_config import build_platform

    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(world["shards"]), str(root / "data" / "synthesize")], check=True)
    subprocess.run(["cp", "-r", str(world["assets"]), str(root / "assets")], check=True)
    write_params(root / "params.yaml", {})
    stages = resolve([STAGE_BY_NAME["train_psi3d"]], build_platform("tiny"))
    (root / "dvc.yaml").write_text(dvc_yaml_text(render_dvc(stages)))  # the generated stage, upstream as sources
    ensure_params_keys(root / "params.yaml", params_keys(stages))
    for args in (("init", "--no-scm", "-q"), ("add", "-q", "data/synthesize", "assets")):
        assert _dvc(root, *args).returncode == 0
    env = run_env(root, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    out = root / "models" / "psi3d"
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train_psi3d"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "checkpoints" / f"{PREFIX}000000000016"
    _wait_for(first.exists, proc, "first checkpoint")
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training it started: the group we started
    proc.wait()
    kept = max(p for p in (out / "checkpoints").iterdir() if p.name.startswith(PREFIX))
    seen_before_kill = _images_seen(kept)
    [killed_run] = [json.loads((out / "run.json").read_text())["run_id"]]

    again = _dvc(root, "repro", "train_psi3d", env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resume: continuing from {kept.name}: {seen_before_kill} images seen" in again.stdout
    assert "starting from image 0" not in again.stdout
    assert _iterations(out) == list(range(1, 25))  # one row per iteration: continued, not restarted
    assert _images_seen(out / "checkpoints" / f"{PREFIX}000000000048") == 48

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train_psi3d"]
    client = _client(root)
    run = client.get_run(killed_run)  # the same MLflow run, continued and finished
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from"] == kept.name
    deps = {d["path"]: d["md5"] for d in lock["deps"]}
    assert run.data.tags["data_version"] == deps["data/synthesize"]  # DVC's hash, as dvc.lock records it
    assert run.data.tags["dvc_dep.assets"] == deps["assets"]
    assert run.data.tags["final_checkpoint"] == f"runs:/{killed_run}/checkpoint/{PREFIX}000000000048"
    assert not [v for v in run.data.tags.values() if v.startswith(("/", "file:"))]  # no local paths
    listed = {a.path for a in client.list_artifacts(killed_run, f"checkpoint/{PREFIX}000000000048")}
    assert f"checkpoint/{PREFIX}000000000048/ema.safetensors" in listed

    # a changed hyper-parameter re-runs the stage, which refuses to resume into the same folder, naming it
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["psi3d"] = {**(params.get("psi3d") or {}), "lr": 0.0003}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    refused = _dvc(root, "repro", "train_psi3d", env=env, timeout=600)
    assert refused.returncode != 0
    assert "resume refused: these settings differ from the run in" in refused.stderr
    assert "psi3d.lr (0.0001 -> 0.0003)" in refused.stderr


# ------------------------------------------------------------------------------------- Kubeflow retry
@pytest.fixture
def s3(s3_server, monkeypatch) -> dict:
    import boto3

    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    if "p4d" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket="p4d")  # the storage section's default bucket
    return {"env": env, "client": client}


def _exec(world, out: Path, params_text: str, run_id: str) -> list[str]:
    return [P4D, "pipeline", "exec", "--stage", "train_psi3d", "--params-text", params_text, "--data-version",
            "pipeline-digest-1", "--pipeline-run", run_id, "--",
            "train", "psi3d", "--data", str(world["shards"]), "--assets", str(world["assets"]), "--out", str(out),
            "--params", "{params}", "--resume", "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_a_retried_kubeflow_attempt_resumes_from_the_checkpoint_the_preempted_one_uploaded(tmp_path, world, s3):
    root = tmp_path
    run_id = f"kfp-{uuid.uuid4().hex[:8]}"
    params_text = yaml.safe_dump({"profile": "tiny", **TINY})
    env = run_env(root, **s3["env"])
    prefix = f"checkpoints/{run_id}/train_psi3d"

    def uploaded() -> list[str]:
        listing = s3["client"].list_objects_v2(Bucket="p4d", Prefix=f"{prefix}/checkpoints/")
        return sorted(o["Key"].split("/")[-2] for o in listing.get("Contents", []) if o["Key"].endswith("/COMPLETE"))

    attempt1 = root / "attempt-1" / "psi3d"  # KFP gives every attempt its own output path
    proc = subprocess.Popen(_exec(world, attempt1, params_text, run_id), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(uploaded()), proc, "first uploaded checkpoint")
    proc.send_signal(signal.SIGTERM)  # preemption: the pod is told to stop
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-3000:]
    assert f"checkpoints: s3://p4d/{prefix} (shared by every attempt)" in stdout
    preempted = uploaded()[-1]  # the checkpoint written on SIGTERM, uploaded before the exit
    seen = int(preempted.split("-")[1])
    assert 16 <= seen < 48 and seen == _images_seen(attempt1 / "checkpoints" / preempted)
    first_run = json.loads((attempt1 / "run.json").read_text())["run_id"]

    attempt2 = root / "attempt-2" / "psi3d"  # a new pod: empty output folder
    second = subprocess.run(_exec(world, attempt2, params_text, run_id), env=env, capture_output=True, text=True,
                            timeout=600)
    assert_ok(second)
    assert f"resume: fetched {preempted} from s3://p4d/{prefix}" in second.stdout
    assert f"resume: continuing from {preempted}: {seen} images seen" in second.stdout
    assert _iterations(attempt2) == list(range(1, 25))  # the rows before the preemption came with it
    assert [r["images_seen"] for r in records(attempt2)][seen // 2] == seen  # and training went on from there
    assert uploaded()[-1] == "ckpt-000000000048"

    client = _client(root)
    assert json.loads((attempt2 / "run.json").read_text())["run_id"] == first_run
    run = client.get_run(first_run)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline_run_id"] == run_id
    assert run.data.tags["data_version"] == "pipeline-digest-1"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["p4d.kind"] == "pipeline" and parent.data.tags["pipeline_run_id"] == run_id
    assert parent.info.status == "FINISHED"  # a grouping run is never left RUNNING


# ------------------------------------------------------------------------------- corrupt checkpoint
@pytest.mark.slow
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, world):
    params = write_params(tmp_path / "p.yaml", {"psi3d": {"total_images": 32}})
    out = tmp_path / "run"
    args = ["psi3d", "--data", str(world["shards"]), "--assets", str(world["assets"]), "--out", str(out),
            "--params", str(params), "--resume"]
    assert_ok(train(tmp_path, 1, *args))
    engine_file = out / "checkpoints" / "ckpt-000000000032" / "generator" / "mp_rank_00_model_states.pt"
    engine_file.write_bytes(engine_file.read_bytes()[:1000])  # a copy cut short

    longer = write_params(tmp_path / "p.yaml", {"psi3d": {"total_images": 48}})  # train on, same config digest
    assert longer == params
    resumed = train(tmp_path, 1, *args)
    assert_ok(resumed)
    assert "resume: skipped ckpt-000000000032: generator/mp_rank_00_model_states.pt is 1000 bytes" in resumed.stdout
    assert "resume: continuing from ckpt-000000000016: 16 images seen" in resumed.stdout
    assert "PytorchStreamReader" not in resumed.stdout + resumed.stderr
    assert _iterations(out) == list(range(1, 25))
    assert _images_seen(out / "checkpoints" / "ckpt-000000000032") == 32  # written afresh
    assert _images_seen(out / "checkpoints" / "ckpt-000000000048") == 48


# --------------------------------------------------------------------------------- orphan MLflow run
@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_ends_the_old_run_killed_and_links_the_new_one(tmp_path, world):
    params = write_params(tmp_path / "p.yaml", {})
    out = tmp_path / "run"
    args = ["psi3d", "--data", str(world["shards"]), "--assets", str(world["assets"]), "--out", str(out),
            "--params", str(params), "--resume"]
    proc = subprocess.Popen(command(1, *args), env=run_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for((out / "run.json").exists, proc, "the run record")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((out / "checkpoints").glob("ckpt-*")), "the kill came after the first checkpoint"
    old = json.loads((out / "run.json").read_text())["run_id"]
    client = _client(tmp_path)
    assert client.get_run(old).info.status == "RUNNING"  # what a dead process leaves behind

    short = write_params(tmp_path / "p.yaml", {"psi3d": {"total_images": 4}})
    assert short == params
    again = train(tmp_path, 1, *args)
    assert_ok(again)
    assert "resume: no checkpoint in" in again.stdout and "starting from image 0" in again.stdout
    new = json.loads((out / "run.json").read_text())["run_id"]
    assert new != old
    old_run, new_run = client.get_run(old), client.get_run(new)
    assert old_run.info.status == "KILLED" and old_run.data.tags["p4d.superseded_by"] == new
    assert new_run.info.status == "FINISHED" and new_run.data.tags["p4d.previous_run_id"] == old

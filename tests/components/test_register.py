"""Stage `register` and `p4d review` against a REAL `mlflow server` on 127.0.0.1 (sqlite backend, artifacts on
the local `moto_server` S3), a real DVC project for the lineage, and the real Animator for the pyfunc.

Two candidates are registered once per module (one passing, one failing the gate); the review tests then move
aliases and tags on them through the real `p4d review` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.config import load_params
from components.register.evaluation import EvaluationError, GateRule, mlflow_key, read_evaluation
from components.register.gate import apply_gate
from pipelines.cli import main as p4d
from tests.conftest import _free_port

BIN = Path(sys.executable).parent
GATE = {
    "eval/self/psnr": {"greater_is_better": True, "threshold": 10.0, "max_regression": 0.05},
    "eval/self/lpips": {"greater_is_better": False, "threshold": 0.8, "max_regression": 0.10},
    "eval/cross/csim": {"greater_is_better": True, "threshold": None, "max_regression": None},
}
PASSING = {"eval/self/psnr": 15.0, "eval/self/lpips": 0.30, "eval/self/csim": 0.61, "eval/cross/csim": 0.42}
# psnr 14.0 < 15.0 * (1 - 5%) = 14.25 (regression vs the passing champion), lpips 0.9 > 0.8 (threshold)
FAILING = {"eval/self/psnr": 14.0, "eval/self/lpips": 0.90, "eval/self/csim": 0.60, "eval/cross/csim": 0.40}


# ------------------------------------------------------------------------------------------------ helpers
def write_evaluation(folder: Path, metrics: dict[str, float], psi_run: str | None = None,
                     evaluate_run: str | None = None, gate: dict | None = None) -> Path:
    """An evaluate-stage output in the contract's shape (metrics.json, gate.json, samples/)."""
    from PIL import Image

    from components.animate.video import write_video

    (folder / "samples").mkdir(parents=True, exist_ok=True)
    body = {
        "metrics": metrics, "intervals": {k: [v * 0.9, v * 1.1] for k, v in metrics.items()},
        "counts": {k: 12 for k in metrics}, "not_computed": {"eval/fid": "no Inception weights in the assets"},
        "model": "models/psi", "psi_mlflow_run_id": psi_run, "evaluate_mlflow_run_id": evaluate_run,
        "data_version": "md5:feedbeef", "synthetic_assets": True, "profile": "tiny",
    }
    (folder / "metrics.json").write_text(json.dumps(body))
    (folder / "gate.json").write_text(json.dumps({"metrics": gate or GATE}))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 320, 3), dtype=np.uint8)).save(folder / "samples" / "grid.png")
    write_video(folder / "samples" / "turntable.mp4", rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8), 10)
    return folder


def face_images():
    import skimage.data

    img = skimage.data.astronaut()
    return img, np.ascontiguousarray(img[:, ::-1])


def review(capsys, uri: str, name: str, *args: str) -> tuple[int, str, str]:
    """`p4d review --tracking-uri URI --model NAME ARGS...` through the real CLI entry point."""
    capsys.readouterr()
    code = p4d(["review", "--tracking-uri", uri, "--model", name, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def dvc_project(root: Path, psi_src: Path, evaluation_src: Path) -> Path:
    """A real DVC project whose stages write the training clips, Ψ, the test clips and the evaluation."""
    root.mkdir(parents=True)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True)
    stages = {
        "fit_flame_video": {"cmd": "mkdir -p data/fit_flame/clips && echo train-clip > data/fit_flame/clips/a.txt",
                            "outs": ["data/fit_flame/clips"]},
        "train_psi": {"cmd": f"cp -r {psi_src} models/psi && cat data/fit_flame/clips/a.txt > /dev/null",
                      "deps": ["data/fit_flame/clips"], "outs": ["models/psi"]},
        "fit_flame_test": {"cmd": "mkdir -p data/fit_flame/clips_test && echo test-clip > "
                                  "data/fit_flame/clips_test/b.txt", "outs": ["data/fit_flame/clips_test"]},
        "evaluate": {"cmd": f"mkdir -p reports && cp -r {evaluation_src} reports/evaluation",
                     "deps": ["models/psi", "data/fit_flame/clips_test"], "outs": ["reports/evaluation"]},
    }
    (root / "models").mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    proc = subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


def fake_training_runs(client, experiment_id: str, root: Path) -> tuple[str, str, str]:
    """A Ψ_3d run folder (complete checkpoint with its trainer.json) and the Ψ / evaluate MLflow runs that point
    at it the way `p4d train psi` and `p4d evaluate` record them."""
    psi3d_run = client.create_run(experiment_id, run_name="train_psi3d").info.run_id
    ckpt = root / "psi3d" / "checkpoints" / "ckpt-000000000048"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer.json").write_text(json.dumps({"stage": "psi3d", "iteration": 24, "images_seen": 48,
                                                   "world_size": 1, "config_sha256": "x", "mlflow_run_id": psi3d_run}))
    (ckpt / "COMPLETE").write_text("")
    psi_run = client.create_run(experiment_id, run_name="train_psi").info.run_id
    client.log_param(psi_run, "run.psi3d_weights", str(root / "psi3d" / "model" / "psi3d.safetensors"))
    evaluate_run = client.create_run(experiment_id, run_name="evaluate").info.run_id
    return psi3d_run, psi_run, evaluate_run


@pytest.fixture(scope="module")
def registered(tmp_path_factory, mlflow_s3_server, tiny_model):
    """Two candidates of one registered model: v1 passes the gate (lineage from a real dvc.lock, linked runs),
    v1 becomes champion, then v2 fails the gate against it. auto_approve off: reviewers decide."""
    from mlflow.tracking import MlflowClient

    from components.config import build_config
    from components.register.stage import run

    uri = mlflow_s3_server["uri"]
    name = "p4d-test-model"
    root = tmp_path_factory.mktemp("register")
    cfg = build_config("tiny", {"tracking": {"registered_model": name}, "register": {"auto_approve": False}})
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(cfg.tracking.experiment)
    psi3d_run, psi_run, evaluate_run = fake_training_runs(client, experiment_id, root)
    project = dvc_project(root / "project", tiny_model["psi"],
                          write_evaluation(root / "eval-a", PASSING, psi_run, evaluate_run))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("P4D_REVIEWER", "alice")
        mp.chdir(project)
        started = time.perf_counter()
        first = run(cfg, project / "models" / "psi", project / "reports" / "evaluation", root / "out-a",
                    assets=tiny_model["assets"], pipeline_run_id="kfp-run-1")
        seconds = time.perf_counter() - started
        assert p4d(["review", "--model", name, "approve", first.version, "--note", "first model"]) == 0
        second = run(cfg, tiny_model["psi"], write_evaluation(root / "eval-b", FAILING), root / "out-b",
                     assets=tiny_model["assets"], dvc_lock=None)
    return {"uri": uri, "name": name, "client": client, "first": first, "second": second, "root": root,
            "runs": {"psi3d": psi3d_run, "psi": psi_run, "evaluate": evaluate_run}, "project": project,
            "seconds": seconds, "cfg": cfg, "s3": mlflow_s3_server["s3"]}


# ------------------------------------------------------------------------------------------ unit: the gate
def test_gate_uses_thresholds_and_allowed_regression_against_the_champion():
    rules = {k: GateRule(**v) for k, v in GATE.items()}
    passed = apply_gate(rules, PASSING, None)
    assert passed.passed and passed.status == "passed"
    assert passed.skipped == ("eval/self/lpips: no champion to compare with",
                              "eval/self/psnr: no champion to compare with")
    failed = apply_gate(rules, FAILING, PASSING, "champion v1")
    assert [(f.metric, f.check) for f in failed.failures] == [("eval/self/lpips", "threshold"),
                                                             ("eval/self/lpips", "regression"),
                                                             ("eval/self/psnr", "regression")]
    psnr = failed.failures[2]
    assert psnr.bound == pytest.approx(14.25) and psnr.margin == pytest.approx(0.25)
    assert psnr.describe() == ("eval/self/psnr: 14 < champion 15 with 5% allowed regression = 14.25 "
                               "(off by 0.25)")
    assert failed.failures[0].describe() == "eval/self/lpips: 0.9 > threshold 0.8 (off by 0.1)"
    # within the allowed regression: 14.3 >= 14.25 passes; a metric the candidate lacks fails
    assert apply_gate(rules, {**PASSING, "eval/self/psnr": 14.3}, PASSING).passed
    missing = apply_gate(rules, {"eval/self/psnr": 15.0}, None)
    assert [f.describe() for f in missing.failures] == ["eval/self/lpips: missing from the evaluation"]


def test_evaluation_contract_is_checked_and_names_are_mapped_to_mlflow_keys(tmp_path):
    with pytest.raises(EvaluationError, match="no such evaluation folder; the model has no evaluation"):
        read_evaluation(tmp_path / "nothing")
    folder = write_evaluation(tmp_path / "e", {"eval/self/akd(px)": 3.5, **PASSING})
    ev = read_evaluation(folder)
    assert mlflow_key("eval/self/akd(px)") == "eval/self/akd_px_" and ev.metrics["eval/self/akd_px_"] == 3.5
    assert ev.gate["eval/self/lpips"] == GateRule(False, 0.8, 0.10) and ev.synthetic_assets is True
    assert set(ev.samples()) == {"samples/grid.png", "samples/turntable.mp4"}
    body = json.loads((folder / "metrics.json").read_text())
    body["metrics"]["eval/self/psnr"] = "high"
    (folder / "metrics.json").write_text(json.dumps(body))
    with pytest.raises(EvaluationError, match=r"metrics\.json: metrics\.eval/self/psnr: got 'high'; expected a finite"):
        read_evaluation(folder)
    (folder / "gate.json").write_text(json.dumps({"metrics": {"eval/self/psnr": {"threshold": 3}}}))
    body["metrics"]["eval/self/psnr"] = 15.0
    (folder / "metrics.json").write_text(json.dumps(body))
    with pytest.raises(EvaluationError, match=r"gate\.json: metrics\.eval/self/psnr\.greater_is_better: got None"):
        read_evaluation(folder)


def test_training_record_reads_the_checkpoint_or_the_final_export(tmp_path):
    import safetensors.torch
    import torch

    from components.register.lineage import psi3d_folder, training_record

    (tmp_path / "psi" / "model").mkdir(parents=True)
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(tmp_path / "psi" / "model" / "psi.safetensors"),
                                metadata={"network": "psi", "images_seen": "32"})
    assert training_record(tmp_path / "psi").images_seen == 32 and training_record(None).run_id is None
    ckpt = tmp_path / "psi3d" / "checkpoints" / "ckpt-000000000048"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer.json").write_text(json.dumps({"images_seen": 48, "mlflow_run_id": "abc", "config_sha256": "d"}))
    (ckpt / "COMPLETE").write_text("")
    folder = psi3d_folder({"run.psi3d_weights": str(ckpt / "ema.safetensors")})
    assert folder == tmp_path / "psi3d" and training_record(folder) == (
        training_record(folder).__class__("abc", 48, "d"))


def test_unreachable_tracking_server_fails_with_the_uri_after_retries_and_writes_nothing(tmp_path, tiny_model,
                                                                                        capsys, monkeypatch):
    from components.config import build_config
    from components.io.tracking import TrackingError
    from components.register.registry import connect

    uri = f"http://127.0.0.1:{_free_port()}"
    waits: list[float] = []
    policy = build_config("paper").register
    with pytest.raises(TrackingError, match=f"MLflow tracking server {uri} unreachable after 4 tries"):
        connect(uri, policy, sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0]  # exponential backoff

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    code = p4d(["register", "--psi", str(tiny_model["psi"]), "--assets", str(tiny_model["assets"]),
                "--evaluation", str(write_evaluation(tmp_path / "e", PASSING)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"{uri} unreachable after 2 tries" in err and "Nothing was registered" in err
    assert not out.exists()
    code = p4d(["register", "--psi", str(tiny_model["psi"]), "--evaluation", str(tmp_path / "none"), "--out", str(out)])
    assert code == 2 and "the model has no evaluation" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- registered versions
def test_passing_candidate_carries_lineage_metrics_and_the_challenger_then_champion(registered):
    client, name, first = registered["client"], registered["name"], registered["first"]
    assert first.gate.passed and not first.approved
    registration = json.loads((registered["root"] / "out-a" / "registration.json").read_text())
    assert registration == {"name": name, "version": "1", "model_uri": f"models:/{name}/1", "gate": "passed",
                            "approved": False}
    assert (registered["root"] / "out-a" / "package" / "animator.json").is_file()
    assert load_params(registered["root"] / "out-a" / "config.yaml") == registered["cfg"]  # the config it ran with
    mv = client.get_model_version(name, "1")
    tags = mv.tags
    assert tags["p4d_model"].startswith("portrait4d-mlops==") and tags["gate"] == "passed"
    assert tags["gate_failures"] == "none" and tags["synthetic_assets"] == "true" and tags["profile"] == "tiny"
    assert tags["pipeline_run_id"] == "kfp-run-1" and len(tags["config_sha256"]) == 64
    assert tags["git_commit"] != "" and tags["data_version"] == "md5:feedbeef"
    runs = registered["runs"]
    assert (tags["run.psi3d"], tags["run.psi"], tags["run.evaluate"]) == (runs["psi3d"], runs["psi"], runs["evaluate"])
    assert tags["schedule.train_psi3d.images_seen"] == "48"
    # DVC's own hashes from the real dvc.lock: what wrote the training data, Ψ and the test data
    lock = yaml.safe_load((registered["project"] / "dvc.lock").read_text())["stages"]
    assert tags["dvc.train.data/fit_flame/clips"] == lock["fit_flame_video"]["outs"][0]["md5"]
    assert tags["dvc.train.models/psi"] == lock["train_psi"]["outs"][0]["md5"]
    assert tags["dvc.test.data/fit_flame/clips_test"] == lock["fit_flame_test"]["outs"][0]["md5"]
    assert "dvc.test.models/psi" not in tags
    run = client.get_run(mv.run_id)
    assert run.info.run_name == "register" and run.info.status == "FINISHED"
    assert run.data.metrics == PASSING  # the evaluation metrics, attached to the version's run
    # approved by alice in the fixture: champion, challenger gone, audit entry
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert tags["approval"] == "approved" and tags["approved_by"] == "alice" and tags["approval_note"] == "first model"
    assert tags["previous_champion"] == "none"


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_failing_candidate_is_registered_but_never_aliased(registered):
    client, name, second = registered["client"], registered["name"], registered["second"]
    assert not second.gate.passed and second.version == "2"
    mv = client.get_model_version(name, "2")
    assert mv.aliases == [] and mv.tags["gate"] == "failed" and mv.tags["approval"] == "pending"
    assert mv.tags["gate_failures"] == (
        "eval/self/lpips: 0.9 > threshold 0.8 (off by 0.1); "
        "eval/self/lpips: 0.9 > champion 0.3 with 10% allowed regression = 0.33 (off by 0.57); "
        "eval/self/psnr: 14 < champion 15 with 5% allowed regression = 14.25 (off by 0.25)")
    assert mv.tags["dvc.lock"] == "none"
    assert json.loads((registered["root"] / "out-b" / "registration.json").read_text())["gate"] == "failed"


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_model_card_holds_metrics_deltas_links_and_use_limits(registered):
    client, name, uri = registered["client"], registered["name"], registered["uri"]
    card = client.get_model_version(name, "2").description
    assert card.startswith(f"# {name} version 2")
    assert "**Gate: FAILED** against champion version 1" in card
    assert "| `eval/self/psnr` | 14 | [12.6, 15.4] | 12 | 15 | -1 (worse) |" in card
    assert "| `eval/self/lpips` | 0.9 | [0.81, 0.99] | 12 | 0.3 | +0.6 (worse) |" in card
    assert "| `eval/fid` | not computed |" in card and "no Inception weights in the assets" in card
    run_id = registered["second"].run_id
    grid = f"{uri}/get-artifact?path=evaluation%2Fsamples%2Fgrid.png&run_uuid={run_id}"
    assert f"![sample grid: source | driving | output | target | novel views]({grid})" in card
    assert "samples/turntable.mp4" in card
    with urllib.request.urlopen(grid, timeout=10) as resp:  # the link serves the picture
        assert resp.read()[:8] == b"\x89PNG\r\n\x1a\n"
    card1 = client.get_model_version(name, "1").description
    runs = registered["runs"]
    assert f"[`{runs['psi']}`]({uri}/#/experiments/" in card1 and runs["psi3d"] in card1
    assert "train_psi3d schedule reached: 48 of 48 images (100%)" in card1
    assert "test data `data/fit_flame/clips_test`: DVC md5" in card1
    assert "## Misuse" in card1 and "deepfakes" in card1 and "SYNTHETIC asset bundle" in card1
    assert f"p4d review approve 1" in card1


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_artifacts_live_on_the_s3_bucket(registered):
    import boto3

    s3 = boto3.client("s3", endpoint_url=registered["s3"], region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
            for o in page.get("Contents", [])]
    assert any(k.endswith("artifacts/package/psi.safetensors") for k in keys), keys[:20]
    assert any(k.endswith("artifacts/MLmodel") for k in keys)
    assert any(k.endswith("evaluation/samples/grid.png") for k in keys)


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_champion_loads_in_a_separate_process_and_renders_the_animators_frame(registered, tiny_model, tmp_path):
    """A fresh process loads `models:/NAME@champion` and renders; the Animator in that same process renders the
    same request from the training folder. Equal up to the engine's own run-to-run noise: the CPU FLAME fit
    (L-BFGS) is not bit-reproducible (two fits of the same landmarks in one process differ by ~3e-3 in the
    label), which moves a few pixels by 1; the pyfunc adds nothing on top (its PNG output is lossless)."""
    from components.register.pyfunc import decode_image, input_example

    source, driving = face_images()
    request = tmp_path / "request.pkl"
    input_example(source, driving).to_pickle(request)
    script = (
        "import sys, mlflow, numpy as np, pandas as pd\n"
        "from components.animate import Animator\n"
        "from components.register.pyfunc import decode_image\n"
        f"model = mlflow.pyfunc.load_model('models:/{registered['name']}@champion')\n"
        "request = pd.read_pickle(sys.argv[1])\n"
        "frame = model.predict(request)['image'][0]\n"
        "open(sys.argv[2], 'wb').write(frame)\n"
        "a = Animator.load(sys.argv[3], sys.argv[4])\n"
        "src = a.prepare_source(decode_image(request['source'][0]))\n"
        "motion = a.driving_motion([decode_image(request['driving'][0])], smooth=False)\n"
        "np.save(sys.argv[5], a.render(src, motion)[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(request), str(tmp_path / "frame.png"),
                           str(tiny_model["psi"]), str(tiny_model["assets"]), str(tmp_path / "animator.npy")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = decode_image((tmp_path / "frame.png").read_bytes())
    expected = np.load(tmp_path / "animator.npy")
    assert served.shape == (64, 64, 3) and served.dtype == np.uint8 and served.std() > 1  # a real picture
    diff = np.abs(served.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


# ----------------------------------------------------------------------------------------------- review
def _tags(registered, version: str) -> dict[str, str]:
    return registered["client"].get_model_version(registered["name"], version).tags


def _champion(registered) -> str:
    return registered["client"].get_model_version_by_alias(registered["name"], "champion").version


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_review_list_and_show(registered, capsys):
    code, out, _ = review(capsys, registered["uri"], registered["name"], "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["version", "created", "(UTC)", "gate", "self/psnr", "self/lpips",
                                              "self/csim", "cross/csim", "aliases", "approval"]
    row = {line.split()[0]: line.split() for line in lines[1:]}
    assert row["2"][3:] == ["failed", "14", "0.9", "0.6", "0.4", "-", "pending"]
    assert row["1"][3:] == ["passed", "15", "0.3", "0.61", "0.42", "champion", "approved"]
    code, out, _ = review(capsys, registered["uri"], registered["name"], "show", "2")
    assert code == 0 and "gate: failed  failures: eval/self/lpips: 0.9 > threshold 0.8" in out
    assert "  eval/self/psnr = 14" in out and "  dvc.lock = none" in out and "evaluation/samples/grid.png" in out
    assert "## Metrics" in out and f"models:/{registered['name']}/2" in out
    code, _, err = review(capsys, registered["uri"], registered["name"], "show", "9")
    assert code == 2 and "has no version 9 (versions: 1, 2" in err


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_approve_reject_rollback_move_aliases_and_leave_an_audit_trail(registered, capsys, monkeypatch):
    uri, name, client = registered["uri"], registered["name"], registered["client"]
    monkeypatch.setenv("P4D_REVIEWER", "bob")
    # a gate-failed version needs --force
    code, _, err = review(capsys, uri, name, "approve", "2", "--note", "looks fine")
    assert code == 2 and "failed the gate (eval/self/lpips: 0.9 > threshold 0.8" in err and "--force" in err
    assert _champion(registered) == "1"
    code, out, _ = review(capsys, uri, name, "approve", "2", "--note", "override for a demo", "--force")
    assert code == 0 and "version 2 is now champion (was: 1)" in out
    tags = _tags(registered, "2")
    assert _champion(registered) == "2" and tags["previous_champion"] == "1" and tags["approval"] == "approved"
    assert tags["approved_by"] == "bob" and tags["approval_forced"] == "true"
    assert tags["approval_note"] == "override for a demo" and tags["approved_at"].endswith("Z")
    # rollback: champion back to the previous approved version, recorded on both
    code, out, _ = review(capsys, uri, name, "rollback", "--note", "bad renders")
    assert code == 0 and "rolled back from version 2 to version 1" in out
    assert _champion(registered) == "1"
    assert _tags(registered, "2")["approval"] == "rolled_back" and _tags(registered, "2")["rolled_back_to"] == "1"
    assert _tags(registered, "1")["restored_by"] == "bob"
    # reject: refused on the champion, fine on version 2
    code, _, err = review(capsys, uri, name, "reject", "1", "--note", "no")
    assert code == 2 and "is the champion" in err
    code, _, _ = review(capsys, uri, name, "reject", "2", "--note", "lpips regression")
    assert code == 0 and _tags(registered, "2")["approval"] == "rejected"
    # the audit trail, oldest first, readable as tags in the MLflow UI
    from components.register.registry import Registry

    registry = Registry(client, name, registered["cfg"].register)
    trail = registry.audit_trail(client.get_model_version(name, "2"))
    assert [(e.action, e.by) for e in trail] == [("approve", "bob"), ("rollback", "bob"), ("reject", "bob")]
    assert trail[0].details == {"forced": True, "note": "override for a demo", "previous_champion": "1"}
    assert all(e.key.startswith("audit.") for e in trail)
    assert [e.action for e in registry.audit_trail(client.get_model_version(name, "1"))] == ["approve", "restore"]
    # nothing to roll back to any more: version 1 has no earlier approved version
    code, _, err = review(capsys, uri, name, "rollback")
    assert code == 2 and "no approved version before champion version 1" in err
    # approval drives deployment: with --deploy the rollout runs; an endpoint that is down is reported as such
    code, _, err = review(capsys, uri, name, "approve", "1", "--note", "redeploy", "--deploy")
    assert code == 2 and "--deploy needs --repo DIR_OR_S3 and --triton URL" in err
    triton = f"http://127.0.0.1:{_free_port()}"
    code, out, err = review(capsys, uri, name, "approve", "1", "--note", "redeploy", "--deploy", "--repo",
                            str(registered["root"] / "triton-repo"), "--triton", triton)
    assert code == 2 and "version 1 is champion in the registry, but the deploy failed" in err
    assert f"Triton at {triton} is not live" in err and f"deploying {name} version 1 to {triton}" in out


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_ui_alias_is_the_same_state_and_foreign_versions_are_never_aliased(registered, capsys):
    uri, name, client = registered["uri"], registered["name"], registered["client"]
    foreign = client.create_model_version(name, source="s3://other-team/models/face-swap", tags={"team": "other"})
    code, _, err = review(capsys, uri, name, "approve", foreign.version, "--note", "x")
    assert code == 2 and f"version {foreign.version} has no 'p4d_model' tag" in err
    code, out, _ = review(capsys, uri, name, "list")
    assert "foreign (not p4d)" in out.splitlines()[1]
    # a reviewer moves the alias in the UI (same API call): `list` shows it
    client.set_registered_model_alias(name, "challenger", "1")
    code, out, _ = review(capsys, uri, name, "list")
    row1 = next(line.split() for line in out.splitlines() if line.startswith("1 "))
    assert "challenger,champion" in row1


@pytest.mark.slow  # shares the module's two registrations: 24 s on an idle 2-core box, ~90 s when busy
def test_concurrent_approvals_both_land_in_the_audit_trail(registered):
    from components.register.registry import Registry

    client, name = registered["client"], registered["name"]
    registry = Registry(client, name, registered["cfg"].register)
    before = {v: len(registry.audit_trail(client.get_model_version(name, v))) for v in ("1", "2")}
    errors: list[BaseException] = []

    def approve(version: str, who: str) -> None:
        try:
            registry.approve(version, f"concurrent {who}", force=True, by=who)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=approve, args=(version, who)) for version, who in (("1", "carol"), ("2", "dave"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = {v: registry.audit_trail(client.get_model_version(name, v)) for v in ("1", "2")}
    assert len(after["1"]) == before["1"] + 1 and after["1"][-1].by == "carol"
    assert len(after["2"]) == before["2"] + 1 and after["2"][-1].by == "dave"
    champion = _champion(registered)
    assert champion in ("1", "2") and _tags(registered, champion)["approval"] == "approved"


def test_lineage_tag_keys_of_data_outside_the_dvc_project_are_valid_mlflow_keys():
    """The main job's test passes --assets from outside its DVC project: dvc.lock then records '../..' paths,
    which MLflow refuses as tag keys ('must not resolve to other names')."""
    from mlflow.utils.validation import _validate_tag_name

    from components.register.lineage import DvcLineage

    lineage = DvcLineage(Path("dvc.lock"), train={"data/synthesize": "a.dir", "../../assets3/bundle": "b.dir"},
                         test={"/abs/clips_test": "c.dir"})
    tags = lineage.tags()
    for key in tags:
        _validate_tag_name(key)
    assert tags["dvc.train.data/synthesize"] == "a.dir" and tags["dvc.train.external/assets3/bundle"] == "b.dir"
    assert tags["dvc.test.external/abs/clips_test"] == "c.dir"

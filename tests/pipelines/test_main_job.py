"""`p4d demo`: the main job runs the existing DAG with real DVC, writes a report, and a re-run is a no-op."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.cli import main
from pipelines.main_job import init_project, prepare_assets, run_demo, write_sample_inputs


def test_inputs_assets_and_project_are_created_once(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assets, synthetic = prepare_assets(out, None, "tiny")
    assert synthetic and json.loads((assets / "bundle.json").read_text())["synthetic"] is True
    dirs = (out / "data/raw/images", out / "data/raw/clips", out / "data/raw/clips_test")
    written = write_sample_inputs(*dirs)
    names = {p.name for p in written}
    assert {"astronaut.png", "astronaut_mirrored.png", "astronaut_crop.jpg", "unreadable.jpg",
            "astronaut_clip.mp4"} <= names
    test_clips = {p.name for p in written if p.parent == dirs[2]}
    assert len(test_clips) >= 3 and test_clips == names - {"astronaut.png", "astronaut_mirrored.png",
                                                           "astronaut_crop.jpg", "unreadable.jpg", "astronaut_clip.mp4"}
    assert write_sample_inputs(*dirs) == []  # never rewritten
    stamp = (assets / "bundle.json").stat().st_mtime_ns
    assert prepare_assets(out, None, "tiny") == (assets, True) and (assets / "bundle.json").stat().st_mtime_ns == stamp
    init_project(out, "tiny")
    config = (out / ".dvc/config").read_text()
    assert "no_scm = True" in config and "url = ../dvc-remote" in config and "remote = local" in config
    assert yaml.safe_load((out / "params.yaml").read_text())["profile"] == "tiny"
    from components.errors import P4DError

    with pytest.raises(P4DError, match="has profile 'tiny' but --profile paper"):
        init_project(out, "paper")


def test_missing_real_assets_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "assets").mkdir()
    assert main(["demo", "--out", str(tmp_path / "run"), "--assets", str(tmp_path / "assets")]) == 2
    assert "flame_model" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


@pytest.fixture(scope="module")
def consistent_assets(tmp_path_factory) -> Path:
    """The synthetic bundle with a MediaPipe embedding laid out on the synthetic head (fits converge)."""
    import mediapipe as mp
    import skimage.data

    from components.assets.synth import synthesize_bundle
    from components.assets.synthetic_embedding import synthetic_mediapipe_embedding
    from model.flame import load_flame_pickle

    root = synthesize_bundle(tmp_path_factory.mktemp("assets") / "bundle", "tiny")
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        marks = mesh.process(skimage.data.astronaut()).multi_face_landmarks[0].landmark
    points = np.array([[p.x * 512, p.y * 512, p.z * 512] for p in marks])
    arrays = load_flame_pickle(root / "flame/generic_model.pkl")
    np.savez(root / "flame/mediapipe_landmark_embedding.npz", **synthetic_mediapipe_embedding(arrays, points))
    return root


@pytest.mark.slow
def test_demo_runs_the_dag_then_does_nothing(tmp_path, consistent_assets, monkeypatch):
    # mlflow.set_tracking_uri / set_registry_uri (called in-process by earlier tests) export these variables
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    out = tmp_path / "demo"
    runs, report = run_demo(out, consistent_assets, "tiny")
    from pipelines.dag import select

    assert [r.name for r in runs] == [s.name for s in select()] and all(r.ran for r in runs)
    by_name = {r.name: r for r in runs}
    assert by_name["fit_flame"].failed == 1 and by_name["fit_flame"].ok >= 1  # the unreadable file is a row
    text = report.read_text()
    assert "unreadable.jpg" in text and "![aligned crops](report/crops.png)" in text
    assert (out / "report/crops.png").exists() and "pipeline run `" in text
    # the trained Ψ in use, the evaluation, the registry and the live endpoint are in the report
    assert "![reenactment](report/reenactment.gif)" in text and (out / "report/turntable.mp4").is_file()
    assert "| `eval/self/psnr` |" in text and (out / "reports/evaluation/samples/grid.png").is_file()
    assert "gate **passed**, approved: **True**" in text and "p4d review approve 1" in text
    assert "## Live endpoint (`deploy`)" in text and "frames/s, latency p50" in text
    assert (out / "report/endpoint_frame.png").is_file() and "The endpoint check failed" not in text
    lock = (out / "dvc.lock").read_text()
    assert set(yaml.safe_load(lock)["stages"]) == set(by_name)
    assert any((out / "dvc-remote").rglob("*")), "outputs were pushed to the local DVC remote"

    report_stamp = report.stat().st_mtime_ns
    again, _ = run_demo(out, consistent_assets, "tiny")
    assert not any(r.ran for r in again)
    assert (out / "dvc.lock").read_text() == lock and report.stat().st_mtime_ns == report_stamp

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["portrait4d-v2-pipeline"], output_format="list")
    assert run.data.metrics["fit_flame.items_failed"] == 1.0 and "fit_flame.seconds" in run.data.metrics
    assert (out / "mlartifacts").is_dir() and run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())

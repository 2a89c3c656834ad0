"""The evaluate stage end to end on a tiny random Ψ: held-out clips fitted by the real fit_flame stage, the
real Animator, a real MLflow (sqlite) store; the contract files register reads; bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from components.config import build_config, load_params
from components.config.evaluate import METRIC_NAMES
from components.evaluate.samples import CLIP_FRAMES, CLIP_SIDE, write_test_clips
from components.fit_flame.manifest import MANIFEST_NAME, ManifestRow, read_manifest, write_manifest
from components.io.hashing import file_sha256
from pipelines.cli import main

# Small but complete: 3 frames per clip, a short FLAME fit, one novel view, few bootstrap draws.
OVERRIDES = {
    "fit_flame": {"frames_per_clip": 3, "iterations_camera": 10, "iterations_full": 40},
    # 4 of the 12 test frames are unusable on purpose (bad-input cases), so the limit is above the default 30%
    "evaluate": {"frames_per_clip": 3, "novel_yaws": [0.4], "bootstrap_samples": 50, "turntable_frames": 4,
                 "max_failure_ratio": 0.5},
}
METRICS_KEYS = {"metrics", "intervals", "counts", "not_computed", "model", "psi_mlflow_run_id",
                "evaluate_mlflow_run_id", "data_version", "synthetic_assets", "profile"}  # fmt: skip


def _frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _write_clip_with_blanks(path: Path, faces: np.ndarray, blank: list[bool]) -> None:
    from components.animate.video import write_video

    frames = [np.full_like(faces[0], 200) if b else faces[k] for k, b in enumerate(blank)]
    write_video(path, np.stack(frames), 8)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, tiny_model) -> dict:
    """Test clips fitted by fit_flame: two good clips, one with a face-less middle frame, one with a single face."""
    from components.fit_flame.stage import run as fit_flame

    root = tmp_path_factory.mktemp("evaluate")
    clips = root / "clips_test"
    write_test_clips(clips)
    for name in ("astronaut_zoom_out", "astronaut_mirrored_tilt"):  # two good clips keep the test short
        (clips / f"{name}.mp4").unlink()
    faces = np.stack(_frames_of(clips / "astronaut_pan.mp4")[:3])
    _write_clip_with_blanks(clips / "blank_middle.mp4", faces, [False, True, False])
    _write_clip_with_blanks(clips / "one_face.mp4", faces, [False, True, True])
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "tiny", **OVERRIDES}))
    cfg = build_config("tiny", OVERRIDES)
    fit_flame(cfg.fit_flame, str(clips), tiny_model["assets"], root / "labels_test", video=True, device="cpu",
              batch=16, progress=False)  # fmt: skip
    return {"root": root, "clips": clips, "labels": root / "labels_test", "params": params, **tiny_model}


def _evaluate(held_out: dict, out: Path, *extra: str) -> int:
    return main(["evaluate", "--psi", str(held_out["psi"]), "--data", str(held_out["labels"]), "--assets",
                 str(held_out["assets"]), "--out", str(out), "--params", str(held_out["params"]), "--no-progress",
                 *extra])  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(held_out) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        db = held_out["root"] / "mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.setenv("P4D_DATA_VERSION", "md5:test-split-v1")
        out = held_out["root"] / "evaluation"
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        with redirect_stdout(buf):
            assert _evaluate(held_out, out) == 0
    return {**held_out, "out": out, "db": db, "stdout": buf.getvalue(),
            "doc": json.loads((out / "metrics.json").read_text())}  # fmt: skip


@pytest.mark.slow  # shares one evaluation run (~1 min on 2 cores with fit_flame)
def test_metrics_json_keeps_the_register_contract(evaluated):
    doc = evaluated["doc"]
    assert set(doc) == METRICS_KEYS
    assert doc["profile"] == "tiny" and doc["synthetic_assets"] is True
    assert doc["data_version"] == "md5:test-split-v1" and doc["model"] == str(evaluated["psi"])
    assert doc["psi_mlflow_run_id"] is None  # the fixture's Ψ folder has no training checkpoint
    # every stable name is either measured or said not to be, with a reason
    assert set(doc["metrics"]) | set(doc["not_computed"]) == set(METRIC_NAMES)
    assert not set(doc["metrics"]) & set(doc["not_computed"])
    assert set(doc["counts"]) == set(METRIC_NAMES)
    n_self = 2 + 2 + 1  # driving frames: two per good clip, one in the clip with a face-less frame
    for name in ("eval/self/psnr", "eval/self/ssim", "eval/self/lpips", "eval/self/face_rate"):
        assert doc["counts"][name] == n_self
        lo, hi = doc["intervals"][name]
        assert lo <= doc["metrics"][name] <= hi
    assert 0 < doc["metrics"]["eval/self/psnr"] < 40  # a random Ψ is far from its targets
    assert -1 <= doc["metrics"]["eval/self/ssim"] < 0.9
    assert doc["metrics"]["eval/self/lpips"] > 0
    assert doc["counts"]["eval/cross/face_rate"] == n_self  # every usable clip drives the next one's source
    # a random tiny Ψ renders no face: the face metrics say so instead of a number
    assert doc["metrics"]["eval/self/face_rate"] == 0.0
    assert doc["not_computed"]["eval/self/aed"].startswith("no face found in the render")
    assert "Inception" in doc["not_computed"]["eval/fid"]
    gate = json.loads((evaluated["out"] / "gate.json").read_text())
    assert set(gate) == {"metrics"} and set(gate["metrics"]) == set(METRIC_NAMES)
    assert gate["metrics"]["eval/self/psnr"] == {"greater_is_better": True, "threshold": 0.0, "max_regression": None}
    assert gate["metrics"]["eval/self/lpips"]["greater_is_better"] is False


@pytest.mark.slow  # shares one evaluation run (~1 min on 2 cores with fit_flame)
def test_per_item_table_records_renders_and_unusable_inputs(evaluated):
    rows = pq.read_table(evaluated["out"] / "per_item.parquet").to_pylist()
    kinds = [r["kind"] for r in rows]
    assert kinds.count("self") == 5 and kinds.count("cross") == 5 and kinds.count("novel") == 3
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["clip_id"] for r in failed} == {"blank_middle", "one_face"}
    reasons = [r["reason"] for r in failed]
    assert sum("no face" in r for r in reasons) == 3  # the blank frames, as fit_flame reported them
    assert any(r["clip_id"] == "one_face" and "a test clip needs >= 2" in r["reason"] for r in failed)
    self_rows = [r for r in rows if r["kind"] == "self"]
    assert all(np.isfinite(r["psnr"]) and r["face_found"] is False for r in self_rows)
    assert all(np.isnan(r["aed"]) and r["reason"].startswith("no face found") for r in self_rows)


@pytest.mark.slow  # shares one evaluation run (~1 min on 2 cores with fit_flame)
def test_samples_and_readme(evaluated):
    from PIL import Image

    out = evaluated["out"]
    grid = np.asarray(Image.open(out / "samples" / "grid.png"))
    # 3 usable clips x (source | driving | output | target | 1 novel view), 128 px tiles, 2 px padding
    assert grid.shape == (3 * 130 + 2, 5 * 130 + 2, 3)
    reenact = _frames_of(out / "samples" / "reenactment.mp4")
    assert len(reenact) == 2 and reenact[0].shape == (256, 512, 3)  # target | output of the first clip
    assert len(_frames_of(out / "samples" / "turntable.mp4")) == 4
    text = (out / "README.md").read_text()
    assert "| eval/self/psnr |" in text and "`eval/fid`: not computed: no Inception weights" in text
    assert "synthetic assets" in text
    assert not list(out.parent.glob(".evaluation.*"))  # no temporary folder left behind
    assert load_params(out / "config.yaml") == load_params(evaluated["params"])  # the config the run used


@pytest.mark.slow  # shares one evaluation run (~1 min on 2 cores with fit_flame)
def test_summary_table_is_printed(evaluated):
    text = evaluated["stdout"]
    assert "eval/self/psnr" in text and "95% interval" in text
    assert "eval/self/aed: not computed: no face found in the render" in text
    assert f"MLflow run {evaluated['doc']['evaluate_mlflow_run_id']}" in text


@pytest.mark.slow  # shares one evaluation run (~1 min on 2 cores with fit_flame)
def test_mlflow_run_carries_every_metric_and_image(evaluated):
    from mlflow.tracking import MlflowClient

    doc = evaluated["doc"]
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated['db']}")
    run = client.get_run(doc["evaluate_mlflow_run_id"])
    assert run.info.run_name == "evaluate" and run.info.status == "FINISHED"
    for name, value in doc["metrics"].items():
        assert run.data.metrics[name] == pytest.approx(value)
        assert run.data.metrics[f"{name}/ci_low"] == pytest.approx(doc["intervals"][name][0])
    assert run.data.tags["psi_run_id"] == "unknown" and run.data.tags["data_version"] == "md5:test-split-v1"
    assert run.data.tags["stage"] == "evaluate"
    assert run.data.tags["not_computed/eval/fid"].startswith("no Inception weights")
    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "gate.json", "per_item.parquet", "README.md", "samples"} <= top
    samples = {f.path for f in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"samples/grid.png", "samples/reenactment.mp4", "samples/turntable.mp4"}


@pytest.mark.slow
def test_metrics_are_deterministic(evaluated, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("P4D_DATA_VERSION", "md5:test-split-v1")
    assert _evaluate(evaluated, tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for key in ("metrics", "intervals", "counts", "not_computed"):
        assert again[key] == evaluated["doc"][key]
    first = pq.read_table(evaluated["out"] / "per_item.parquet").to_pandas()
    second = pq.read_table(tmp_path / "again" / "per_item.parquet").to_pandas()
    assert first.equals(second)


def _with_inception(held_out: dict, root: Path, **weights) -> dict:
    """``held_out`` with a copy of its assets holding a seeded FID Inception weights file."""
    from components.assets.manifest import spec
    from tests.components.fid_inception_file import write_seeded_inception

    assets = root / "assets"
    shutil.copytree(held_out["assets"], assets)
    write_seeded_inception(assets / spec("fid_inception").path, **weights)
    return {**held_out, "assets": assets}


@pytest.mark.slow  # a second evaluation run, plus the Inception and a 2048² matrix square root (~1.5 min)
def test_fid_is_computed_with_user_supplied_inception_weights(held_out, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    out = tmp_path / "evaluation"
    assert _evaluate(_with_inception(held_out, tmp_path, seed=0), out) == 0
    doc = json.loads((out / "metrics.json").read_text())
    fid = doc["metrics"]["eval/fid"]
    assert np.isfinite(fid) and fid > 0  # a random Ψ's renders are far from their targets
    assert doc["counts"]["eval/fid"] == 5 and "eval/fid" not in doc["not_computed"]  # the 5 self renders
    assert "| eval/fid |" in (out / "README.md").read_text()
    run = MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(doc["evaluate_mlflow_run_id"])
    assert run.data.metrics["eval/fid"] == pytest.approx(fid)
    assert "not_computed/eval/fid" not in run.data.tags


def test_wrong_inception_weights_fail_before_any_render(held_out, tmp_path, capsys):
    import torch

    from components.assets.manifest import spec

    with_file = _with_inception(held_out, tmp_path, seed=0)
    weights = with_file["assets"] / spec("fid_inception").path
    state = torch.load(weights, weights_only=True)
    state.pop("Mixed_5b.branch1x1.conv.weight")
    torch.save(state, weights)
    out = tmp_path / "evaluation"
    assert _evaluate(with_file, out) == 2
    line = _stderr_line(capsys)
    assert str(weights) in line and "1 missing: 'Mixed_5b.branch1x1.conv.weight'" in line
    assert "evaluate.fid_inception_weights" in line
    assert not out.exists()


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_leakage_check_trips_on_a_training_clip(held_out, tmp_path, capsys):
    leaked = held_out["clips"] / "astronaut_roll.mp4"
    train = tmp_path / "train_labels"
    train.mkdir()
    write_manifest([ManifestRow("astronaut_roll-0000", "astronaut_roll.mp4", file_sha256(leaked), "astronaut_roll", 0,
                                "ok")], train / MANIFEST_NAME)  # fmt: skip
    out = tmp_path / "evaluation"
    assert _evaluate(held_out, out, "--train-data", str(train)) == 2
    line = _stderr_line(capsys)
    assert "1 test clip(s) also in the training data" in line and "astronaut_roll" in line
    assert not out.exists()
    # a training set without the test clips passes the check
    write_manifest([ManifestRow("other-0000", "other.mp4", "0" * 64, "other", 0, "ok")], train / MANIFEST_NAME)
    from components.evaluate.data import check_leakage

    check_leakage(held_out["labels"], train)


def test_unloadable_model_and_missing_split_are_one_clear_message(held_out, tmp_path, capsys):
    out = tmp_path / "evaluation"
    bogus = tmp_path / "psi.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    args = ["evaluate", "--data", str(held_out["labels"]), "--assets", str(held_out["assets"]), "--out", str(out),
            "--params", str(held_out["params"]), "--no-progress"]  # fmt: skip
    assert main([*args, "--psi", str(bogus)]) == 2
    assert "psi.safetensors: not a readable safetensors file" in _stderr_line(capsys)
    assert main([*args, "--psi", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in _stderr_line(capsys)
    missing = ["evaluate", "--psi", str(held_out["psi"]), "--data", str(tmp_path / "no_split"), "--assets",
               str(held_out["assets"]), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(missing) == 2
    assert "test split not found" in _stderr_line(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == [bogus]


def _copy_with_rows(held_out: dict, dst: Path, change) -> Path:
    shutil.copytree(held_out["labels"], dst)
    rows = read_manifest(dst / MANIFEST_NAME)
    for row in rows:
        change(row)
    write_manifest(rows, dst / MANIFEST_NAME)
    return dst


def test_empty_test_set_and_failure_ratio(held_out, tmp_path, capsys):
    def fail_all(row):
        row.status, row.reason, row.crop_path = "failed", "no face detected", None

    empty = _copy_with_rows(held_out, tmp_path / "empty", fail_all)
    out = tmp_path / "evaluation"
    base = ["evaluate", "--psi", str(held_out["psi"]), "--assets", str(held_out["assets"]), "--out", str(out),
            "--params", str(held_out["params"]), "--no-progress"]  # fmt: skip
    assert main([*base, "--data", str(empty)]) == 2
    line = _stderr_line(capsys)
    assert "the test set is empty after filtering" in line and "no face detected" in line
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"profile": "tiny", **OVERRIDES,
                                      "evaluate": {**OVERRIDES["evaluate"], "max_failure_ratio": 0.1}}))
    base[base.index("--params") + 1] = str(strict)
    assert main([*base, "--data", str(held_out["labels"])]) == 2
    line = _stderr_line(capsys)
    assert "test inputs unusable" in line and "> evaluate.max_failure_ratio 10%" in line
    assert not out.exists()


def test_write_test_clips_differ_from_the_training_clip(tmp_path):
    from pipelines.main_job import write_sample_inputs

    written = [p for p in write_sample_inputs(tmp_path / "images", tmp_path / "clips", tmp_path / "clips_test")
               if p.parent == tmp_path / "clips_test"]
    assert len(written) >= 3
    train = {file_sha256(p) for p in (tmp_path / "clips").glob("*.mp4")}
    hashes = {file_sha256(p) for p in written}
    assert len(hashes) == len(written) and not hashes & train
    for path in written:
        frames = _frames_of(path)
        assert len(frames) == CLIP_FRAMES and frames[0].shape == (CLIP_SIDE, CLIP_SIDE, 3)
    assert write_test_clips(tmp_path / "clips_test") == []  # idempotent: nothing rewritten
    assert sorted(written) == sorted((tmp_path / "clips_test").glob("*.mp4"))

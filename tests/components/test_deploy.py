"""deploy: the Triton model repository, the real tritonserver (from nvidia-pytriton) on 127.0.0.1, the
request contract, video sessions, rollout and rollback, the DVC stage command and the image.

One server (module scope, CPU, tiny) serves version 1 of both models exported from the ``tiny_model``
package; every request is compared with the in-process Animator's render of the same inputs.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from components.deploy.client import ClientError, Endpoint, Timings, encode_png, session_frames
from components.config import build_config
from components.deploy.contract import IMAGE, SOURCE_ENCODINGS
from components.deploy.model_config import parse_config_text
from components.deploy.repository import CONFIG_FILE, export_package, versions
from components.deploy.rollout import (
    DEPLOYMENT_FILE,
    RolloutError,
    activate,
    reference_frame,
    smoke_images,
)
from components.deploy.server import ServerError, free_port, start_server
from components.io.storage import open_store

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG = build_config("tiny").deploy


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def animator(tiny_model):
    from components.animate import Animator

    a = Animator.load(tiny_model["package"])
    yield a
    a.close()


@pytest.fixture(scope="module")
def photos(animator):
    """The smoke photos, encoded, with the Animator's source encoding and its frame for (source, driving)."""
    source, driving = smoke_images()
    return {
        "source": source, "driving": driving, "source_png": encode_png(source), "driving_png": encode_png(driving),
        "encoded": animator.prepare_source(source), "reference": reference_frame(animator, source, driving),
    }


@pytest.fixture(scope="module")
def served(tiny_model, animator, tmp_path_factory):
    """Version 1 of both models in a fresh repository, served by the real tritonserver on free ports."""
    repo = tmp_path_factory.mktemp("triton_repo")
    export_package(tiny_model["package"], repo, CFG, animator.image_size, animator.motion_dim)
    server = start_server(repo, [CFG.model_name, CFG.session_model_name], free_port(), free_port(), free_port(),
                          log_path=repo.parent / "tritonserver.log", ready_timeout_s=CFG.ready_timeout_s)
    try:
        yield {"repo": repo, "server": server}
    finally:
        server.stop()
        pgid_alive = [p for p in Path("/proc").glob("[0-9]*") if _pgid(p) == server.pid]
        assert not pgid_alive, "backend stubs of the stopped server are still running"


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _metric(server, name: str, model: str, settle_s: float = 3.0) -> float:
    """The metric summed over versions, read until it stops changing (Triton refreshes it every ~1 s)."""
    def read() -> float:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        found = re.findall(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+]+)$', text, re.M)
        return sum(float(v) for v in found)

    value, deadline = read(), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        again = read()
        if again == value:
            return value
        value = again
    return value


def _motion(animator, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, (n, animator.motion_dim)).astype(np.float32)


def _within_one(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max()) <= 1


# ------------------------------------------------------------------------------- repository / config
def test_export_writes_new_numbered_versions_with_typed_config(tiny_model, animator, tmp_path):
    for _ in range(2):
        export_package(tiny_model["package"], tmp_path, CFG, animator.image_size, animator.motion_dim)
    store = open_store(tmp_path)
    assert versions(store, CFG.model_name) == [1, 2] == versions(store, CFG.session_model_name)
    assert (tmp_path / CFG.model_name / "2" / "package" / "animator.json").is_file()
    assert "components.deploy.backend" in (tmp_path / CFG.model_name / "2" / "model.py").read_text()
    stateless = parse_config_text((tmp_path / CFG.model_name / CONFIG_FILE).read_text())
    session = parse_config_text((tmp_path / CFG.session_model_name / CONFIG_FILE).read_text())
    assert stateless.version_policy.latest.num_versions == 2
    assert stateless.HasField("dynamic_batching") and not stateless.HasField("sequence_batching")
    assert session.HasField("sequence_batching") and not session.HasField("dynamic_batching")
    assert not session.HasField("response_cache")
    assert [g.kind for g in stateless.instance_group] == [2]  # KIND_CPU in tiny
    inputs = {i.name: (i.data_type, list(i.dims)) for i in stateless.input}
    assert inputs["MOTION"] == (11, [animator.motion_dim]) and inputs["SOURCE"] == (13, [1])  # FP32, STRING
    assert [(o.name, list(o.dims)) for o in stateless.output] == [("IMAGE", [64, 64, 3])]
    assert {o.name for o in session.output} == {"IMAGE", "SOURCE_ENCODINGS"}


def test_paper_profile_serves_on_the_gpu():
    from components.config import build_config
    from components.deploy.model_config import config_text, model_config

    text = config_text(model_config(build_config("paper").deploy, 512, 548, session=False))
    assert "kind: KIND_GPU" in text and "dims: 512" in text and "dims: 548" in text


def test_export_refuses_an_existing_version(tiny_model, animator, tmp_path):
    from components.deploy.repository import ExportError

    export_package(tiny_model["package"], tmp_path, CFG, animator.image_size, animator.motion_dim)
    with pytest.raises(ExportError, match="version 1 exists already"):
        export_package(tiny_model["package"], tmp_path, CFG, animator.image_size, animator.motion_dim, version=1)


def test_server_that_cannot_load_says_why(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\n')
    (tmp_path / "broken" / "1" / "model.py").write_text("raise RuntimeError('weights are corrupt')\n")
    with pytest.raises(ServerError, match="weights are corrupt"):
        start_server(tmp_path, ["broken"], free_port(), free_port(), free_port(), ready_timeout_s=60)


# ---------------------------------------------------------------------------------------- requests
def test_valid_request_returns_the_animators_frame(served, photos):
    with Endpoint.open(served["server"].http_url) as endpoint:
        out = endpoint.infer(CFG.model_name, {"SOURCE": photos["source_png"], "DRIVING": photos["driving_png"]})
    _within_one(out[IMAGE], photos["reference"])


def test_motion_and_camera_request_returns_the_animators_frame(served, photos, animator):
    motion, camera = _motion(animator, 1, seed=3), animator.fixed_camera(0.3, 0.1)[None]
    want = animator.render(photos["encoded"], animator.motion_from_vectors(motion, camera, source=photos["encoded"]))
    with Endpoint.open(served["server"].grpc_url) as endpoint:
        out = endpoint.infer(CFG.model_name, {"SOURCE_RGB": photos["source"], "MOTION": motion[0], "CAMERA": camera[0]})
    _within_one(out[IMAGE], want[0])


def test_session_encodes_the_source_once(served, photos, animator):
    server = served["server"]
    n = 8
    motion = _motion(animator, n, seed=1)
    want = animator.render(photos["encoded"], animator.motion_from_vectors(motion, source=photos["encoded"]))
    before = _metric(server, "p4d_source_encodings_total", CFG.session_model_name)
    with Endpoint.open(f"grpc://{server.grpc_url}") as endpoint:
        result = session_frames(endpoint, CFG.session_model_name, photos["source_png"], list(motion), 91, Timings())
    assert result.encodings == 1
    assert _metric(server, "p4d_source_encodings_total", CFG.session_model_name) - before == 1
    for got, ref in zip(result.frames, want, strict=True):
        _within_one(got, ref)
    assert "session 91 source encoded" in server.log_tail(200_000)


def test_session_frame_after_end_is_refused(served, photos, animator):
    motion = _motion(animator, 2, seed=2)
    with Endpoint.open(f"grpc://{served['server'].grpc_url}") as endpoint:
        session_frames(endpoint, CFG.session_model_name, photos["source_png"], list(motion), 92, Timings())
        with pytest.raises(ClientError, match="START flag"):  # the session ended: its cache is gone
            endpoint.infer(CFG.session_model_name, {"MOTION": motion[0]}, sequence_id=92)


def _png_of_size(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def test_malformed_requests_are_refused_with_their_reason(served, photos, animator):
    ok_motion = _motion(animator, 1)[0]
    src = photos["source_png"]
    cases = [
        ({"SOURCE": src, "MOTION": ok_motion[:10]}, r"unexpected shape for input 'MOTION'"),
        ({"SOURCE": src, "MOTION": ok_motion.astype(np.float64)}, r"'MOTION' data-type is 'FP64'.*expects 'FP32'"),
        ({"SOURCE": src, "MOTION": np.full_like(ok_motion, np.nan)}, r"MOTION: \d+ non-finite"),
        ({"SOURCE": src, "MOTION": ok_motion, "CAMERA": np.full(25, np.inf, np.float32)}, r"CAMERA: 25 non-finite"),
        ({"SOURCE": b"GIF89a this is not an image", "MOTION": ok_motion}, r"SOURCE: bytes are not a readable image"),
        ({"SOURCE": _png_of_size(5000, 8), "MOTION": ok_motion}, r"SOURCE: image is 5000x8 pixels, larger than"),
        ({"SOURCE": _png_of_size(256, 256), "MOTION": ok_motion}, r"SOURCE: no face found"),
        ({"MOTION": ok_motion}, r"missing input: source portrait \(SOURCE or SOURCE_RGB\)"),
        ({"SOURCE": src}, r"missing input: driving frame or motion"),
        ({"SOURCE": src, "SOURCE_RGB": photos["source"], "MOTION": ok_motion}, r"SOURCE and SOURCE_RGB given"),
    ]
    with Endpoint.open(served["server"].http_url) as endpoint:
        for inputs, message in cases:
            with pytest.raises(ClientError, match=message):
                endpoint.infer(CFG.model_name, inputs)
        with pytest.raises(ClientError, match="must specify the START flag"):
            endpoint.infer(CFG.session_model_name, {"MOTION": ok_motion}, sequence_id=777)  # unknown session
        with pytest.raises(ClientError, match="only accepted with the session's START"):
            endpoint.infer(CFG.session_model_name, {"SOURCE": src, "MOTION": ok_motion}, sequence_id=778,
                           sequence_start=True)
            endpoint.infer(CFG.session_model_name, {"SOURCE": src, "MOTION": ok_motion}, sequence_id=778)
        # the server keeps serving
        out = endpoint.infer(CFG.model_name, {"SOURCE": src, "MOTION": ok_motion})
    assert out[IMAGE].shape == (64, 64, 3)


# ------------------------------------------------------------------------- batching across sources
@pytest.fixture(scope="module")
def people(animator, photos):
    """Three different source photos (the astronaut, mirrored, darkened) with the Animator's encodings."""
    images = [photos["source"], photos["driving"], (photos["source"] * 0.6).astype(np.uint8)]
    encoded = [photos["encoded"], animator.prepare_source(images[1]), animator.prepare_source(images[2])]
    return {"images": images, "png": [encode_png(i) for i in images], "encoded": encoded}


def _alone(animator, source, motion: np.ndarray) -> np.ndarray:
    """(S, S, 3): one row rendered by itself (batch 1), the way a request of its own is."""
    return animator.render(source, animator.motion_from_vectors(motion[None], source=source))[0]


def test_one_call_renders_rows_of_different_sources_as_each_alone(animator, people):
    rows = [0, 1, 0, 2, 1, 2]  # which source each row shows; K=3 sources, N=6 rows, repeats share an encoding
    motion = _motion(animator, len(rows), seed=7)
    sources = [people["encoded"][k] for k in rows]
    conditions = [animator.frame_conditions(s, animator.motion_from_vectors(m[None], source=s))
                  for s, m in zip(sources, motion)]
    together = animator.render_conditions(sources, motion, np.concatenate([c[0] for c in conditions]),
                                          np.concatenate([c[1] for c in conditions]))
    alone = [_alone(animator, s, m) for s, m in zip(sources, motion)]
    for got, want in zip(together, alone, strict=True):
        _within_one(got, want)
    # the sources render differently, so a row given another row's encoding would fail the check above
    other = _alone(animator, people["encoded"][1], motion[0])
    assert int(np.abs(other.astype(np.int16) - alone[0].astype(np.int16)).max()) > 1


def test_stacked_encodings_keep_per_source_motion_scale():
    from dataclasses import replace

    import torch

    from components.animate import Animator, AnimateError
    from model.networks.psi import SourceFeatures

    def features(value: float, scale) -> SourceFeatures:
        return SourceFeatures(torch.full((1, 4, 2), value), (2, 2), torch.full((1, 3, 2, 2), value), None, scale)

    stacked = Animator._stack([features(1.0, 1.0), features(2.0, torch.full((1, 1, 1), 0.5))], [1, 0, 1])
    assert stacked.neutral_tokens[:, 0, 0].tolist() == [2.0, 1.0, 2.0] and stacked.detail.shape == (3, 3, 2, 2)
    assert stacked.background is None and stacked.planes is None
    assert stacked.motion_scale.reshape(-1).tolist() == [0.5, 1.0, 0.5]
    assert Animator._stack([features(1.0, 1.0), features(2.0, 1.0)], [0, 1]).motion_scale == 1.0
    with pytest.raises(AnimateError, match="single encodings of one network"):
        Animator._stack([features(1.0, 1.0), replace(features(2.0, 1.0), token_grid=(4, 4))], [0, 1])


@pytest.mark.slow
def test_dynamic_batch_of_different_sources_is_rendered_in_fewer_calls(tiny_model, animator, people, tmp_path):
    """Concurrent requests of three people through a server whose batcher waits up to 1 s for company: every
    answer is that person's frame, a request without a face fails alone, and the frames took fewer network
    calls than requests (the batcher's groups were rendered together)."""
    cfg = CFG.model_copy(update={"max_queue_delay_us": 1_000_000})
    export_package(tiny_model["package"], tmp_path, cfg, animator.image_size, animator.motion_dim)
    clients, per_client = 4, 2
    motion = _motion(animator, clients * per_client, seed=8)
    which = [i % 3 for i in range(clients * per_client)]  # request i shows person which[i]
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []  # the faceless request's
    failures: list[str] = []  # any valid request's
    start = threading.Barrier(clients + 1)

    def client(c: int, endpoint_url: str) -> None:
        with Endpoint.open(endpoint_url) as endpoint:
            start.wait()
            for i in range(c * per_client, (c + 1) * per_client):
                try:
                    inputs = {"SOURCE": people["png"][which[i]], "MOTION": motion[i]}
                    results[i] = endpoint.infer(cfg.model_name, inputs)[IMAGE]
                except Exception as err:  # noqa: BLE001 - every failure is reported
                    failures.append(repr(err))

    def faceless(endpoint_url: str) -> None:
        with Endpoint.open(endpoint_url) as endpoint:
            start.wait()
            try:
                endpoint.infer(cfg.model_name, {"SOURCE": _png_of_size(256, 256), "MOTION": motion[0]})
            except ClientError as err:
                errors.append(str(err))

    with start_server(tmp_path, [cfg.model_name], free_port(), free_port(), free_port(),
                      ready_timeout_s=cfg.ready_timeout_s) as server:
        threads = [threading.Thread(target=client, args=(c, server.http_url)) for c in range(clients)]
        threads.append(threading.Thread(target=faceless, args=(server.http_url,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = _metric(server, "p4d_network_calls_total", cfg.model_name)
        encodings = _metric(server, "p4d_source_encodings_total", cfg.model_name)
    requests = clients * per_client
    print(f"{requests} requests of 3 sources (+1 without a face): {calls:.0f} network calls, "
          f"{encodings:.0f} source encodings")
    assert failures == []
    assert len(errors) == 1 and "SOURCE: no face found" in errors[0]
    assert sorted(results) == list(range(requests))
    for i, image in results.items():
        _within_one(image, _alone(animator, people["encoded"][which[i]], motion[i]))
    assert encodings == 3  # one per person: a repeated source comes from the instance's cache
    assert 1 <= calls < requests


@pytest.mark.slow
def test_concurrent_clients_all_succeed_and_metrics_count_them(served, photos, animator):
    server, clients, per_client = served["server"], 8, 50
    motion = _motion(animator, per_client, seed=5)
    before = _metric(server, "nv_inference_request_success", CFG.model_name)
    errors: list[str] = []

    def client() -> None:
        with Endpoint.open(server.http_url) as endpoint:
            for m in motion:
                try:
                    out = endpoint.infer(CFG.model_name, {"SOURCE": photos["source_png"], "MOTION": m})
                    assert out[IMAGE].shape == (64, 64, 3)
                except Exception as err:  # noqa: BLE001 - every failure is counted
                    errors.append(repr(err))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert errors == []
    assert _metric(server, "nv_inference_request_success", CFG.model_name) - before == clients * per_client
    print(f"{clients}x{per_client} requests in {elapsed:.1f} s ({clients * per_client / elapsed:.1f} req/s)")


@pytest.mark.slow
def test_idle_session_expires(tiny_model, animator, photos, tmp_path):
    cfg = CFG.model_copy(update={"session_idle_timeout_s": 3.0})
    export_package(tiny_model["package"], tmp_path, cfg, animator.image_size, animator.motion_dim)
    motion = _motion(animator, 2)
    with start_server(tmp_path, [cfg.session_model_name], free_port(), free_port(), free_port()) as server:
        with Endpoint.open(server.http_url) as endpoint:
            endpoint.infer(cfg.session_model_name, {"SOURCE": photos["source_png"]}, sequence_id=5,
                           sequence_start=True)
            time.sleep(6)
            with pytest.raises(ClientError, match="START flag|unknown or expired"):
                endpoint.infer(cfg.session_model_name, {"MOTION": motion[0]}, sequence_id=5)


# ---------------------------------------------------------------------------------- rollout / rollback
@pytest.mark.slow
def test_corrupt_version_is_rolled_back_and_the_old_one_keeps_serving(served, photos, animator, tiny_model, tmp_path):
    repo, server = served["repo"], served["server"]
    corrupt = tmp_path / "package"
    shutil.copytree(tiny_model["package"], corrupt)
    (corrupt / "psi.safetensors").write_bytes(b"\x00" * 1000)  # a truncated upload
    export_package(corrupt, repo, CFG, animator.image_size, animator.motion_dim)
    new = versions(open_store(repo), CFG.model_name)[-1]
    assert new >= 2
    with pytest.raises(RolloutError, match=rf"version {new} not deployed: load portrait4d .*not a readable "
                       r"safetensors file.*; rolled back: version removed, the previous version keeps serving"):
        activate(repo, server.http_url, CFG, new, photos["source"], photos["driving"], photos["reference"])
    assert new not in versions(open_store(repo), CFG.model_name)
    assert new not in versions(open_store(repo), CFG.session_model_name)
    motion = _motion(animator, 1, seed=4)
    want = animator.render(photos["encoded"], animator.motion_from_vectors(motion, source=photos["encoded"]))
    with Endpoint.open(server.http_url) as endpoint:
        out = endpoint.infer(CFG.model_name, {"SOURCE": photos["source_png"], "MOTION": motion[0]}, version="1")
    _within_one(out[IMAGE], want[0])


@pytest.mark.slow
def test_smoke_mismatch_is_rolled_back(served, photos, tiny_model, animator):
    repo, server = served["repo"], served["server"]
    export_package(tiny_model["package"], repo, CFG, animator.image_size, animator.motion_dim)
    new = versions(open_store(repo), CFG.model_name)[-1]
    wrong = 255 - photos["reference"]  # what a model with other weights would be judged against
    with pytest.raises(RolloutError, match=r"differs from the Animator's render by up to \d+ \(allowed 1\)"):
        activate(repo, server.http_url, CFG, new, photos["source"], photos["driving"], wrong)
    assert new not in versions(open_store(repo), CFG.model_name)


@pytest.mark.slow
def test_repository_on_s3_is_written_and_served_from_s3(s3_server, tiny_model, animator, photos, monkeypatch):
    """Export to S3 (moto) through the project's store, then Triton reads the repository from S3 itself."""
    import boto3

    from components.deploy.server import triton_repository

    for key, value in (("AWS_ENDPOINT_URL", s3_server), ("AWS_ACCESS_KEY_ID", "testing"),
                       ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="p4d-models")
    repo = "s3://p4d-models/triton"
    export_package(tiny_model["package"], repo, CFG, animator.image_size, animator.motion_dim)
    assert versions(open_store(repo), CFG.model_name) == [1]
    assert triton_repository(repo) == f"s3://{s3_server}/p4d-models/triton"
    motion = _motion(animator, 1, seed=6)
    want = animator.render(photos["encoded"], animator.motion_from_vectors(motion, source=photos["encoded"]))
    with start_server(triton_repository(repo), [CFG.model_name], free_port(), free_port(), free_port()) as server:
        with Endpoint.open(server.http_url) as endpoint:
            out = endpoint.infer(CFG.model_name, {"SOURCE": photos["source_png"], "MOTION": motion[0]})
    _within_one(out[IMAGE], want[0])


# ------------------------------------------------------------------------------------- the stage CLI
def _registration(path: Path, approved: bool, model_uri: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "registration.json").write_text(json.dumps(
        {"name": "portrait4d-v2", "version": "3", "model_uri": model_uri, "gate": "failed", "approved": approved}))
    return path


def test_stage_deploys_nothing_for_an_unapproved_candidate(tmp_path, capsys):
    from pipelines.cli import main

    reg = _registration(tmp_path / "registration", False, "models:/portrait4d-v2/3")
    assert main(["deploy", "rollout", "--registration", str(reg), "--out", str(tmp_path / "repo")]) == 0
    assert "nothing deployed: portrait4d-v2 version 3 is not approved (gate: failed)" in capsys.readouterr().out
    record = json.loads((tmp_path / "repo" / DEPLOYMENT_FILE).read_text())
    assert record["deployed"] is False and "not approved" in record["reason"]
    assert not (tmp_path / "repo" / CFG.model_name).exists()


def test_stage_refuses_a_malformed_registration(tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "registration.json").write_text('{"name": "x"}')
    assert main(["deploy", "rollout", "--registration", str(tmp_path), "--out", str(tmp_path / "repo")]) == 2
    assert "registration.json: missing field(s) version, model_uri, approved" in capsys.readouterr().err


@pytest.mark.slow
def test_stage_rolls_out_the_registered_champion_and_tags_it(tiny_model, tmp_path, monkeypatch, capsys):
    """An MLflow registry version (sqlite store) that holds the package: the stage exports it, starts a
    local tritonserver, loads + smoke-tests it, stops it, and tags the registry version."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_model["package"]), "model")
    client = MlflowClient()
    client.create_registered_model("p4d-test")
    version = client.create_model_version("p4d-test", f"runs:/{run.info.run_id}/model", run.info.run_id).version
    client.set_registered_model_alias("p4d-test", "champion", version)
    reg = _registration(tmp_path / "registration", True, "models:/p4d-test@champion")
    assert main(["deploy", "rollout", "--registration", str(reg), "--out", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert "version 1 of models:/p4d-test@champion live on http://127.0.0.1:" in out
    record = json.loads((tmp_path / "repo" / DEPLOYMENT_FILE).read_text())
    assert record["deployed"] and record["version"] == 1 and record["max_abs_diff"] <= 1
    tags = client.get_model_version("p4d-test", version).tags
    assert tags["deploy.triton_version"] == "1" and tags["deploy.endpoint"].startswith("http://127.0.0.1:")
    assert "deploy.time" in tags


@pytest.mark.slow
def test_infer_cli_writes_the_video_and_prints_latency(served, photos, tmp_path, capsys):
    from components.animate.video import read_frames, write_video
    from pipelines.cli import main

    (tmp_path / "source.png").write_bytes(photos["source_png"])
    write_video(tmp_path / "driving.mp4", [photos["driving"]] * 3, fps=10)
    out = tmp_path / "out.mp4"
    args = ["infer", "--url", f"grpc://{served['server'].grpc_url}", "--source", str(tmp_path / "source.png"),
            "--driving", str(tmp_path / "driving.mp4"), "--out", str(out), "--session"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "source encoded 1 time(s)" in printed and re.search(r"3 frames, [0-9.]+ frames/s, latency p50 \d+ ms", printed)
    assert len(read_frames(out)) == 3


@pytest.mark.slow
def test_serve_cli_runs_until_sigterm(served):
    """`p4d deploy serve` (the container's command): ready on /v2/health/ready, SIGTERM stops it cleanly."""
    import os
    import signal
    import subprocess
    import sys

    from components.deploy.server import http_status

    http = free_port()
    exe = str(Path(sys.executable).with_name("p4d"))
    proc = subprocess.Popen([exe, "deploy", "serve", "--repo", str(served["repo"]), "--model", CFG.model_name,
                             "--http-port", str(http), "--grpc-port", str(free_port()),
                             "--metrics-port", str(free_port())], stdout=subprocess.PIPE, text=True)
    try:
        assert "deploy serve: ready: portrait4d" in proc.stdout.readline()
        assert http_status(f"http://127.0.0.1:{http}/v2/health/ready") == 200
        assert http_status(f"http://127.0.0.1:{http}/v2/models/{CFG.model_name}/ready") == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "deploy serve: stopped" in out
    assert http_status(f"http://127.0.0.1:{http}/v2/health/live") == 0


# ------------------------------------------------------------------------------------------ the image
def test_triton_dockerfile_lint():
    from tests.pipelines.test_dockerfiles import EXERCISED, SYSTEM_SETUP, instructions

    path = REPO_ROOT / "docker" / "Dockerfile.triton"
    ins = instructions(path)
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["nvcr.io/nvidia/tritonserver:24.10-py3"]  # Triton 2.51, the release nvidia-pytriton bundles
    assert not [a for i, a in ins if i == "ADD"] and not [a for _, a in ins if ":latest" in a]
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [a for i, a in ins if i == "ENTRYPOINT"] == ['["p4d"]']
    assert '"deploy", "serve"' in [a for i, a in ins if i == "CMD"][-1]
    assert "8000 8001 8002" in [a for i, a in ins if i == "EXPOSE"][-1]
    for args in (a for i, a in ins if i == "RUN"):
        for command in (c.strip() for c in args.split("&&")):
            if not any(p.match(command) for p in SYSTEM_SETUP):
                assert command in EXERCISED, f"Dockerfile.triton runs {command!r}, which no test runs"

"""Stage fit_flame: decoding of bad inputs, landmarks + 512 alignment, FLAME fitting, outputs, resume.

Everything runs offline on a synthetic asset bundle built here (synthetic FLAME head; a
MediaPipe->FLAME embedding laid out from MediaPipe's own points on the astronaut photo).
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from components.assets.manifest import spec  # noqa: E402
from components.config import build_config, load_params  # noqa: E402
from components.fit_flame import FitFlameConfig  # noqa: E402
from components.fit_flame.alignment import (  # noqa: E402
    POS_REFERENCE_3D,
    CropTransform,
    OneEuroFilter,
    crop_image,
    crop_transform,
    five_points,
    pos_crop_params,
    pos_fit,
)
from components.fit_flame.cli import resolve_config  # noqa: E402
from components.fit_flame.fitting import FLAME_TO_WORLD, FlameFitter, landmark_flame_arrays  # noqa: E402
from components.landmarks import FaceLandmarker  # noqa: E402
from components.fit_flame.manifest import ItemFailure  # noqa: E402
from components.fit_flame.media import decode_clip, decode_image, sample_indices  # noqa: E402
from components.fit_flame.stage import FailureRatioExceeded, run  # noqa: E402
from components.assets.synthetic_embedding import synthetic_mediapipe_embedding  # noqa: E402
from components.fit_flame.synthetic import random_fit_problem  # noqa: E402
from model.cameras import LabelLayout, intrinsics_normalized, split_camera_label  # noqa: E402
from model.flame import (  # noqa: E402
    FlameLayer,
    LandmarkEmbedding,
    landmarks_from_vertices,
    synthetic_flame_arrays,
    write_flame_pickle,
)
from model.networks.pdfgc import PDFGCConfig, PDFGCMotionEncoder  # noqa: E402
from pipelines.cli import main  # noqa: E402

torch.set_num_threads(1)


def tiny(**overrides) -> FitFlameConfig:
    return FitFlameConfig(**{**build_config("tiny").fit_flame.model_dump(), **overrides})


def rotation_error_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix

    rel = axis_angle_to_rotation_matrix(a).transpose(1, 2) @ axis_angle_to_rotation_matrix(b)
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def landmarker():
    cfg = build_config("tiny").fit_flame
    with FaceLandmarker(cfg.detect_max_side, cfg.min_detection_confidence, cfg.mesh_input_px) as lm:
        yield lm


@pytest.fixture(scope="module")
def flame_arrays():
    return synthetic_flame_arrays(0)


@pytest.fixture(scope="module")
def embedding_arrays(flame_arrays, astronaut):
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        marks = mesh.process(astronaut).multi_face_landmarks[0].landmark
    points = np.array([[p.x * 512, p.y * 512, p.z * 512] for p in marks])
    return synthetic_mediapipe_embedding(flame_arrays, points)


@pytest.fixture(scope="module")
def embedding(embedding_arrays) -> LandmarkEmbedding:
    return LandmarkEmbedding(
        torch.as_tensor(embedding_arrays["lmk_face_idx"]),
        torch.as_tensor(embedding_arrays["lmk_b_coords"], dtype=torch.float32),
        torch.as_tensor(embedding_arrays["landmark_indices"]),
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, flame_arrays, embedding_arrays) -> Path:
    root = tmp_path_factory.mktemp("assets")
    (root / spec("flame_model").path).parent.mkdir(parents=True, exist_ok=True)
    write_flame_pickle(root / spec("flame_model").path, flame_arrays)
    np.savez(root / spec("mediapipe_embedding").path, **embedding_arrays)
    (root / "bundle.json").write_text(json.dumps({"synthetic": True, "profile": "tiny"}))
    return root


@pytest.fixture(scope="module")
def bundle_with_motion(tmp_path_factory, bundle) -> Path:
    root = tmp_path_factory.mktemp("assets_motion")
    for rel in (spec("flame_model").path, spec("mediapipe_embedding").path, "bundle.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((bundle / rel).read_bytes())
    torch.manual_seed(0)
    weights = root / spec("pdfgc").path
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(PDFGCMotionEncoder(PDFGCConfig.tiny()).state_dict(), weights)
    return root


def _jpeg_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------------------- config


def test_config_defaults_follow_the_paper_and_tiny_is_small():
    paper, small = FitFlameConfig(), build_config("tiny").fit_flame
    assert paper.frames_per_clip == 50 and paper.crop_size == 512
    assert paper.n_shape == 300 and paper.n_expression == 100
    assert small.crop_size < paper.crop_size and small.iterations_full < paper.iterations_full
    with pytest.raises(ValueError):
        FitFlameConfig(unknown_field=1)
    with pytest.raises(ValueError):
        FitFlameConfig(max_failure_ratio=1.5)
    assert paper.fingerprint() != FitFlameConfig(iterations_full=1).fingerprint()


def test_params_file_overrides_the_profile(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: paper\nfit_flame:\n  frames_per_clip: 7\n")
    cfg = resolve_config(None, params)
    assert cfg.frames_per_clip == 7 and cfg.crop_size == 512
    params.write_text("fit_flame:\n  frames_per_clip: -1\n")
    with pytest.raises(ValueError, match="frames_per_clip"):
        resolve_config(None, params)


# ------------------------------------------------------------------------------------ alignment


def test_pos_fit_recovers_scale_and_translation():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    projected = 2.5 * POS_REFERENCE_3D @ q[:2].T + np.array([100.0, -40.0])
    t, s = pos_fit(projected)
    np.testing.assert_allclose(t, [100.0, -40.0], atol=1e-9)
    assert s == pytest.approx(2.5, rel=1e-9)


def test_alignment_puts_eye_centres_where_the_crop_says(astronaut, landmarker):
    cfg = FitFlameConfig()  # paper framing at 512
    face = landmarker(astronaut)
    center, scale = pos_crop_params(face.ibug68(), astronaut.shape[0])
    transform = crop_transform(center, scale, 512, cfg.crop_pos_scale, cfg.crop_pos_center)
    crop = crop_image(astronaut, transform)
    assert crop.shape == (512, 512, 3)
    again = landmarker(crop)
    expected_eyes = five_points(transform.apply(face.ibug68()))[:2]
    found_eyes = five_points(again.ibug68())[:2]
    assert np.abs(found_eyes - expected_eyes).max() < 3.0  # px at 512
    # The crop's own 5-point POS lands on the configured framing.
    center2, scale2 = pos_crop_params(again.ibug68(), 512)
    assert np.abs(center2 - np.array(cfg.crop_pos_center)).max() < 4.0
    assert scale2 == pytest.approx(cfg.crop_pos_scale, rel=0.03)


def test_crop_replicates_edge_pixels_outside_the_photo():
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))  # x-gradient
    transform = CropTransform(scale=1.0, center=(0.0, 32.0), anchor=(32.0, 32.0), size=64)
    crop = crop_image(ramp, transform)
    assert (crop[:, :28] == ramp[0, 0]).all()  # left of the photo: its first column, repeated
    np.testing.assert_allclose(crop[:, 40:60, 0].astype(int), ramp[:, 8:28, 0].astype(int), atol=2)


def test_one_euro_filter_steadies_jitter_and_keeps_constants():
    f = OneEuroFilter(min_cutoff=1e-3, beta=0.05)
    assert all(np.allclose(f(float(t), np.array([5.0, 5.0])), 5.0) for t in range(5))
    rng = np.random.default_rng(0)
    noisy = 100 + rng.normal(scale=2.0, size=(40, 2))
    g = OneEuroFilter(min_cutoff=1e-3, beta=0.05)
    smooth = np.stack([g(float(t), x) for t, x in enumerate(noisy)])
    assert smooth[10:].std() < 0.75 * noisy[10:].std()


# -------------------------------------------------------------------------------------- fitting


def test_fit_recovers_known_pose_expression_and_camera(flame_arrays, embedding):
    """Well-posed case (as many coefficients as the truth uses). The synthetic head is nearly an
    ellipsoid, so pitch / yaw hide in a shallow valley against shape: about a degree is what 300
    L-BFGS steps reach, at a tenth of a pixel of landmark error."""
    cfg = tiny(n_shape=10, n_expression=10)
    targets, truth = random_fit_problem(flame_arrays, embedding, batch=6, size=cfg.crop_size)
    fit = FlameFitter(flame_arrays, embedding, cfg)(targets, cfg.crop_size)
    labels = fit.labels
    cam2world, intrinsics = split_camera_label(labels)
    world2cam = torch.linalg.inv(cam2world)
    rotation_error = rotation_error_deg(labels[:, LabelLayout.NECK_POSE], truth["head"])
    assert rotation_error.max() < 1.5 and rotation_error.mean() < 0.75
    assert ((world2cam[:, :3, 3] - truth["translation"]).norm(dim=-1) < 0.05).all()  # ~1% of the distance
    assert ((labels[:, LabelLayout.JAW_POSE] - truth["jaw"]).norm(dim=-1) < 0.02).all()
    expression_error = (labels[:, LabelLayout.EXPRESSION][:, :10] - truth["expression"][:, :10]).abs()
    assert expression_error.mean() < 0.05 and expression_error.max() < 0.2
    assert (fit.reprojection_px < 0.5).all()
    # Official label conventions: normalised 12° intrinsics; the neck slot holds the camera rotation.
    torch.testing.assert_close(intrinsics, intrinsics_normalized().expand(6, 3, 3))
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix

    torch.testing.assert_close(world2cam[:, :3, :3], axis_angle_to_rotation_matrix(labels[:, LabelLayout.NECK_POSE]),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_full_basis_fit_matches_landmarks_and_label_rerenders_them(flame_arrays, embedding):
    """All 300 + 100 coefficients (under-determined: the priors pick one): sub-pixel fit, and the
    437-float label alone reproduces the fitted landmarks through the full FLAME mesh."""
    cfg = tiny()
    targets, _ = random_fit_problem(flame_arrays, embedding, batch=4, size=cfg.crop_size, seed=1)
    fit = FlameFitter(flame_arrays, embedding, cfg)(targets, cfg.crop_size)
    assert (fit.reprojection_px < 1.0).all()
    labels = fit.labels
    assert torch.isfinite(labels).all() and labels.shape == (4, 437)
    flame = FlameLayer(flame_arrays)
    out = flame(
        labels[:, LabelLayout.SHAPE],
        labels[:, LabelLayout.EXPRESSION],
        jaw_pose=labels[:, LabelLayout.JAW_POSE],
        eye_pose=labels[:, LabelLayout.EYE_POSE],
    )
    world = FLAME_TO_WORLD * landmarks_from_vertices(out.vertices, flame.faces, embedding)
    cam2world, intrinsics = split_camera_label(labels)
    w2c = torch.linalg.inv(cam2world)
    cam = world @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    u = intrinsics[:, None, 0, 0] * cam[..., 0] / -cam[..., 2] + intrinsics[:, None, 0, 2]
    v = 1 - (intrinsics[:, None, 1, 1] * cam[..., 1] / -cam[..., 2] + intrinsics[:, None, 1, 2])
    rerendered = torch.stack([u, v], -1) * cfg.crop_size
    torch.testing.assert_close(rerendered, fit.projected, atol=1e-2, rtol=0)


def test_landmark_subset_flame_is_exact(flame_arrays, embedding):
    sub, triangles = landmark_flame_arrays(flame_arrays, embedding.face_idx.numpy())
    full, small = FlameLayer(flame_arrays), FlameLayer(sub)
    g = torch.Generator().manual_seed(3)
    kw = dict(shape=torch.randn(2, 300, generator=g), expression=torch.randn(2, 100, generator=g),
              jaw_pose=0.3 * torch.randn(2, 3, generator=g), eye_pose=0.3 * torch.randn(2, 6, generator=g))  # fmt: skip
    expected = landmarks_from_vertices(full(**kw).vertices, full.faces, embedding)
    local = LandmarkEmbedding(torch.arange(embedding.n_landmarks), embedding.bary)
    got = landmarks_from_vertices(small(**kw).vertices, torch.as_tensor(triangles), local)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_frames_of_a_clip_share_one_shape(flame_arrays, embedding):
    cfg = tiny(iterations_camera=5, iterations_full=10)
    targets, _ = random_fit_problem(flame_arrays, embedding, batch=4, size=cfg.crop_size, seed=2)
    labels = FlameFitter(flame_arrays, embedding, cfg)(targets, cfg.crop_size, torch.tensor([0, 0, 1, 1])).labels
    shape = labels[:, LabelLayout.SHAPE]
    assert torch.equal(shape[0], shape[1]) and torch.equal(shape[2], shape[3])
    assert not torch.equal(shape[0], shape[2])


# ------------------------------------------------------------------------------ decoding inputs


def test_truncated_jpeg_fails_with_reason(tmp_path, astronaut):
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg_bytes(astronaut)[:5000])
    with pytest.raises(ItemFailure, match="truncated or corrupt"):
        decode_image(path, 10**8)


@pytest.mark.parametrize("content", [b"just some text, not pixels\n", b""])
def test_non_image_named_png_fails_with_reason(tmp_path, content):
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(ItemFailure, match="not a decodable image"):
        decode_image(path, 10**8)


def test_grayscale_is_converted_or_refused(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(path)
    image = decode_image(path, 10**8)
    assert image.rgb.shape == (20, 30, 3) and (image.rgb == 77).all()
    assert "grayscale" in image.notes[0]
    with pytest.raises(ItemFailure, match="grayscale"):
        decode_image(path, 10**8, reject_grayscale=True)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    image = decode_image(path, 10**8)
    assert image.rgb.shape == (12, 16, 3) and "CMYK" in image.notes[0]
    assert image.rgb[..., 0].mean() > 200 and image.rgb[..., 1:].mean() < 60


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (10, 20, 30, 255)  # top opaque, bottom fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = decode_image(path, 10**8)
    assert (image.rgb[:4] == (10, 20, 30)).all() and (image.rgb[4:] == 255).all()
    assert "alpha" in image.notes[0]


def test_16bit_png_keeps_its_range(tmp_path):
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(gray16)
    image = decode_image(gray16, 10**8)
    assert image.rgb[0, :, 0].tolist() == [0, 128, 255]
    cv2 = pytest.importorskip("cv2")
    rgb16 = np.zeros((4, 4, 3), np.uint16)
    rgb16[..., 0] = 65535  # red at 16 bits
    color16 = tmp_path / "color16.png"
    cv2.imwrite(str(color16), rgb16[..., ::-1])  # cv2 writes BGR
    image = decode_image(color16, 10**8)
    assert (image.rgb[..., 0] == 255).all() and (image.rgb[..., 1:] == 0).all()


def test_exif_rotation_is_applied(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = decode_image(path, 10**8)
    assert image.rgb.shape == (60, 40, 3)
    assert image.rgb[:10, -10:, 0].mean() > 200  # top-left moved to the top-right
    assert "EXIF orientation 6" in image.notes[0]


def test_huge_images_are_decoded_small_or_refused(tmp_path):
    big = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    jpg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    jpg.write_bytes(_jpeg_bytes(big))
    Image.fromarray(big).save(png)
    image = decode_image(jpg, max_pixels=20_000)  # JPEG: DCT-domain downscale, memory stays bounded
    assert image.rgb.shape[0] * image.rgb.shape[1] <= 20_000 and "decoded 800x800" in image.notes[0]
    with pytest.raises(ItemFailure, match="MP limit"):
        decode_image(png, max_pixels=20_000)


def test_decompression_bomb_header_is_refused(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10 gigapixels, RGB
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(ItemFailure, match="too large"):
        decode_image(path, 10**8)


def test_unreadable_video_fails_with_reason(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a movie")
    with pytest.raises(ItemFailure, match="unreadable video"):
        decode_clip(path, 4, 10**8)


def test_frames_are_sampled_evenly():
    assert sample_indices(6, 4) == [0, 2, 3, 5]
    assert sample_indices(3, 50) == [0, 1, 2]


# ------------------------------------------------------------------------------------ landmarks


def test_no_face_and_tiny_face_are_refused(landmarker, astronaut):
    with pytest.raises(ItemFailure, match="no face detected"):
        landmarker(np.full((256, 256, 3), 128, np.uint8))
    canvas = np.full((256, 256, 3), 120, np.uint8)
    canvas[20:148, 30:158] = np.asarray(Image.fromarray(astronaut).resize((128, 128), Image.LANCZOS))
    with pytest.raises(ItemFailure, match=r"face too small: \d+ px < min_face_px 48"):
        landmarker(canvas, 48.0)


def test_several_faces_take_the_largest(landmarker, astronaut):
    canvas = np.full((512, 1024, 3), 120, np.uint8)
    canvas[:, :512] = astronaut
    canvas[:320, 512:832] = np.asarray(Image.fromarray(astronaut[:, ::-1]).resize((320, 320), Image.LANCZOS))
    face = landmarker(canvas)
    assert face.n_faces == 2
    assert face.points[:, 0].max() < 512  # landmarks on the big (left) face


# ---------------------------------------------------------------------------------------- stage


def _image_inputs(root: Path, astronaut: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(astronaut).save(root / "astronaut.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(root / "flat_gray.jpg")
    (root / "text.png").write_text("not an image")
    (root / "cut.jpg").write_bytes(_jpeg_bytes(astronaut)[:4000])
    (root / "notes.txt").write_text("a stray file")
    (root / ".DS_Store").write_bytes(b"\x00")  # hidden: never an input


def test_stage_writes_one_row_per_input_and_resumes(tmp_path, bundle_with_motion, astronaut):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _image_inputs(inputs, astronaut)
    cfg = tiny(max_failure_ratio=1.0)
    result = run(cfg, str(inputs), bundle_with_motion, out, progress=False)
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    rows = {r["id"]: r for r in table}
    assert len(table) == 5 and result.n_items == 5 and result.n_ok == 1
    assert rows["astronaut"]["status"] == "ok" and rows["astronaut"]["label_row"] == 0
    assert rows["flat_gray"]["reason"] == "no face detected"
    assert "not a decodable image" in rows["text"]["reason"]
    assert "truncated or corrupt" in rows["cut"]["reason"]
    assert "unsupported file type '.txt'" in rows["notes"]["reason"]
    assert all(r["label_row"] == -1 for r in table if r["status"] == "failed")
    assert rows["astronaut"]["sha256"] == hashlib.sha256((inputs / "astronaut.png").read_bytes()).hexdigest()
    assert rows["astronaut"]["reprojection_px"] < cfg.max_reprojection_px

    labels = np.load(out / "labels.npy")
    assert labels.shape == (1, 437) and labels.dtype == np.float32 and np.isfinite(labels).all()
    intrinsics = intrinsics_normalized().reshape(-1).numpy()
    np.testing.assert_allclose(labels[0, LabelLayout.INTRINSICS], intrinsics, atol=1e-6)
    assert np.load(out / "landmarks.npy").shape == (1, 478, 2)
    motion = np.load(out / "motion.npy")
    assert motion.shape == (1, PDFGCConfig.tiny().motion_dim) and np.isfinite(motion).all()
    crop = Image.open(out / rows["astronaut"]["crop_path"])
    assert crop.size == (cfg.crop_size, cfg.crop_size)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic_assets"] is True and summary["failed"] == 4

    # Same inputs and config: every input is reused, outputs are identical.
    again = run(cfg, str(inputs), bundle_with_motion, out, progress=False)
    assert again.n_reused_inputs == 5
    np.testing.assert_array_equal(np.load(out / "labels.npy"), labels)
    # A changed input is redone; the others are still reused.
    Image.fromarray(astronaut[:, ::-1].copy()).save(inputs / "astronaut.png")
    changed = run(cfg, str(inputs), bundle_with_motion, out, progress=False)
    assert changed.n_reused_inputs == 4
    assert not np.array_equal(np.load(out / "labels.npy"), labels)
    assert not list(out.rglob("*.tmp"))


def test_failure_ratio_exits_non_zero_with_counts(tmp_path, bundle, astronaut, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    _image_inputs(inputs, astronaut)
    code = main(["fit-flame", "--input", str(inputs), "--assets", str(bundle), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == FailureRatioExceeded.exit_code != 0
    assert "4 of 5 items failed" in err and "no face detected" in err
    assert len(pq.read_table(out / "manifest.parquet")) == 5  # written before failing
    assert not (out / "motion.npy").exists()  # no PD-FGC asset -> no motion features
    assert load_params(out / "config.yaml") == build_config("tiny")  # the run's resolved config, kept with it


def test_crash_leaves_no_partial_outputs_and_resume_finishes(tmp_path, bundle, astronaut, monkeypatch):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(astronaut).save(inputs / "a.png")
    Image.fromarray(astronaut[:, ::-1].copy()).save(inputs / "b.png")
    cfg = tiny(iterations_camera=5, iterations_full=10)
    calls = {"n": 0}
    original = FlameFitter.forward

    def crash_on_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # like a kill: not an item failure
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FlameFitter, "forward", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, str(inputs), bundle, out, batch=1, progress=False)
    assert not (out / "manifest.parquet").exists() and not (out / "labels.npy").exists()
    assert not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in (out / "items").glob("*.npz")) == ["a.npz"]
    monkeypatch.setattr(FlameFitter, "forward", original)
    result = run(cfg, str(inputs), bundle, out, batch=1, progress=False)
    assert result.n_reused_inputs == 1 and result.n_ok == 2


def _write_clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_clips_give_one_row_per_sampled_frame(tmp_path, bundle, astronaut):
    inputs, out = tmp_path / "clips", tmp_path / "out"
    inputs.mkdir()
    base = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))
    frames = [np.roll(base, shift=2 * i, axis=1) for i in range(6)]  # a slow pan
    _write_clip(inputs / "talk.mp4", frames)
    (inputs / "broken.mov").write_bytes(b"not a video at all")
    cfg = tiny(frames_per_clip=4, max_failure_ratio=1.0)
    result = run(cfg, str(inputs), bundle, out, video=True, progress=False)
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    clip_rows = [r for r in table if r["clip_id"] == "talk"]
    assert [r["frame_index"] for r in clip_rows] == [0, 2, 3, 5]
    assert all(r["status"] == "ok" for r in clip_rows) and result.n_ok == 4
    broken = [r for r in table if r["clip_id"] == "broken"]
    assert len(broken) == 1 and broken[0]["frame_index"] is None and "unreadable video" in broken[0]["reason"]
    labels = np.load(out / "labels.npy")
    assert labels.shape == (4, 437) and np.isfinite(labels).all()
    shape = labels[:, LabelLayout.SHAPE]
    assert (shape == shape[:1]).all()  # one shape per clip
    for r in clip_rows:
        assert (out / r["crop_path"]).is_file()


# ------------------------------------------------------------------------------------------- S3


@pytest.fixture()
def s3_server(monkeypatch):
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("moto_server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_prefix_input(tmp_path, bundle, astronaut, s3_server):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="raw")
    png = io.BytesIO()
    Image.fromarray(astronaut).save(png, format="PNG")
    s3.put_object(Bucket="raw", Key="ffhq/batch1/astronaut.png", Body=png.getvalue())
    s3.put_object(Bucket="raw", Key="ffhq/batch1/broken.jpg", Body=b"nope")
    result = run(tiny(max_failure_ratio=1.0), "s3://raw/ffhq/", bundle, tmp_path / "out", progress=False)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert set(rows) == {"batch1__astronaut", "batch1__broken"} and result.n_ok == 1
    assert rows["batch1__astronaut"]["source"] == "s3://raw/ffhq/batch1/astronaut.png"
    assert rows["batch1__astronaut"]["sha256"] == hashlib.sha256(png.getvalue()).hexdigest()
    assert "not a decodable image" in rows["batch1__broken"]["reason"]
    assert not list((tmp_path / "out").rglob(".download/*"))  # downloads are cleaned up


def test_worker_processes_give_the_same_outputs(tmp_path, bundle, astronaut):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(astronaut).save(inputs / "a.png")
    Image.fromarray(astronaut[:, ::-1].copy()).save(inputs / "b.jpg")
    (inputs / "c.png").write_text("not an image")
    cfg = tiny(iterations_camera=5, iterations_full=20, max_failure_ratio=1.0)
    serial = run(cfg, str(inputs), bundle, tmp_path / "serial", progress=False)
    parallel = run(cfg, str(inputs), bundle, tmp_path / "parallel", progress=False, workers=2)
    assert (serial.n_ok, serial.n_failed) == (parallel.n_ok, parallel.n_failed) == (2, 1)
    rows = [pq.read_table(tmp_path / d / "manifest.parquet").select(["id", "status", "reason"]).to_pylist()
            for d in ("serial", "parallel")]  # fmt: skip
    assert rows[0] == rows[1]
    np.testing.assert_allclose(np.load(tmp_path / "serial" / "landmarks.npy"),
                               np.load(tmp_path / "parallel" / "landmarks.npy"), atol=1e-3)  # fmt: skip
    assert np.isfinite(np.load(tmp_path / "parallel" / "labels.npy")).all()

"""The inference engine (Animator) and `p4d animate` on the tiny profile, CPU, with a real face photo."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from components.animate import Animator, AnimateError, ModelLoadError, NoFaceError
from components.animate.engine import Motion, to_network_image
from components.animate.smoothing import jitter
from components.animate.video import write_video
from model.cameras import LabelLayout
from pipelines.cli import main

PHOTO = skimage.data.astronaut()  # public domain (NASA), ships inside scikit-image


def zoom_frames(n: int = 6, size: int = 256) -> list[np.ndarray]:
    """A slow zoom on the photo: a stand-in for a driving clip."""
    return [np.asarray(Image.fromarray(PHOTO[3 * i: 512 - 3 * i, 3 * i: 512 - 3 * i]).resize((size, size)))
            for i in range(n)]


def blank(size: int = 256) -> np.ndarray:
    return np.full((size, size, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def animator(tiny_model):
    a = Animator.load(tiny_model["psi"], tiny_model["assets"])
    yield a
    a.close()


def test_cuda_only_engine_options_leave_a_cpu_animator_eager(tiny_model):
    """animate.fused_field / animate.compile ask for CUDA work; on the CPU the Animator loads and renders eagerly."""
    from components.config.animate import AnimateConfig

    a = Animator.load(tiny_model["psi"], tiny_model["assets"], "cpu",
                      options=AnimateConfig(fused_field=True, compile=True))
    try:
        assert a.psi.fused_field is False
        assert not any(hasattr(m, "_compiled_call_impl") and m._compiled_call_impl is not None
                       for m in a.psi.modules())
    finally:
        a.close()


@pytest.fixture(scope="module")
def source(animator):
    return animator.prepare_source(PHOTO)


@pytest.fixture(scope="module")
def driving(animator):
    return animator.driving_motion(zoom_frames())


def test_render_gives_one_uint8_frame_per_driving_frame_at_psi_size(animator, source, driving):
    out = animator.render(source, driving)
    assert out.shape == (6, 64, 64, 3) and out.dtype == np.uint8
    assert driving.valid.all() and driving.motion.shape == (6, animator.motion_dim)
    # landmarks are in pixels of the 256² input frames: the face is in the middle of the zoom
    assert np.all((driving.landmarks > 0) & (driving.landmarks < 256))


def test_renders_are_deterministic_and_independent_of_batching(animator, source, driving):
    a = animator.render(source, driving, batch=6)
    np.testing.assert_array_equal(a, animator.render(source, driving, batch=6))
    # other batch sizes take other BLAS blockings: float round-off may flip a rounding by one level, no more
    b = animator.render(source, driving, batch=1)
    assert np.abs(a.astype(int) - b).max() <= 1


def test_the_three_model_forms_load_to_identical_renders(tiny_model, animator, source, driving):
    reference = animator.render(source, driving)
    for form in (tiny_model["weights"], tiny_model["package"]):
        other = Animator.load(form, tiny_model["assets"])
        try:
            # the network of each form renders the same Source / Motion bit for bit
            np.testing.assert_array_equal(other.render(source, driving), reference)
            # and the whole path (alignment, FLAME fit, motion, encoding) agrees: the CPU FLAME fit may differ by
            # float round-off between calls in one process, which moves a pixel by at most a level or two
            again = other.render(other.prepare_source(PHOTO), other.driving_motion(zoom_frames()))
            assert np.abs(again.astype(int) - reference).max() <= 2
        finally:
            other.close()


def test_a_package_needs_no_asset_folder_and_says_what_it_holds(tiny_model):
    info = json.loads((tiny_model["package"] / "animator.json").read_text())
    assert info["profile"] == "tiny" and info["image_size"] == 64 and info["synthetic_assets"] is True
    assert {"flame_model", "mediapipe_embedding", "pdfgc"} <= set(info["assets"])
    a = Animator.load(tiny_model["package"])
    assert a.neural_rendering_resolution == 32  # psi.neural_resolution of tiny: what Ψ trains at
    a.close()


def test_render_with_the_sources_own_motion_and_camera_reproduces_the_forward_pass(animator, source):
    own = Motion(source.motion[None], source.label[None], source.crop[None], np.full((1, 478, 2), np.nan, np.float32),
                 np.ones(1, bool), [None])
    rendered = animator.render(source, own)
    psi, dev = animator.psi, animator.device
    label = torch.from_numpy(source.label[None]).float()
    cond = animator.conditioner(label)  # the training path: split the neck off the label's camera itself
    image = to_network_image(_aligned_crop(animator), animator.image_size, dev)
    motion = torch.from_numpy(source.motion[None])
    with torch.no_grad():
        out = psi(image, motion, motion, cond.c_render, animator.neural_rendering_resolution, cond.deform_fn)
    expected = ((out["image"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(rendered, expected)


def _aligned_crop(animator) -> np.ndarray:
    from components.fit_flame.prepare import align_image

    return align_image(PHOTO, animator.landmarker, animator.fit_cfg).crop[None]


def test_camera_and_neck_modes_change_the_render_as_described(animator, source, driving):
    base = animator.render(source, driving)
    orbit = animator.render(source, driving, camera="orbit")
    fixed_left = animator.render(source, driving, camera="fixed", yaw=0.6)
    fixed_right = animator.render(source, driving, camera="fixed", yaw=-0.6)
    assert not np.array_equal(fixed_left, fixed_right)
    assert not np.array_equal(base, orbit)
    labels, cams = animator.frame_conditions(source, driving, camera="source", neck="none")
    np.testing.assert_allclose(cams, np.repeat(source.label[None, :25], len(driving), 0), atol=1e-6)
    assert np.all(labels[:, LabelLayout.NECK_POSE] == 0)
    assert np.all(labels[:, LabelLayout.SHAPE] == source.label[LabelLayout.SHAPE])  # the source's identity
    labels, _ = animator.frame_conditions(source, driving, neck="source")
    np.testing.assert_array_equal(labels[:, LabelLayout.NECK_POSE],
                                  np.repeat(source.label[None, LabelLayout.NECK_POSE], len(driving), 0))
    orbit_cams = animator.orbit_cameras(48)
    yaws = np.arctan2(-orbit_cams[:, 3], orbit_cams[:, 11])  # camera position x, z
    assert yaws.max() == pytest.approx(0.78, abs=0.02) and yaws.min() == pytest.approx(-0.78, abs=0.02)
    with pytest.raises(AnimateError, match="fixed' needs --yaw"):
        animator.frame_conditions(source, driving, camera="fixed")


def test_temporal_smoothing_reduces_frame_to_frame_jitter(animator):
    """A still head filmed with sensor noise: landmarks, motion and the FLAME fit wobble from frame to frame."""
    rng = np.random.default_rng(0)
    base = PHOTO[40:440, 56:456].astype(float)
    frames = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    raw = animator.driving_motion(frames, smooth=False)
    smooth = animator.driving_motion(frames, smooth=True)
    factors = {
        "motion": jitter(smooth.motion) / jitter(raw.motion),
        "expression": jitter(smooth.labels[:, LabelLayout.EXPRESSION]) / jitter(raw.labels[:, LabelLayout.EXPRESSION]),
        "camera": jitter(smooth.labels[:, LabelLayout.CAM2WORLD]) / jitter(raw.labels[:, LabelLayout.CAM2WORLD]),
    }
    print("jitter kept after smoothing:", {k: round(v, 2) for k, v in factors.items()})  # measured: .26 .44 .37
    assert all(v < 0.6 for v in factors.values()), factors


def test_driving_frames_without_a_face_hold_the_last_good_motion(animator):
    frames = zoom_frames(4)
    frames[2] = blank()
    motion = animator.driving_motion(frames, smooth=False)
    assert motion.valid.tolist() == [True, True, False, True]
    assert motion.reasons[2] == "no face detected"
    np.testing.assert_array_equal(motion.motion[2], motion.motion[1])
    assert np.isnan(motion.landmarks[2]).all()
    with pytest.raises(NoFaceError, match="no usable face in any of the 2 frames"):
        animator.driving_motion([blank(), blank()])


def test_no_face_in_the_source_is_a_clear_error(animator):
    with pytest.raises(NoFaceError, match="source image: no face detected"):
        animator.prepare_source(blank())
    with pytest.raises(AnimateError, match="expected an RGB uint8 image"):
        animator.prepare_source(np.zeros((64, 64), np.float32))


def test_motion_vectors_are_checked(animator, source):
    with pytest.raises(AnimateError, match=r"motion: expected shape \(N, 100\)"):
        animator.motion_from_vectors(np.zeros((2, 7), np.float32))
    with pytest.raises(AnimateError, match="NaN or infinite"):
        animator.motion_from_vectors(np.full((1, animator.motion_dim), np.nan, np.float32))
    motion = animator.motion_from_vectors(source.motion[None], source.label[None, :25], source=source)
    assert animator.render(source, motion).shape == (1, 64, 64, 3)


# ------------------------------------------------------------------------------------------ model forms


def test_model_paths_that_are_none_of_the_accepted_forms(tmp_path, tiny_model):
    with pytest.raises(ModelLoadError, match="no such file or folder, and not an MLflow URI"):
        Animator.load(tmp_path / "nothing", tiny_model["assets"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="a folder without Ψ weights"):
        Animator.load(tmp_path / "empty", tiny_model["assets"])
    pkl = tmp_path / "psi.pkl"
    pkl.write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="import official pickles first"):
        Animator.load(pkl, tiny_model["assets"])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        Animator.load(junk, tiny_model["assets"])
    with pytest.raises(ModelLoadError, match="not a model package, so the asset folder is needed"):
        Animator.load(tiny_model["psi"])


def test_weights_whose_sizes_do_not_match_their_config_are_refused(tmp_path, tiny_model):
    import safetensors.torch

    from components.assets.networks import build_network

    cfg = tiny_model["config"].networks.psi.model_copy(update={"detail_channels": 12})
    state = safetensors.torch.load_file(str(tiny_model["weights"]))
    path = tmp_path / "psi.safetensors"
    safetensors.torch.save_file(state, str(path), metadata={"network": "psi", "config": json.dumps(
        cfg.model_dump(mode="json"))})
    with pytest.raises(ModelLoadError, match="do not match the network sizes stored with the weights"):
        Animator.load(path, tiny_model["assets"])
    psi3d = build_network("psi3d", tiny_model["config"])
    safetensors.torch.save_file({k: v.contiguous() for k, v in psi3d.state_dict().items()}, str(path), metadata={
        "network": "psi3d", "config": json.dumps(psi3d.cfg.model_dump(mode="json"))})
    with pytest.raises(ModelLoadError, match="not Ψ"):
        Animator.load(path, tiny_model["assets"])


def test_official_import_sidecar_gives_the_paper_network(tmp_path, tiny_model):
    """An import sidecar of kind psi means the paper-size network; tiny tensors under it are refused by name."""
    weights = tmp_path / "portrait4d-v2-vfhq512.safetensors"
    import safetensors.torch

    state = safetensors.torch.load_file(str(tiny_model["weights"]))
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt", "kind": "psi"})
    sidecar = {"format": "p4d-official-import", "format_version": 1, "kind": "psi", "key_list": "psi",
               "network": "G_ema", "neural_rendering_resolution": 128}
    weights.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="weights lack .* keys of the Ψ network they declare"):
        Animator.load(weights, tiny_model["assets"])


# --------------------------------------------------------------------------------------------- the CLI


def _write_clip(path: Path, frames: list[np.ndarray], fps: int = 10, audio: bool = False) -> Path:
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        sound = out.add_stream("aac", rate=16000) if audio else None
        for f in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            t = np.arange(16000 * len(frames) // fps) / 16000
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for i in range(0, samples.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(samples[:, i:i + 1024], format="fltp", layout="mono")
                frame.sample_rate = 16000
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def _decode(path: Path) -> tuple[list[np.ndarray], bool, float]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return frames, bool(c.streams.audio), float(c.streams.video[0].average_rate)


def test_cli_writes_a_video_with_the_driving_frame_count_audio_and_a_frame_record(tmp_path, tiny_model, capsys):
    src = tmp_path / "source.png"
    Image.fromarray(PHOTO).save(src)
    frames = zoom_frames(5)
    frames[3] = blank()
    clip = _write_clip(tmp_path / "driving.mp4", frames, audio=True)
    out = tmp_path / "out.mp4"
    code = main(["animate", "--model", str(tiny_model["package"]), "--source", str(src), "--driving", str(clip),
                 "--out", str(out), "--side-by-side", "--frames", str(tmp_path / "frames")])
    assert code == 0
    decoded, has_audio, fps = _decode(out)
    assert len(decoded) == 5 and decoded[0].shape == (64, 192, 3) and has_audio and fps == 10
    assert len(list((tmp_path / "frames").glob("*.png"))) == 5
    record = json.loads(out.with_suffix(".frames.json").read_text())
    assert [f["face"] for f in record["per_frame"]] == [True, True, True, False, True]
    assert record["per_frame"][3]["reason"] == "no face detected"
    err = capsys.readouterr().err
    assert "1 of 5 driving frames had no usable face" in err


def test_cli_orbit_of_a_single_image_is_a_turntable(tmp_path, tiny_model):
    src = tmp_path / "source.png"
    Image.fromarray(PHOTO).save(src)
    out = tmp_path / "turntable.mp4"
    assert main(["animate", "--model", str(tiny_model["package"]), "--source", str(src), "--driving", str(src),
                 "--camera", "orbit", "--out", str(out)]) == 0
    decoded, _, _ = _decode(out)
    assert len(decoded) == 48
    # the view turns (random tiny weights: a small but real change of the picture)
    assert np.abs(decoded[0].astype(int) - decoded[12]).mean() > 0.5


@pytest.mark.parametrize("case", ["no_face", "unreadable_video", "empty_folder", "bad_model", "not_mp4"])
def test_cli_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, tiny_model, capsys, case):
    src = tmp_path / "source.png"
    Image.fromarray(PHOTO).save(src)
    driving = src
    model = str(tiny_model["package"])
    out = tmp_path / "out.mp4"
    expected = {
        "no_face": "source image: no face detected",
        "unreadable_video": "unreadable video",
        "empty_folder": "the folder holds no images",
        "bad_model": "no such file or folder, and not an MLflow URI",
        "not_mp4": "must end in .mp4",
    }[case]
    if case == "no_face":
        Image.fromarray(blank()).save(src)
    elif case == "unreadable_video":
        driving = tmp_path / "broken.mp4"
        driving.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    elif case == "empty_folder":
        driving = tmp_path / "frames"
        driving.mkdir()
    elif case == "bad_model":
        model = str(tmp_path / "missing-model")
    else:
        out = tmp_path / "out.avi"
    code = main(["animate", "--model", model, "--source", str(src), "--driving", str(driving), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert expected in err[-1] and err[-1].startswith("p4d animate: error:")
    assert not out.exists() and not out.with_suffix(".frames.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_several_faces_in_the_source_take_the_largest_with_a_warning(animator, caplog):
    small = np.asarray(Image.fromarray(PHOTO).resize((320, 320)))
    canvas = np.full((512, 900, 3), 255, np.uint8)
    canvas[:, :512] = PHOTO
    canvas[96:416, 560:880] = small
    with caplog.at_level("WARNING"):
        src = animator.prepare_source(canvas)
    assert any("faces detected; used the largest" in note for note in src.notes)


def test_write_video_pads_odd_sizes_and_is_atomic(tmp_path):
    frames = np.zeros((3, 33, 35, 3), np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames, 5)
    decoded, _, _ = _decode(path)
    assert decoded[0].shape == (34, 36, 3) and len(decoded) == 3
    with pytest.raises(AnimateError, match="no frames to write"):
        write_video(tmp_path / "none.mp4", [], 5)
    assert not (tmp_path / "none.mp4").exists()

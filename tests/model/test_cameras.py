import math

import pytest
import torch

from model.cameras import (
    FOCAL_NORMALIZED,
    LABEL_DIM,
    CameraDistribution,
    LabelLayout,
    cam2world_angles,
    camera_label,
    intrinsics_normalized,
    look_at_cam2world,
    pitch_yaw_roll_cam2world,
    sample_cameras,
    split_camera_label,
)


def test_focal_is_one_over_two_tan_six_degrees():
    assert FOCAL_NORMALIZED == pytest.approx(1 / (2 * math.tan(math.radians(6))))
    assert FOCAL_NORMALIZED == pytest.approx(4.7572, abs=1e-4)
    k = intrinsics_normalized()
    assert k[0, 0] == pytest.approx(FOCAL_NORMALIZED) and k[1, 1] == pytest.approx(FOCAL_NORMALIZED)
    assert k[0, 2] == 0.5 and k[1, 2] == 0.5 and k[2, 2] == 1.0


def test_label_layout_tiles_437_floats_without_gaps():
    fields = sorted(LabelLayout.fields().values(), key=lambda s: s.start)
    assert fields[0].start == 0 and fields[-1].stop == LABEL_DIM
    for a, b in zip(fields, fields[1:]):
        assert a.stop == b.start
    widths = {name: s.stop - s.start for name, s in LabelLayout.fields().items()}
    assert widths == {
        "CAM2WORLD": 16, "INTRINSICS": 9, "SHAPE": 300, "EXPRESSION": 100,
        "NECK_POSE": 3, "JAW_POSE": 3, "EYE_POSE": 6,
    }


def test_frontal_camera_looks_down_minus_z_opengl():
    c2w = pitch_yaw_roll_cam2world(
        torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.tensor([4.0]), torch.zeros(1, 3)
    )
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([0.0, 0.0, 4.0]), atol=1e-5)
    # camera -z axis (third column negated) points at the origin; +y column is world up.
    assert torch.allclose(-c2w[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    assert torch.allclose(c2w[0, :3, 1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    assert torch.allclose(c2w[0, :3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)


def test_positive_pitch_looks_from_above():
    c2w = pitch_yaw_roll_cam2world(
        torch.tensor([0.5]), torch.zeros(1), torch.zeros(1), torch.tensor([4.0]), torch.zeros(1, 3)
    )
    assert c2w[0, 1, 3] > 0


def test_rotations_orthonormal_and_round_trip():
    g = torch.Generator().manual_seed(0)
    draw = sample_cameras(CameraDistribution(), 512, g)
    r = draw["cam2world"][:, :3, :3]
    eye = torch.eye(3).expand_as(r)
    assert torch.allclose(r.transpose(1, 2) @ r, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(512), atol=1e-5)
    lookat = draw["lookat"] * CameraDistribution().lookat_scale
    back = cam2world_angles(draw["cam2world"], lookat)
    for name in ("pitch", "yaw", "roll", "radius"):
        assert torch.allclose(back[name], draw[name], atol=1e-4), name
    c2w, k = split_camera_label(draw["c"])
    assert torch.equal(c2w, draw["cam2world"]) and torch.allclose(k[0], intrinsics_normalized())
    assert torch.equal(camera_label(c2w, k), draw["c"])


def test_look_at_points_camera_at_target():
    origin = torch.tensor([[1.0, 2.0, 3.0]])
    target = torch.tensor([[0.1, -0.2, 0.3]])
    c2w = look_at_cam2world(origin, target)
    view = -c2w[0, :3, 2]
    expected = (target - origin)[0] / (target - origin).norm()
    assert torch.allclose(view, expected, atol=1e-6)


def test_sampled_cameras_stay_in_and_cover_seed_ranges():
    dist = CameraDistribution()
    draw = sample_cameras(dist, 20000, torch.Generator().manual_seed(1))
    for name, (lo, hi) in {"pitch": (-0.25, 0.65), "yaw": (-0.78, 0.78), "roll": (-0.25, 0.25), "radius": (3.65, 4.45)}.items():
        v = draw[name]
        assert v.min() >= lo and v.max() <= hi, name
        span = hi - lo
        assert v.min() < lo + 0.01 * span and v.max() > hi - 0.01 * span, name  # covers the range
        assert v.mean().item() == pytest.approx((lo + hi) / 2, abs=0.02 * span), name
    lo, hi = torch.tensor(dist.lookat_min), torch.tensor(dist.lookat_max)
    assert (draw["lookat"] >= lo).all() and (draw["lookat"] <= hi).all()
    distance = (draw["cam2world"][:, :3, 3] - draw["lookat"] * dist.lookat_scale).norm(dim=-1)
    assert torch.allclose(distance, draw["radius"], atol=1e-4)


def test_same_seed_same_cameras():
    a = sample_cameras(CameraDistribution(), 16, torch.Generator().manual_seed(7))["c"]
    b = sample_cameras(CameraDistribution(), 16, torch.Generator().manual_seed(7))["c"]
    assert torch.equal(a, b)


def test_invalid_distribution_names_the_field():
    with pytest.raises(ValueError, match="pitch"):
        CameraDistribution(pitch=(0.5, -0.5))
    with pytest.raises(ValueError, match="camera label"):
        split_camera_label(torch.zeros(2, 10))

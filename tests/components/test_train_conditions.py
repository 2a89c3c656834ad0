"""What the trainers derive from 437-float labels with FLAME: cameras, neck deformation, uv map, landmarks."""

from __future__ import annotations

import pytest
import torch

from components.train.conditions import FlameConditioner, with_eye_centres
from components.train.psi import eye_box_scale
from model.cameras import LabelLayout
from model.deformation import DeformationConfig
from tests.components.test_train import fitted_labels, make_assets


@pytest.fixture(scope="module")
def conditioner(tmp_path_factory) -> FlameConditioner:
    assets = make_assets(tmp_path_factory.mktemp("assets"))
    return FlameConditioner.from_assets(assets, DeformationConfig.tiny(), 64, "cpu")


def test_without_neck_pose_the_label_camera_renders_and_nothing_deforms(conditioner):
    labels = torch.from_numpy(fitted_labels(3, neck=0.0))
    cond = conditioner(labels)
    assert cond.deform_fn is None and torch.equal(cond.c_render, labels[:, LabelLayout.CAMERA])
    assert cond.uv.shape == (3, 3, 32, 32) and cond.uv.abs().sum() > 0  # half the image size (official)
    assert cond.landmarks.shape == (3, 70, 2)


def test_a_neck_pose_moves_into_the_deformation_and_the_camera(conditioner):
    labels = torch.from_numpy(fitted_labels(2, neck=0.2))
    cond = conditioner(labels)
    assert cond.deform_fn is not None
    assert not torch.allclose(cond.c_render, cond.c_compose)
    assert torch.equal(cond.c_compose, labels[:, LabelLayout.CAMERA])
    points = torch.rand(2, 10, 3) * 0.4 - 0.2
    assert not torch.allclose(cond.deform_fn(points), points)  # the neck rotation is undone near the head
    no_neck = conditioner(labels, neck=False)
    assert no_neck.deform_fn is None and torch.equal(no_neck.c_render, labels[:, LabelLayout.CAMERA])
    camera = torch.from_numpy(fitted_labels(2, seed=5))[:, LabelLayout.CAMERA]
    given = conditioner(labels, camera=camera)
    assert torch.equal(given.c_render, camera) and given.deform_fn is not None


def test_same_head_reuses_the_mesh_and_field_and_redoes_the_camera_parts(conditioner):
    labels = torch.from_numpy(fitted_labels(2, neck=0.2))
    shape = torch.from_numpy(fitted_labels(2, seed=9))[:, LabelLayout.SHAPE]
    camera = torch.from_numpy(fitted_labels(2, seed=5))[:, LabelLayout.CAMERA]
    first = conditioner(labels, shape=shape)
    fresh = conditioner(labels, shape=shape, camera=camera)
    reused = conditioner(labels, shape=shape, camera=camera, same_head=first)
    assert reused.deform_fn is first.deform_fn  # no second nearest-triangle tabulation
    for name in ("c_render", "uv", "landmarks", "vertices"):
        assert torch.equal(getattr(reused, name), getattr(fresh, name)), name
    assert not torch.equal(reused.landmarks, first.landmarks)  # the camera-dependent parts were redone
    points = torch.rand(2, 10, 3) * 0.4 - 0.2
    assert torch.equal(reused.deform_fn(points), fresh.deform_fn(points))
    with pytest.raises(ValueError, match="same_head holds 2 heads"):
        conditioner(labels[:1], camera=camera[:1], same_head=first)


def test_source_shape_replaces_the_driving_shape(conditioner):
    labels = torch.from_numpy(fitted_labels(2))
    other = torch.from_numpy(fitted_labels(2, seed=9))[:, LabelLayout.SHAPE]
    assert not torch.allclose(conditioner(labels).landmarks, conditioner(labels, shape=other).landmarks)


def test_eye_centres_and_the_eye_box_scale():
    lm = torch.zeros(1, 68, 2)
    lm[0, 36:42] = torch.tensor([1.0, 2.0])
    lm[0, 42:48] = torch.tensor([5.0, 2.0])
    out = with_eye_centres(lm)
    assert out.shape == (1, 70, 2) and out[0, 68].tolist() == [1.0, 2.0] and out[0, 69].tolist() == [5.0, 2.0]
    # official: clamp(clamp(ratio, 0, 0.3) * 0.3 / 3 + 0.97, 0.97, 1)
    scale = eye_box_scale(torch.tensor([0.0, 0.1, 0.3, 0.9]))
    assert scale.shape == (4, 1, 1)
    assert scale.flatten().tolist() == pytest.approx([0.97, 0.98, 1.0, 1.0])

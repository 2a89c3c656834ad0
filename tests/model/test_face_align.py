import math

import pytest
import torch

from model.face_align import (
    IDENTITY_TEMPLATE_112,
    MOTION_TEMPLATE_224,
    crop_for_identity,
    crop_for_motion,
    fit_similarity,
    flip_landmarks_y,
    motion_keypoints,
    motion_template_in_crop,
)


def _similarity(points: torch.Tensor, scale: float, angle: float, shift: tuple[float, float]) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]])
    return scale * points @ rot.T + torch.tensor(shift)


def _blobs(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(1, 3, size, size) image in [-1, 1]: dark background, bright Gaussian blobs at ``points`` (K, 2)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    img = torch.zeros(size, size)
    for x, y in points.tolist():
        img = img + torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return (2 * img.clamp(max=1.0) - 1).expand(1, 3, size, size).clone()


def _centroid(img: torch.Tensor, at: torch.Tensor, radius: int) -> torch.Tensor:
    """Intensity centroid (x, y) of channel 0 in a window around ``at``."""
    w = (img[0, 0] + 1) / 2
    x0, y0 = int(round(at[0].item())), int(round(at[1].item()))
    patch = w[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    ys, xs = torch.meshgrid(
        torch.arange(y0 - radius, y0 + radius + 1, dtype=torch.float32),
        torch.arange(x0 - radius, x0 + radius + 1, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([(patch * xs).sum() / patch.sum(), (patch * ys).sum() / patch.sum()])


def _landmarks_with_keypoints(left_eye, right_eye, mouth, extra=None) -> torch.Tensor:
    """(1, 70, 2) landmarks whose eye rings / inner lips collapse onto the given centres."""
    lm = torch.full((70, 2), 10.0)
    lm[36:42], lm[42:48], lm[60:68] = left_eye, right_eye, mouth
    for index, point in (extra or {}).items():
        lm[index] = point
    return lm[None]


def test_fit_similarity_recovers_a_known_rotation_scale_shift():
    src = torch.rand(3, 5, 2) * 100
    angles, scales = [0.3, -1.2, 2.5], [0.5, 1.0, 3.0]
    dst = torch.stack([_similarity(src[i], scales[i], angles[i], (7.0, -4.0)) for i in range(3)])
    for i in range(3):
        m = fit_similarity(src[i : i + 1], dst[i])[0]
        mapped = src[i] @ m[:, :2].T + m[:, 2]
        torch.testing.assert_close(mapped, dst[i], atol=1e-3, rtol=0)
        assert torch.det(m[:, :2]).item() == pytest.approx(scales[i] ** 2, rel=1e-4)


def test_fit_similarity_never_reflects_and_handles_degenerate_points():
    src = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    mirrored = src[0] * torch.tensor([-1.0, 1.0])
    assert torch.det(fit_similarity(src, mirrored)[0, :, :2]) >= 0
    same = torch.full((1, 3, 2), 5.0)
    torch.testing.assert_close(fit_similarity(same, src[0])[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))


def test_motion_crop_puts_eye_and_mouth_centres_on_the_template():
    template = torch.tensor(MOTION_TEMPLATE_224)
    keypoints = _similarity(template, 0.9, 0.2, (30.0, 25.0))  # where the face sits in a 256 image
    image = _blobs(keypoints, 256, sigma=2.5)
    crop = crop_for_motion(image, _landmarks_with_keypoints(*keypoints))
    assert crop.shape == (1, 3, 224, 224)
    expected = motion_template_in_crop()
    # crop keeps rows [0, 192) and cols [16, 208) of the 224 warp, resized by 224/192
    torch.testing.assert_close(expected[0], torch.tensor([(87 - 16 + 0.5) * 7 / 6 - 0.5, 59.5 * 7 / 6 - 0.5]))
    for point in expected:
        torch.testing.assert_close(_centroid(crop, point, radius=9), point, atol=0.3, rtol=0)


def test_small_motion_crops_scale_template_and_border():
    template = torch.tensor(MOTION_TEMPLATE_224)
    keypoints = _similarity(template, 0.5, 0.1, (20.0, 10.0))
    crop = crop_for_motion(_blobs(keypoints, 128, sigma=3.0), _landmarks_with_keypoints(*keypoints), size=64)
    assert crop.shape == (1, 3, 64, 64)
    for point in motion_template_in_crop(size=64):  # border 16 * 64/224 -> 5 px
        torch.testing.assert_close(_centroid(crop, point, radius=4), point, atol=0.4, rtol=0)


def test_motion_crop_y_up_landmarks_match_y_down_ones():
    keypoints = _similarity(torch.tensor(MOTION_TEMPLATE_224), 1.1, -0.1, (10.0, 20.0))
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    lm = _landmarks_with_keypoints(*keypoints)
    down = crop_for_motion(image, lm)
    up = crop_for_motion(image, flip_landmarks_y(lm, 256), y_up=True)
    torch.testing.assert_close(up, down, atol=1e-4, rtol=0)
    assert up.min() >= -1 and up.max() <= 1


def test_identity_crop_puts_five_keypoints_on_the_arcface_template():
    template = torch.tensor(IDENTITY_TEMPLATE_112)
    keypoints = _similarity(template, 2.0, -0.25, (40.0, 60.0))
    image = _blobs(keypoints, 320, sigma=4.0)
    extra = {68: keypoints[0], 69: keypoints[1], 30: keypoints[2], 48: keypoints[3], 54: keypoints[4]}
    lm = _landmarks_with_keypoints(keypoints[0], keypoints[1], keypoints[2], extra)
    crop = crop_for_identity(image, lm)
    assert crop.shape == (1, 3, 112, 112)
    for point in template:
        torch.testing.assert_close(_centroid(crop, point, radius=6), point, atol=0.3, rtol=0)


def test_crops_are_differentiable_in_the_image():
    image = (torch.rand(2, 3, 128, 128) * 1.6 - 0.8).requires_grad_(True)
    lm = torch.rand(2, 70, 2) * 60 + 34
    (crop_for_motion(image, lm).sum() + crop_for_identity(image, lm).sum()).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="landmarks"):
        motion_keypoints(torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="landmarks"):
        crop_for_identity(torch.zeros(1, 3, 64, 64), torch.zeros(1, 68, 2))
    with pytest.raises(ValueError, match="batch size"):
        crop_for_motion(torch.zeros(2, 3, 64, 64), torch.zeros(1, 68, 2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        crop_for_motion(torch.zeros(1, 64, 64), torch.zeros(1, 68, 2))

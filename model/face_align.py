"""Landmark-driven face crops for the two frozen face networks (PD-FGC motion, ArcFace identity).

Both crops fit a 2D similarity (rotation + uniform scale + translation) from a few landmark
keypoints to a fixed template, then resample the image with it (official
training/utils/preprocess.py ``estimate_norm*``; skimage's least-squares similarity + kornia
``warp_affine``). Landmarks are pixel coordinates of the 68 iBUG points, optionally followed by
the two eye centres (indices 68, 69), with +y pointing down unless ``y_up`` is set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

# Motion crop (official training/utils/preprocess.py estimate_norm_pdfgc): left-eye centre,
# right-eye centre and inner-mouth centre land here in a 224x224 warp ...
MOTION_TEMPLATE_224 = ((87.0, 59.0), (137.0, 59.0), (112.0, 120.0))
MOTION_WARP_SIZE = 224
# ... then the top 192 rows and the middle 192 columns are kept and resized back to 224
# (official loss_recon_v2.py get_motion_feature: crop_len=16).
MOTION_CROP_BORDER = 16

# Identity crop (official estimate_norm; insightface arcface_src for 112x112 inputs):
# eye centres, nose tip, mouth corners.
IDENTITY_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
IDENTITY_CROP_SIZE = 112

# 68-point iBUG index ranges (official extract_3p_flame / extract_5p_flame).
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_INNER_MOUTH = slice(60, 68)
_IDENTITY_POINTS = (68, 69, 30, 48, 54)  # eye centres (extra points 68, 69), nose tip, mouth corners


def _check_landmarks(landmarks: torch.Tensor, min_points: int) -> None:
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2 or landmarks.shape[1] < min_points:
        raise ValueError(
            f"landmarks must have shape (B, L>={min_points}, 2) in pixel coordinates, "
            f"got {tuple(landmarks.shape)}"
        )


def _check_images(images: torch.Tensor, landmarks: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] != landmarks.shape[0]:
        raise ValueError(
            f"images and landmarks disagree on batch size: {images.shape[0]} vs {landmarks.shape[0]}"
        )


def flip_landmarks_y(landmarks: torch.Tensor, height: int) -> torch.Tensor:
    """Convert between +y-up and +y-down pixel landmarks (official ``H - 1 - y``)."""
    return torch.stack([landmarks[..., 0], height - 1 - landmarks[..., 1]], dim=-1)


def fit_similarity(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity mapping ``source`` (B, N, 2) onto ``target`` (N, 2) or (B, N, 2).

    Returns (B, 2, 3) ``[[a, -b, tx], [b, a, ty]]``. Rotations only, no reflection — the same
    optimum as skimage's Umeyama estimate used by the official code, in closed form so it is
    batched and runs on any device. Degenerate input (all points equal) gives the identity,
    as the official code does for a singular transform.
    """
    src = source.to(torch.float64)
    dst = target.to(device=source.device, dtype=torch.float64).expand_as(src)
    src_c = src - src.mean(dim=1, keepdim=True)
    dst_c = dst - dst.mean(dim=1, keepdim=True)
    energy = (src_c**2).sum(dim=(1, 2))  # (B,)
    dot = (src_c * dst_c).sum(dim=(1, 2))
    cross = (src_c[..., 0] * dst_c[..., 1] - src_c[..., 1] * dst_c[..., 0]).sum(dim=1)
    degenerate = energy <= 1e-12
    safe = torch.where(degenerate, torch.ones_like(energy), energy)
    a = torch.where(degenerate, torch.ones_like(dot), dot / safe)
    b = torch.where(degenerate, torch.zeros_like(cross), cross / safe)
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=-2)  # (B, 2, 2)
    shift = dst.mean(dim=1) - (rot @ src.mean(dim=1).unsqueeze(-1)).squeeze(-1)
    shift = torch.where(degenerate.unsqueeze(-1), torch.zeros_like(shift), shift)
    return torch.cat([rot, shift.unsqueeze(-1)], dim=-1).to(source.dtype)


def _warp(images: torch.Tensor, matrix: torch.Tensor, size: int) -> torch.Tensor:
    """Resample with an image->crop (B, 2, 3) matrix: bilinear, zero padding, align_corners (kornia
    defaults, as official). Runs in fp32 — translations of hundreds of pixels are off by whole
    pixels in half precision."""
    warped = warp_affine(images.float(), matrix.float(), dsize=(size, size))
    return warped.to(images.dtype)


def motion_keypoints(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, 68+, 2) landmarks -> (B, 3, 2): left-eye, right-eye and inner-mouth centres."""
    _check_landmarks(landmarks, 68)
    return torch.stack(
        [landmarks[:, _LEFT_EYE].mean(1), landmarks[:, _RIGHT_EYE].mean(1), landmarks[:, _INNER_MOUTH].mean(1)],
        dim=1,
    )


def identity_keypoints(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, 70, 2) landmarks -> (B, 5, 2): eye centres, nose tip, mouth corners."""
    _check_landmarks(landmarks, 70)
    return landmarks[:, list(_IDENTITY_POINTS)]


def motion_crop_matrix(landmarks: torch.Tensor, height: int, y_up: bool = False) -> torch.Tensor:
    """(B, 2, 3) image->224 warp that puts the eye and inner-mouth centres on the motion template."""
    points = flip_landmarks_y(landmarks, height) if y_up else landmarks
    # The transform is a constant of the landmarks, as in the official code (it runs in numpy).
    template = torch.tensor(MOTION_TEMPLATE_224, device=landmarks.device)
    return fit_similarity(motion_keypoints(points).detach(), template)


def motion_template_in_crop(size: int = MOTION_WARP_SIZE, border: int | None = None) -> torch.Tensor:
    """(3, 2) where the eye / inner-mouth centres end up in the final ``size`` motion crop.

    Follows the keep-rows-[0, size-2b) / cols-[b, size-b) crop and the half-pixel-centred
    bilinear resize back to ``size``.
    """
    if border is None:
        border = round(MOTION_CROP_BORDER * size / MOTION_WARP_SIZE)
    kept = size - 2 * border
    template = torch.tensor(MOTION_TEMPLATE_224, dtype=torch.float64) * (size / MOTION_WARP_SIZE)
    offset = torch.tensor([float(border), 0.0], dtype=torch.float64)
    return ((template - offset + 0.5) * (size / kept) - 0.5).to(torch.float32)


def crop_for_motion(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    y_up: bool = False,
    size: int = MOTION_WARP_SIZE,
    border: int | None = None,
) -> torch.Tensor:
    """PD-FGC input: (B, 3, H, W) images in [-1, 1] + (B, 68+, 2) landmarks -> (B, 3, size, size).

    Official get_motion_feature: similarity warp to 224, keep the top ``224 - 2*border`` rows and
    the centred columns, bilinear resize back, clamp to [-1, 1]. Differentiable w.r.t. images.
    Other sizes (tiny encoders) scale the template and, by default, the border.
    """
    _check_landmarks(landmarks, 68)
    _check_images(images, landmarks)
    if border is None:
        border = round(MOTION_CROP_BORDER * size / MOTION_WARP_SIZE)
    if not 0 <= 2 * border < size:
        raise ValueError(f"border {border} leaves nothing of a {size}px crop")
    matrix = motion_crop_matrix(landmarks, images.shape[-2], y_up=y_up)
    if size != MOTION_WARP_SIZE:  # rescale the template for non-paper crop sizes
        matrix = matrix * (size / MOTION_WARP_SIZE)
    warped = _warp(images, matrix, size)
    kept = warped[:, :, : size - 2 * border, border : size - border]
    return F.interpolate(kept, size=(size, size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)


def identity_crop_matrix(landmarks: torch.Tensor, height: int, y_up: bool = False) -> torch.Tensor:
    """(B, 2, 3) image->112 warp that puts five keypoints on the ArcFace template."""
    points = flip_landmarks_y(landmarks, height) if y_up else landmarks
    template = torch.tensor(IDENTITY_TEMPLATE_112, device=landmarks.device)
    return fit_similarity(identity_keypoints(points).detach(), template)


def crop_for_identity(images: torch.Tensor, landmarks: torch.Tensor, y_up: bool = False) -> torch.Tensor:
    """ArcFace input: (B, 3, H, W) images in [-1, 1] + (B, 70, 2) landmarks -> (B, 3, 112, 112).

    Official identity loss (loss_recon_v2.py): 5-point similarity warp to 112, clamp to [-1, 1].
    """
    _check_landmarks(landmarks, 70)
    _check_images(images, landmarks)
    matrix = identity_crop_matrix(landmarks, images.shape[-2], y_up=y_up)
    return _warp(images, matrix, IDENTITY_CROP_SIZE).clamp(-1.0, 1.0)


def to_network_image(crops: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 aligned crops -> (N, 3, size, size) float in [-1, 1], resized bilinearly with antialias.

    The one resize that Ψ's training data (components/train/data.py) and inference (components/animate/engine.py)
    share: if the two differed, a served Ψ would see other pixels than it was trained on."""
    t = crops.permute(0, 3, 1, 2).float() / 127.5 - 1
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t

"""The reenactment metrics, per item, as pure functions of images, labels and landmarks.

Images are (N, H, W, 3) uint8 arrays (what the Animator renders); every function returns an (N,)
float64 array with NaN where an item has no value (e.g. no face found in a render).

- PSNR, SSIM: ``torchmetrics`` (8-bit data range, SSIM's 11-px Gaussian window with sigma 1.5).
  PSNR of identical images is infinite; it is capped at ``PSNR_CAP_DB`` so means stay finite.
- LPIPS: the project's VGG LPIPS, the network of the training loss (model/networks/lpips.py).
- CSIM: cosine of the project's ArcFace-r18 identity features, each image aligned to the ArcFace
  template by its own 5 key points (taken from its MediaPipe mesh), as the training identity loss does.
- AED: mean |difference| of the FLAME expression (100) + jaw pose (3) of two 437-float fits.
- APD: mean |difference| of the head rotation (3, axis-angle, rad). fit_flame keeps FLAME's global
  rotation at zero and writes the head's world->camera rotation into the label's neck slot
  (``LabelLayout.NECK_POSE``); the camera rotation in ``[0:16]`` is the same rotation, so it is not
  counted a second time.
- AKD: mean Euclidean distance (px) of the 478 MediaPipe points of two images, measured at
  ``AKD_RESOLUTION``² (the protocol's 512; smaller renders are scaled up before landmarking).
- Aggregates: mean and a percentile bootstrap interval that resamples whole clips (frames of a clip
  are not independent), with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.cameras import LabelLayout

PSNR_CAP_DB = 100.0  # above any finite PSNR of two different 8-bit 512² images (107 dB needs one LSB off)
AKD_RESOLUTION = 512
DATA_RANGE = 255.0


def _float_nchw(images: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 255]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"the two image batches differ in shape: {a.shape} vs {b.shape}")


def _chunks(n: int, batch: int) -> list[slice]:
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


@torch.no_grad()
def psnr(output: np.ndarray, target: np.ndarray, device: str = "cpu", batch: int = 64) -> np.ndarray:
    """Per-image PSNR in dB (8-bit range), capped at ``PSNR_CAP_DB``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(output, target)
    out = []
    for s in _chunks(len(output), batch):
        value = peak_signal_noise_ratio(_float_nchw(output[s], device), _float_nchw(target[s], device),
                                        data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))  # fmt: skip
        out.append(value.clamp(max=PSNR_CAP_DB).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def ssim(output: np.ndarray, target: np.ndarray, device: str = "cpu", batch: int = 64) -> np.ndarray:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, 8-bit range)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(output, target)
    out = []
    for s in _chunks(len(output), batch):
        # float64: in float32 the local variances of identical images leave SSIM a few 1e-6 below 1
        value = structural_similarity_index_measure(_float_nchw(output[s], device).double(),
                                                    _float_nchw(target[s], device).double(),
                                                    data_range=DATA_RANGE, reduction="none")  # fmt: skip
        out.append(value.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@torch.no_grad()
def lpips(net: nn.Module, output: np.ndarray, target: np.ndarray, device: str = "cpu", batch: int = 32) -> np.ndarray:
    """Per-image LPIPS distance with the project's VGG LPIPS (eval mode: no dropout)."""
    _check_pair(output, target)
    net = net.eval()
    out = []
    for s in _chunks(len(output), batch):
        x = _float_nchw(output[s], device) / 127.5 - 1
        y = _float_nchw(target[s], device) / 127.5 - 1
        out.append(net(x, y).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def identity_landmarks(mesh_points: np.ndarray) -> np.ndarray:
    """(N, 478, 2) MediaPipe points -> (N, 70, 2): the 68 iBUG points + eye centres ArcFace aligns by."""
    from model.face_mesh import MESH_TO_IBUG68
    from components.train.conditions import with_eye_centres

    return with_eye_centres(torch.from_numpy(np.asarray(mesh_points, dtype=np.float32)[:, MESH_TO_IBUG68])).numpy()


@torch.no_grad()
def identity_features(arcface: nn.Module, images: np.ndarray, mesh_points: np.ndarray, device: str = "cpu",
                      batch: int = 64) -> np.ndarray:
    """(N, D) unit ArcFace features of images aligned by their own (N, 478, 2) MediaPipe points (image px).

    Rows whose points hold NaN (no face found) are NaN.
    """
    if len(images) != len(mesh_points):
        raise ValueError(f"{len(images)} images but {len(mesh_points)} landmark sets")
    arcface = arcface.eval()
    found = np.isfinite(mesh_points).all(axis=(1, 2))
    features = np.full((len(images), arcface.cfg.embedding_dim), np.nan)
    idx = np.flatnonzero(found)
    for s in _chunks(len(idx), batch):
        rows = idx[s]
        x = _float_nchw(images[rows], device) / 127.5 - 1
        lm = torch.from_numpy(identity_landmarks(mesh_points[rows])).to(device)
        features[rows] = arcface.identity_features(x, lm).double().cpu().numpy()
    return features


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, D) feature arrays (NaN rows stay NaN)."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _label_slices(labels: np.ndarray, *parts: slice) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] < LabelLayout.EYE_POSE.stop:
        raise ValueError(f"labels must be (N, 437), got {labels.shape}")
    return np.concatenate([labels[:, p] for p in parts], axis=1)


def expression_distance(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """AED: mean |Δ| over FLAME expression + jaw pose of two (N, 437) label arrays."""
    parts = (LabelLayout.EXPRESSION, LabelLayout.JAW_POSE)
    return np.abs(_label_slices(labels_a, *parts) - _label_slices(labels_b, *parts)).mean(axis=1)


def pose_distance(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """APD: mean |Δ| (rad) of the head rotation (the neck slot, see the module docstring)."""
    return np.abs(_label_slices(labels_a, LabelLayout.NECK_POSE) - _label_slices(labels_b, LabelLayout.NECK_POSE)).mean(axis=1)


def keypoint_distance(points_a: np.ndarray, points_b: np.ndarray, image_size: int) -> np.ndarray:
    """AKD: mean point distance of two (N, P, 2) landmark sets given in pixels of ``image_size``² images,
    reported in pixels at ``AKD_RESOLUTION``²."""
    a, b = np.asarray(points_a, dtype=np.float64), np.asarray(points_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"landmark sets must both be (N, P, 2), got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=-1).mean(axis=1) * (AKD_RESOLUTION / image_size)


# ------------------------------------------------------------------------------------------ aggregates
@dataclass(frozen=True)
class Summary:
    mean: float
    low: float
    high: float
    count: int


def summarize(values: np.ndarray, groups: Sequence[str], samples: int, seed: int, confidence: float = 0.95) -> Summary:
    """Mean of the finite values and its bootstrap interval over groups (clips), resampled with replacement.

    With one group the interval is the mean itself (nothing to resample); with no finite value the
    summary is NaN with count 0.
    """
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    values, groups = values[keep], np.asarray(list(groups), dtype=object)[keep]
    if len(values) == 0:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    mean = float(values.mean())
    names, index = np.unique(groups.astype(str), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(names))
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    if len(names) < 2:
        return Summary(mean, mean, mean, len(values))
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(names), size=(samples, len(names)))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Summary(mean, float(low), float(high), len(values))

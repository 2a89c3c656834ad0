"""Temporal smoothing of driving signals (motion embedding, FLAME expression and pose, camera).

Jitter on video driving is the most common complaint about the official code: PD-FGC motion and a
per-frame FLAME fit both wobble by a little from frame to frame. The one-euro filter (the same one the
crop smoothing of fit_flame uses) keeps still signals steady and lets fast motion through.
Rotations are filtered element-wise and projected back onto rotation matrices (SVD), which is exact
for the small per-frame changes filtered here.
"""

from __future__ import annotations

import numpy as np

from components.config.animate import OneEuro
from components.fit_flame.alignment import OneEuroFilter
from model.cameras import LabelLayout


def one_euro(signal: np.ndarray, settings: OneEuro) -> np.ndarray:
    """(N, D) signal sampled once per frame -> filtered (N, D) float32."""
    if len(signal) < 2:
        return np.asarray(signal, dtype=np.float32)
    f = OneEuroFilter(settings.min_cutoff, settings.beta)
    return np.stack([f(float(t), x) for t, x in enumerate(np.asarray(signal, dtype=np.float64))]).astype(np.float32)


def _nearest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt


def smooth_labels(labels: np.ndarray, settings: OneEuro) -> np.ndarray:
    """(N, 437) labels with expression, jaw, eyes, neck pose and the camera pose filtered over frames.

    Shape (one per clip) and intrinsics (fixed fov) are left as they are.
    """
    out = np.array(labels, dtype=np.float32, copy=True)
    for part in (LabelLayout.EXPRESSION, LabelLayout.JAW_POSE, LabelLayout.EYE_POSE, LabelLayout.NECK_POSE):
        out[:, part] = one_euro(out[:, part], settings)
    cam = out[:, LabelLayout.CAM2WORLD].reshape(-1, 4, 4)
    rotation = one_euro(cam[:, :3, :3].reshape(-1, 9), settings).reshape(-1, 3, 3)
    cam[:, :3, :3] = _nearest_rotation(rotation.astype(np.float64))
    cam[:, :3, 3] = one_euro(cam[:, :3, 3], settings)
    out[:, LabelLayout.CAM2WORLD] = cam.reshape(-1, 16)
    return out


def jitter(signal: np.ndarray) -> float:
    """Mean frame-to-frame change (L2) of an (N, D) signal: the number smoothing is judged by."""
    signal = np.asarray(signal, dtype=np.float64)
    return float(np.linalg.norm(np.diff(signal, axis=0), axis=1).mean()) if len(signal) > 1 else 0.0

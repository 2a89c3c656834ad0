"""The official 5-point POS alignment to a square crop, and its temporal smoothing for video.

The official crop (data_preprocess/cropping/crop_images_portrait_model.py, after Deep3DFaceRecon)
fits a weak-perspective projection of five standard 3D face points to five detected points
(eye centres, nose tip, mouth corners) by least squares ("POS"), then scales the image so the
fitted scale is constant and puts the fitted translation at a fixed place in the crop. No
rotation: the head keeps its in-plane roll, which the FLAME camera later explains. Pixels outside
the photo repeat its edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Standard 5 points of a 3D face (BFM units): eye centres, nose tip, mouth corners, as listed in
# the official cropping script, including its +0.1 (y) and +0.4 (z) shift.
POS_REFERENCE_3D = np.array(
    [
        [-0.31148657, 0.19036078, 0.53377953],
        [0.30979887, 0.18972035, 0.53179526],
        [0.0032535, -0.14617933, 0.95244243],
        [-0.25216928, -0.4813392, 0.62405732],
        [0.2484662, -0.4812824, 0.62235769],
    ]
)
REFERENCE_CROP = 512  # crop size the framing constants (config crop_pos_*) are expressed in


def five_points(ibug68: np.ndarray) -> np.ndarray:
    """(68, 2) -> (5, 2): eye centres (mean of the two corners), nose tip, mouth corners.

    Same points and order as the official ``extract_5p``.
    """
    return np.stack(
        [
            ibug68[[36, 39]].mean(0),
            ibug68[[42, 45]].mean(0),
            ibug68[30],
            ibug68[48],
            ibug68[54],
        ]
    )


def pos_fit(points_2d: np.ndarray, points_3d: np.ndarray = POS_REFERENCE_3D) -> tuple[np.ndarray, float]:
    """Weak-perspective least squares: (translation (2,) in the points' frame, scale).

    Solves ``p = s·R[:2]·X + t`` row by row as an 8-unknown linear system (official POS) and
    takes the scale as the mean norm of the two recovered rows.
    """
    n = len(points_2d)
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3] = points_3d
    a[0::2, 3] = 1.0
    a[1::2, 4:7] = points_3d
    a[1::2, 7] = 1.0
    k = np.linalg.lstsq(a, points_2d.reshape(-1), rcond=None)[0]
    scale = 0.5 * (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7]))
    return np.array([k[3], k[7]]), float(scale)


@dataclass(frozen=True)
class CropTransform:
    """Source px -> crop px: ``crop = scale · (src - center) + anchor`` (+y down in both)."""

    scale: float
    center: tuple[float, float]  # source point that lands on ``anchor``
    anchor: tuple[float, float]
    size: int

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * (points - np.asarray(self.center)) + np.asarray(self.anchor)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Crop px -> source px."""
        return (np.asarray(points) - np.asarray(self.anchor)) / self.scale + np.asarray(self.center)

    def source_box(self) -> tuple[float, float, float, float]:
        """The source rectangle the crop covers (may leave the image)."""
        cx, cy = self.center
        ax, ay = self.anchor
        return (
            cx - ax / self.scale,
            cy - ay / self.scale,
            cx + (self.size - ax) / self.scale,
            cy + (self.size - ay) / self.scale,
        )


def pos_crop_params(ibug68: np.ndarray, image_height: int) -> tuple[np.ndarray, float]:
    """(POS translation in source px, +y down; POS scale) for the official 5 points."""
    pts = five_points(ibug68).copy()
    pts[:, 1] = image_height - pts[:, 1]  # POS runs with +y up, as the official code
    t, s = pos_fit(pts)
    if not (np.isfinite(s) and s > 0 and np.all(np.isfinite(t))):
        raise ValueError("degenerate 5-point configuration")
    return np.array([t[0], image_height - t[1]]), s


def crop_transform(
    center: np.ndarray, pos_scale: float, size: int, pos_scale_512: float, anchor_512: tuple[float, float]
) -> CropTransform:
    """The crop that puts the POS translation at ``anchor`` with POS scale ``pos_scale_512`` (512 units)."""
    ratio = size / REFERENCE_CROP
    return CropTransform(
        scale=pos_scale_512 * ratio / pos_scale,
        center=(float(center[0]), float(center[1])),
        anchor=(anchor_512[0] * ratio, anchor_512[1] * ratio),
        size=size,
    )


def crop_image(rgb: np.ndarray, transform: CropTransform) -> np.ndarray:
    """(size, size, 3) uint8 Lanczos resample of the crop, edge-padded outside the source."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = transform.source_box()
    # Only the covered region (plus the filter's reach) is touched: memory ~ crop, not photo.
    margin = 3 * max(1.0, 1.0 / transform.scale) + 2
    left, top = math.floor(x0 - margin), math.floor(y0 - margin)
    right, bottom = math.ceil(x1 + margin), math.ceil(y1 + margin)
    ys = np.clip(np.arange(top, bottom), 0, h - 1)
    xs = np.clip(np.arange(left, right), 0, w - 1)
    # Rows and columns separately so the padded copy is built only once.
    region = rgb[ys][:, xs]
    box = (x0 - left, y0 - top, x1 - left, y1 - top)
    out = Image.fromarray(np.ascontiguousarray(region)).resize(
        (transform.size, transform.size), Image.LANCZOS, box=box
    )
    return np.asarray(out)


class OneEuroFilter:
    """One-euro low-pass filter (Casiez et al. 2012) over a vector signal sampled at times t.

    Parameters follow the official cropping code: a low ``min_cutoff`` keeps a still head's crop
    steady; ``beta`` lets the cutoff rise with speed so fast motion does not lag.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._t: float | None = None
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @staticmethod
    def _alpha(dt: float, cutoff: np.ndarray | float) -> np.ndarray | float:
        r = 2 * math.pi * cutoff * dt
        return r / (r + 1)

    def __call__(self, t: float, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._t is None:
            self._t, self._x, self._dx = t, x, np.zeros_like(x)
            return x
        dt = t - self._t
        if dt <= 0:
            raise ValueError("one-euro filter times must increase")
        dx = (x - self._x) / dt
        dx_hat = self._alpha(dt, self.d_cutoff) * dx + (1 - self._alpha(dt, self.d_cutoff)) * self._dx
        a = self._alpha(dt, self.min_cutoff + self.beta * np.abs(dx_hat))
        x_hat = a * x + (1 - a) * self._x
        self._t, self._x, self._dx = t, x_hat, dx_hat
        return x_hat


def smooth_crop_params(
    centers: np.ndarray,
    scales: np.ndarray,
    times: np.ndarray,
    center_filter: tuple[float, float],
    scale_filter: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """One-euro smoothing of per-frame crop centres (N, 2) and scales (N,) at times (N,)."""
    f_center, f_scale = OneEuroFilter(*center_filter), OneEuroFilter(*scale_filter)
    out_c = np.stack([f_center(float(t), c) for t, c in zip(times, centers)])
    out_s = np.array([float(f_scale(float(t), np.array(s))) for t, s in zip(times, scales)])
    return out_c, out_s

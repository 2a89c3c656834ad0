"""A stand-in MediaPipe->FLAME landmark embedding for synthetic bundles (tests, tiny runs).

The real embedding (MICA) is user-supplied. This one is built so that fits on real photos stay
meaningful with a synthetic head: the chosen MediaPipe points of one observed face are laid over
the front of the head by orthographic rays along -z, and each ray's hit becomes a barycentric
landmark. ``synth.py`` writes it into the synthetic bundle.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from model.face_mesh import MESH_TO_IBUG68

# MediaPipe face-oval points (the silhouette ring), a useful complement to the 68 iBUG points.
_FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
              152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # fmt: skip
_IRIS_CENTRES = [468, 473]
_CHEEKS_AND_NOSE = [1, 6, 19, 48, 64, 98, 115, 129, 187, 205, 206, 278, 294, 327, 344, 358, 411, 425, 426, 50, 280]


def synthetic_landmark_indices(n: int = 105) -> np.ndarray:
    """``n`` distinct MediaPipe indices: iBUG-68 first, then the face oval, irises, cheeks, nose."""
    order = list(dict.fromkeys([*MESH_TO_IBUG68.tolist(), *_FACE_OVAL, *_IRIS_CENTRES, *_CHEEKS_AND_NOSE]))
    if n > len(order):
        raise ValueError(f"at most {len(order)} synthetic landmark indices, asked for {n}")
    return np.array(order[:n], dtype=np.int64)


def synthetic_mediapipe_embedding(
    arrays: Mapping[str, Any], mesh_points: np.ndarray, n_landmarks: int = 105
) -> dict[str, np.ndarray]:
    """Embedding arrays (lmk_face_idx, lmk_b_coords, landmark_indices) for ``arrays``' mesh.

    ``mesh_points`` (478, 3) is one MediaPipe result in pixels (x right, y down, z away from the
    camera), ideally a near-frontal face.
    """
    vertices = np.asarray(arrays["v_template"], dtype=np.float64)
    faces = np.asarray(arrays["f"]).astype(np.int64)
    indices = synthetic_landmark_indices(n_landmarks)
    pts = np.asarray(mesh_points, dtype=np.float64)
    # To the head frame: +y up, face towards +z, centred on the face, scaled into the head's front.
    xy = np.stack([pts[:, 0], -pts[:, 1]], axis=1)
    xy = xy - (xy.max(0) + xy.min(0)) / 2
    front = vertices[vertices[:, 2] > 0]
    half_width = 0.8 * min(np.abs(front[:, 0]).max(), np.abs(front[:, 1]).max())
    xy = xy * (half_width / np.abs(xy).max())
    face_idx, bary = _cast_rays(vertices, faces, xy[indices])
    return {"lmk_face_idx": face_idx, "lmk_b_coords": bary, "landmark_indices": indices}


def _cast_rays(vertices: np.ndarray, faces: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Front-most triangle under each (x, y) looking along -z, and the hit's barycentrics."""
    a, b, c = (vertices[faces[:, k], :2] for k in range(3))  # (F, 2) each, projected on xy
    depth = vertices[faces].mean(1)[:, 2]  # (F,)
    p = xy[:, None, :]  # (L, 1, 2)
    v0, v1, v2 = b - a, c - a, p - a  # (F, 2), (F, 2), (L, F, 2)
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]  # (F,)
    den = np.where(np.abs(den) < 1e-15, np.nan, den)
    w1 = (v2[..., 0] * v1[:, 1] - v1[:, 0] * v2[..., 1]) / den
    w2 = (v0[:, 0] * v2[..., 1] - v2[..., 0] * v0[:, 1]) / den
    w0 = 1 - w1 - w2
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    score = np.where(inside, depth[None, :], -np.inf)
    best = score.argmax(1)
    if not np.isfinite(score[np.arange(len(xy)), best]).all():
        raise ValueError("a landmark ray misses the head mesh; the face layout is larger than the head")
    rows = np.arange(len(xy))
    bary = np.stack([w0[rows, best], w1[rows, best], w2[rows, best]], axis=1)
    return best.astype(np.int64), bary.astype(np.float64)


def random_front_embedding(arrays: Mapping[str, Any], n_landmarks: int = 105, seed: int = 0) -> dict[str, np.ndarray]:
    """Embedding arrays with landmarks on random front-facing triangles (no MediaPipe needed)."""
    rng = np.random.default_rng(seed)
    vertices = np.asarray(arrays["v_template"], dtype=np.float64)
    faces = np.asarray(arrays["f"]).astype(np.int64)
    centroids = vertices[faces].mean(1)
    front = np.flatnonzero(centroids[:, 2] > 0.4 * vertices[:, 2].max())
    return {
        "lmk_face_idx": rng.choice(front, n_landmarks, replace=False).astype(np.int64),
        "lmk_b_coords": rng.dirichlet([2.0, 2.0, 2.0], n_landmarks),
        "landmark_indices": synthetic_landmark_indices(n_landmarks),
    }

"""A synthetic, self-consistent FLAME-like head for tests and synthetic bundles.

Not a face: an ellipsoid head with a nose bump, five joints (global, neck, jaw, eyeL, eyeR) on the
official kinematic tree, smooth LBS weights, and 300 shape + 100 expression smooth orthogonal
directions. Every key and dtype of the real ``generic_model.pkl`` is present, so all code that
consumes FLAME runs on it unchanged. Coordinates are metres, +y up, the face looks down +z.
"""

from __future__ import annotations

import heapq

import numpy as np

N_SHAPE_DIRS = 300
N_EXPRESSION_DIRS = 100
N_POSE_DIRS = 36  # 4 non-root joints x 9 entries of (R - I)
DEFAULT_SYNTHETIC_VERTICES = 642  # icosphere level 3: small enough for CPU tests
# Official kintree_table of FLAME 2020 (parent row uses uint32 -1 for the root).
KINTREE_TABLE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)

_HEAD_RADII = np.array([0.08, 0.105, 0.095])  # half width / height / depth of the head (m)
_EYE_DIRECTION = np.array([0.35, 0.25, 0.9])  # subject's left eye; the right one mirrors x


def _icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5.0**0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
             (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]  # fmt: skip
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]  # fmt: skip
    points = [np.array(v, dtype=np.float64) / np.linalg.norm(v) for v in verts]
    for _ in range(level):
        midpoint: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                m = points[a] + points[b]
                points.append(m / np.linalg.norm(m))
                midpoint[key] = len(points) - 1
            return midpoint[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return np.stack(points), np.asarray(faces, dtype=np.int64)


def _unit_sphere_mesh(n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed genus-0 mesh with exactly ``n_vertices`` points on the unit sphere."""
    level = 0
    while 10 * 4 ** (level + 1) + 2 <= n_vertices:
        level += 1
    points, faces = _icosphere(level)
    points, faces = list(points), [tuple(f) for f in faces]

    def area(face: tuple[int, int, int]) -> float:
        a, b, c = (points[i] for i in face)
        return float(np.linalg.norm(np.cross(b - a, c - a)))

    # Split the largest face at its (re-projected) centroid until the count is reached; each split
    # adds one vertex and keeps the surface closed and consistently oriented.
    heap = [(-area(f), i) for i, f in enumerate(faces)]
    heapq.heapify(heap)
    while len(points) < n_vertices:
        _, i = heapq.heappop(heap)
        a, b, c = faces[i]
        m = points[a] + points[b] + points[c]
        points.append(m / np.linalg.norm(m))
        new = len(points) - 1
        faces[i] = (a, b, new)
        faces += [(b, c, new), (c, a, new)]
        for j in (i, len(faces) - 2, len(faces) - 1):
            heapq.heappush(heap, (-area(faces[j]), j))
    return np.stack(points), np.asarray(faces, dtype=np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _joint_regressor(u: np.ndarray) -> np.ndarray:
    """(5, V) rows summing to 1; each joint is a kernel-weighted mean of surface points."""
    eye_l = _EYE_DIRECTION / np.linalg.norm(_EYE_DIRECTION)
    eye_r = eye_l * np.array([-1.0, 1.0, 1.0])
    side_l = np.array([1.0, -0.25, 0.0]) / np.linalg.norm([1.0, -0.25, 0.0])
    side_r = side_l * np.array([-1.0, 1.0, 1.0])

    def patch(direction: np.ndarray, width: float) -> np.ndarray:
        return np.exp(-((u - direction) ** 2).sum(-1) / width**2)

    kernels = [
        np.exp(-(((u[:, 1] + 0.95) / 0.08) ** 2)),  # global: bottom of the neck
        np.exp(-(((u[:, 1] + 0.65) / 0.10) ** 2)),  # neck: a ring above it (mean lies on the axis)
        patch(side_l, 0.3) + patch(side_r, 0.3),  # jaw hinge: between the two cheeks
        patch(eye_l, 0.12),
        patch(eye_r, 0.12),
    ]
    rows = np.stack(kernels)
    rows[rows < 1e-4 * rows.max(axis=1, keepdims=True)] = 0.0  # sparse, like the real regressor
    return rows / rows.sum(axis=1, keepdims=True)


def _skinning_weights(u: np.ndarray) -> np.ndarray:
    """(V, 5) non-negative rows summing to 1, allocated region by region."""
    eye_l = _EYE_DIRECTION / np.linalg.norm(_EYE_DIRECTION)
    eye_r = eye_l * np.array([-1.0, 1.0, 1.0])
    w_eye_l = 0.9 * np.exp(-((u - eye_l) ** 2).sum(-1) / 0.02)
    w_eye_r = 0.9 * np.exp(-((u - eye_r) ** 2).sum(-1) / 0.02)
    remaining = 1.0 - w_eye_l - w_eye_r
    w_global = _sigmoid((-u[:, 1] - 0.8) / 0.05) * remaining
    remaining = remaining - w_global
    w_jaw = _sigmoid((-u[:, 1] - 0.15) / 0.08) * _sigmoid(u[:, 2] / 0.15) * remaining
    w_neck = remaining - w_jaw  # the cranium follows the neck joint, as in FLAME
    weights = np.stack([w_global, w_neck, w_jaw, w_eye_l, w_eye_r], axis=1)
    return weights / weights.sum(axis=1, keepdims=True)


def _smooth_directions(u: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(V, 3, n) smooth displacement fields, orthonormal over all V*3 entries when possible."""
    n_vertices = u.shape[0]
    n_centres = min(160, n_vertices)
    centres = rng.normal(size=(n_centres, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.exp(-((u[:, None, :] - centres[None]) ** 2).sum(-1) / 0.5**2)  # (V, K) smooth bumps
    coeffs = rng.normal(size=(n_centres, 3 * n))
    fields = (basis @ coeffs).reshape(n_vertices, 3, n)  # (V, 3, n)
    flat = fields.reshape(n_vertices * 3, n)
    if min(3 * n_centres, n_vertices * 3) >= n:
        flat, _ = np.linalg.qr(flat)  # independent components make fitting well-posed
    else:
        flat = flat / np.linalg.norm(flat, axis=0, keepdims=True)
    return flat.reshape(n_vertices, 3, n) * np.sqrt(n_vertices)  # unit RMS per-vertex length


def synthetic_flame_arrays(seed: int, n_vertices: int | None = None) -> dict[str, np.ndarray | str]:
    """Arrays with the keys, shapes and dtypes of FLAME 2020 ``generic_model.pkl``.

    ``n_vertices`` defaults to a CPU-friendly 642; 5023 gives the real vertex count (the face
    count then is 2V-4 = 10042 because the synthetic mesh is closed, unlike FLAME's 9976).
    """
    n_vertices = DEFAULT_SYNTHETIC_VERTICES if n_vertices is None else int(n_vertices)
    if n_vertices < 12:
        raise ValueError(f"synthetic_flame_arrays needs n_vertices >= 12, got {n_vertices}")
    rng = np.random.default_rng(seed)
    u, faces = _unit_sphere_mesh(n_vertices)

    nose = 0.25 * np.exp(-((u - np.array([0.0, -0.05, 1.0])) ** 2).sum(-1) / 0.03)
    v_template = u * _HEAD_RADII * (1.0 + nose)[:, None]
    v_template += rng.normal(scale=5e-4, size=v_template.shape)  # break symmetry like a real scan

    shape_scale = 0.004 / np.sqrt(1.0 + np.arange(N_SHAPE_DIRS) / 20.0)  # metres per unit coefficient
    expression_scale = 0.003 / np.sqrt(1.0 + np.arange(N_EXPRESSION_DIRS) / 10.0)
    dirs = _smooth_directions(u, N_SHAPE_DIRS + N_EXPRESSION_DIRS, rng)
    face_mask = _sigmoid(u[:, 2] / 0.2) * _sigmoid((0.4 - u[:, 1]) / 0.15)  # expressions live on the face
    shapedirs = dirs * np.concatenate([shape_scale, expression_scale])
    shapedirs[:, :, N_SHAPE_DIRS:] *= face_mask[:, None, None]

    posedirs = _smooth_directions(u, N_POSE_DIRS, rng) * 5e-4
    posedirs[:, :, 18:] *= 0.1  # eyeball rotation barely deforms the surface

    j_regressor = _joint_regressor(u)
    return {
        "f": faces.astype(np.uint32),
        "v_template": v_template,
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": j_regressor,
        "J": j_regressor @ v_template,
        "weights": _skinning_weights(u),
        "kintree_table": KINTREE_TABLE.copy(),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }

"""Landmarks as barycentric points on FLAME triangles, and readers of the official embeddings.

Official files: ``landmark_embedding.npy`` (a pickled dict: static/dynamic/full face indices and
barycentric coordinates, read in models/FLAME/DecaFLAME.py) and the MediaPipe embedding ``.npz``
(lmk_face_idx, lmk_b_coords, landmark_indices).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from model.flame.safe_pickle import FlameFileError, load_pickled_npy

# Face contour look-up table: 79 rows = yaw in degrees 0..39 then -1..-39 (DecaFLAME).
_CONTOUR_MAX_DEG = 39


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmark l lies on triangle ``face_idx[..., l]`` at barycentric weights ``bary[..., l, :]``.

    ``face_idx`` is (L,) for a fixed embedding or (B, L) when chosen per sample (dynamic contour);
    ``landmark_indices`` (L,) is the MediaPipe vertex each landmark corresponds to, when known.
    """

    face_idx: torch.Tensor  # (L,) or (B, L) long
    bary: torch.Tensor  # (L, 3) or (B, L, 3)
    landmark_indices: torch.Tensor | None = None  # (L,) long

    def __post_init__(self) -> None:
        if self.face_idx.dtype != torch.long:
            raise TypeError(f"face_idx must be int64, got {self.face_idx.dtype}")
        if self.bary.shape != (*self.face_idx.shape, 3):
            raise ValueError(f"bary {tuple(self.bary.shape)} must be face_idx {tuple(self.face_idx.shape)} + (3,)")

    @property
    def n_landmarks(self) -> int:
        return self.face_idx.shape[-1]

    def to(self, device: torch.device | str) -> "LandmarkEmbedding":
        moved = None if self.landmark_indices is None else self.landmark_indices.to(device)
        return LandmarkEmbedding(self.face_idx.to(device), self.bary.to(device), moved)


def landmarks_from_vertices(vertices: torch.Tensor, faces: torch.Tensor, embedding: LandmarkEmbedding) -> torch.Tensor:
    """(B, L, 3) landmark positions from (B, V, 3) vertices and (F, 3) faces."""
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    batch = vertices.shape[0]
    face_idx = embedding.face_idx.to(vertices.device)
    bary = embedding.bary.to(device=vertices.device, dtype=vertices.dtype)
    if face_idx.ndim == 1:
        face_idx, bary = face_idx.expand(batch, -1), bary.expand(batch, -1, -1)
    elif face_idx.shape[0] != batch:
        raise ValueError(f"per-sample embedding has batch {face_idx.shape[0]}, vertices have {batch}")
    corners = faces.to(vertices.device)[face_idx]  # (B, L, 3) vertex ids
    batch_ids = torch.arange(batch, device=vertices.device)[:, None, None]
    points = vertices[batch_ids, corners]  # (B, L, 3 corners, 3 xyz)
    return torch.einsum("blk,blkc->blc", bary, points)


def _embedding(face_idx: np.ndarray, bary: np.ndarray, source: str, name: str) -> LandmarkEmbedding:
    face_idx, bary = np.asarray(face_idx), np.asarray(bary)
    # DECA stores the 68-point "full" embedding with a leading batch axis of 1.
    if face_idx.ndim == 2 and face_idx.shape[0] == 1 and bary.ndim == 3:
        face_idx, bary = face_idx[0], bary[0]
    try:
        return LandmarkEmbedding(
            torch.as_tensor(face_idx.astype(np.int64)), torch.as_tensor(bary.astype(np.float32))
        )
    except (TypeError, ValueError) as err:
        raise FlameFileError(f"{source}: bad {name} landmark embedding: {err}") from None


def load_landmark_embeddings(path: str | os.PathLike) -> dict[str, LandmarkEmbedding]:
    """Read an official landmark embedding file.

    ``.npy`` (pickled dict, FLAME/DECA): returns 'static' (51), 'dynamic' (79 x 17 contour
    look-up table) and 'full' (68) when present. ``.npz`` (MediaPipe): returns 'mediapipe' with
    ``landmark_indices``.
    """
    source = os.fspath(path)
    if source.endswith(".npz"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"landmark embedding not found: {source}")
        with np.load(source, allow_pickle=False) as npz:
            missing = {"lmk_face_idx", "lmk_b_coords", "landmark_indices"} - set(npz.files)
            if missing:
                raise FlameFileError(f"{source}: MediaPipe embedding lacks {sorted(missing)}")
            emb = _embedding(npz["lmk_face_idx"], npz["lmk_b_coords"], source, "mediapipe")
            indices = torch.as_tensor(npz["landmark_indices"].astype(np.int64))
        return {"mediapipe": LandmarkEmbedding(emb.face_idx, emb.bary, indices)}

    content = load_pickled_npy(source)
    if not isinstance(content, dict):
        raise FlameFileError(f"{source}: expected a pickled dict, got {type(content).__name__}")
    out = {}
    for name in ("static", "dynamic", "full"):
        idx_key, bary_key = f"{name}_lmk_faces_idx", f"{name}_lmk_bary_coords"
        if idx_key in content and bary_key in content:
            out[name] = _embedding(content[idx_key], content[bary_key], source, name)
    if not out:
        raise FlameFileError(f"{source}: no *_lmk_faces_idx / *_lmk_bary_coords pairs (keys: {sorted(content)})")
    return out


def select_dynamic_contour(dynamic: LandmarkEmbedding, head_rotation: torch.Tensor) -> LandmarkEmbedding:
    """Per-sample jaw-contour embedding (B, 17) from the 79-row look-up table.

    ``head_rotation`` (B, 3, 3) is the composed rotation of the neck chain (global @ neck). The row
    is the yaw angle in whole degrees, as official DecaFLAME ``_find_dynamic_lmk_idx_and_bcoords``
    computes it (no sign flip there, unlike the smplx lbs.py variant).
    """
    if dynamic.face_idx.ndim != 2 or dynamic.face_idx.shape[0] != 2 * _CONTOUR_MAX_DEG + 1:
        raise ValueError(f"dynamic embedding must be ({2 * _CONTOUR_MAX_DEG + 1}, L), got {tuple(dynamic.face_idx.shape)}")
    r = head_rotation
    yaw = torch.atan2(-r[:, 2, 0], torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2))
    deg = torch.round(torch.clamp(yaw * 180.0 / math.pi, max=_CONTOUR_MAX_DEG)).long()
    row = torch.where(deg < 0, torch.clamp(_CONTOUR_MAX_DEG - deg, max=2 * _CONTOUR_MAX_DEG), deg)
    row = row.to(dynamic.face_idx.device)
    return LandmarkEmbedding(dynamic.face_idx[row], dynamic.bary[row])

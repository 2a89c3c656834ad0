"""Surface Field (GNARF, Bergman et al. 2022): carry a 3D point from a deformed mesh to its canonical mesh.

A point x near the target mesh is written in the frame of its nearest target triangle,
x = Σ b_k t_k + d·n_t (b: barycentrics of its projection onto the triangle's plane, unclamped;
d: signed height along the unit normal), and rebuilt in the same frame of the canonical triangle:
x_c = Σ b_k c_k + d·n_c. Official: training/deformer/deformation.py ``surface_field_deformation``
(l.458-514); "nearest" is pytorch3d's point-face distance (see model.deformation.face_search), the
barycentrics deform_utils.py ``get_barycentric`` (l.47-71), the normals ``get_face_normal`` (l.74-83).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.deformation.face_search import FaceEdges, nearest_face
from model.deformation.nearest import _blend, _gather_tris, plane_barycentric


def triangle_normals(tris: torch.Tensor) -> torch.Tensor:
    """Unit normals (..., 3) of triangles (..., 3, 3); right-hand winding (official get_face_normal)."""
    return F.normalize(torch.cross(tris[..., 1, :] - tris[..., 0, :], tris[..., 2, :] - tris[..., 0, :], dim=-1), dim=-1)


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals (B, F, 3) of triangles faces (F,3) over verts (B,N,3)."""
    return triangle_normals(verts[:, faces.long()])


def surface_field_offsets(
    points: torch.Tensor,
    target_verts: torch.Tensor,
    canonical_verts: torch.Tensor,
    faces: torch.Tensor,
    min_triangle_area: float,
    table: FaceEdges | None = None,
    max_pairs: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets x_c - x (B,P,3) for points (B,P,3), and their squared distance (B,P) to the target mesh.

    target_verts / canonical_verts (B,N,3) share faces (F,3); ``table`` is their cached
    ``face_edges(faces)``. Distances and the nearest face follow pytorch3d with ``min_triangle_area``
    (official 5e-3). The offset is written as Σ b_k (c_k - t_k) + d (n_c - n_t): mathematically
    x_c - x, and exactly zero whenever the two meshes are identical (so an undeformed head maps
    every point to itself bit for bit).
    """
    if target_verts.shape != canonical_verts.shape:
        raise ValueError(
            f"target and canonical vertices must have the same shape, got "
            f"{tuple(target_verts.shape)} and {tuple(canonical_verts.shape)}"
        )
    faces = faces.long()
    hit = nearest_face(points, target_verts, faces, min_triangle_area, table, max_pairs)
    tri_t = _gather_tris(target_verts, faces, hit.face)  # (B, P, 3, 3)
    tri_c = _gather_tris(canonical_verts, faces, hit.face)
    n_t, n_c = triangle_normals(tri_t), triangle_normals(tri_c)
    bary = plane_barycentric(points, tri_t)
    height = ((points - _blend(bary, tri_t)) * n_t).sum(-1, keepdim=True)  # (B, P, 1)
    offsets = _blend(bary, tri_c - tri_t) + height * (n_c - n_t)
    return offsets, hit.dist_sq

"""Surface Field (GNARF, Bergman et al. 2022): carry a 3D point from a deformed mesh to its canonical mesh.

A point x near the target mesh is written in the frame of its closest target triangle,
x = Σ b_k t_k + d·n_t (b: barycentrics of its projection, d: signed height along the unit normal),
and rebuilt in the same frame of the canonical triangle: x_c = Σ b_k c_k + d·n_c.
Official: training/deformer/deformation.py ``surface_field_deformation``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.deformation.nearest import _blend, nearest_triangle


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals (B, F, 3) of triangles faces (F,3) over verts (B,N,3); right-hand winding."""
    tris = verts[:, faces.long()]
    return F.normalize(torch.cross(tris[:, :, 1] - tris[:, :, 0], tris[:, :, 2] - tris[:, :, 0], dim=-1), dim=-1)


def surface_field_offsets(
    points: torch.Tensor,
    target_verts: torch.Tensor,
    canonical_verts: torch.Tensor,
    faces: torch.Tensor,
    max_pairs: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets x_c - x (B,P,3) for points (B,P,3), and their squared distance (B,P) to the target mesh.

    target_verts / canonical_verts (B,N,3) share faces (F,3). The offset is written as
    Σ b_k (c_k - t_k) + d (n_c - n_t): mathematically x_c - x, and exactly zero whenever the two
    meshes are identical (so an undeformed head maps every point to itself bit for bit).
    """
    if target_verts.shape != canonical_verts.shape:
        raise ValueError(
            f"target and canonical vertices must have the same shape, got "
            f"{tuple(target_verts.shape)} and {tuple(canonical_verts.shape)}"
        )
    hit = nearest_triangle(points, target_verts, faces, max_pairs)
    faces = faces.long()
    idx = hit.face  # (B, P)

    def pick(per_face: torch.Tensor) -> torch.Tensor:  # (B, F, ...) -> (B, P, ...)
        flat = per_face.reshape(per_face.shape[0], per_face.shape[1], -1)
        out = torch.gather(flat, 1, idx[..., None].expand(-1, -1, flat.shape[-1]))
        return out.reshape(*idx.shape, *per_face.shape[2:])

    tri_t, tri_c = pick(target_verts[:, faces]), pick(canonical_verts[:, faces])  # (B, P, 3, 3)
    n_t, n_c = pick(face_normals(target_verts, faces)), pick(face_normals(canonical_verts, faces))
    height = ((points - _blend(hit.bary, tri_t)) * n_t).sum(-1, keepdim=True)  # (B, P, 1)
    offsets = _blend(hit.bary, tri_c - tri_t) + height * (n_c - n_t)
    return offsets, hit.dist_sq

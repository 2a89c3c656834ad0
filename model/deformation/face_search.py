"""The nearest-surface search of the official neck-pose field: pytorch3d's point-to-face distance.

Official: training/deformer/deform_utils.py ``point_to_face_coord`` (l.95-139) calls pytorch3d's
``_C.point_face_dist_forward`` with ``min_triangle_area = _DEFAULT_MIN_TRIANGLE_AREA = 5e-3`` (l.9,
l.123-130). In pytorch3d (csrc/utils/geometry_utils.cuh ``PointTriangle3DistanceForward``,
``IsInsideTriangle``, ``PointLine3DistanceForward``) the squared distance of p to a triangle is

- t², t the height of p over the triangle's plane, when the triangle's area is at least
  ``min_triangle_area`` AND the projection's barycentrics all lie in [0, 1];
- otherwise the smallest squared distance from p to the triangle's three edges (segments; an edge
  shorter than 1e-4, |e|² < kEpsilon = 1e-8, counts as its first end point).

The simplified FLAME proxy (simplify_baricentric2.npy on the FLAME template, x3) has triangle areas
1.6e-5 .. 4.1e-3 (median 1.1e-3; measured), all under 5e-3: the official field measures the
distance to the nearest *edge* of the proxy and picks a triangle that owns that edge. A point is
then equally near both triangles of its nearest edge (every triangle around its nearest vertex),
and pytorch3d's pick among them is float32 rounding plus its reduction order (CPU: the last of
bit-equal minima; CUDA: a block reduction). We make the pick reproducible: the lowest face index
among faces within ``TIE_RTOL`` of the minimum. The search runs in float64: its product form
rounds by ~1e-16·|p|², far inside that margin (in float32 the rounding, ~1e-7·|p|², would exceed
the distance differences between neighbouring edges near the surface).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from model.compiled import compiled, compiling
from model.deformation.nearest import _check

# pytorch3d geometry_utils kEpsilon: edges with |e|² below it are points; normals need |n| above it.
PYTORCH3D_EPS = 1e-8
# Faces whose distance is within this relative margin of the minimum count as tied (far above the
# float64 rounding of the search, far below any difference of geometric meaning).
TIE_RTOL = 1e-9
TIE_ATOL = 1e-14  # squared world units (1e-7 world units): ties of points that lie on the mesh


class FaceEdges(NamedTuple):
    """Edge table of a triangle list; depends only on the faces, so it is built once per mesh."""

    edges: torch.Tensor  # (E, 2) long, unique, lower vertex id first
    first_face: torch.Tensor  # (E,) long, lowest index of the faces that own the edge


class NearestFace(NamedTuple):
    dist_sq: torch.Tensor  # (B, P) pytorch3d point-face squared distance to the chosen face
    face: torch.Tensor  # (B, P) long, index of the chosen face


def face_edges(faces: torch.Tensor) -> FaceEdges:
    """Unique edges of faces (F, 3) and, per edge, the lowest-index face that owns it."""
    faces = faces.long()
    n_faces = faces.shape[0]
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values  # (3F, 2)
    owner = torch.arange(n_faces, device=faces.device).repeat(3)
    edges, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    first = torch.full((len(edges),), n_faces, dtype=torch.long, device=faces.device)
    first = first.scatter_reduce(0, inverse, owner, reduce="amin")
    return FaceEdges(edges, first)


def triangle_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, F) areas of faces (F, 3) over verts (B, N, 3)."""
    tris = verts[:, faces.long()]
    return torch.linalg.vector_norm(torch.cross(tris[:, :, 1] - tris[:, :, 0], tris[:, :, 2] - tris[:, :, 0], dim=-1), dim=-1) / 2


class _EdgeData(NamedTuple):
    """Per-frame float64 edge quantities (B, E, ...) shared by all point chunks."""

    start: torch.Tensor  # (B, E, 3) first end point
    direction: torch.Tensor  # (B, E, 3) second minus first
    len_sq: torch.Tensor  # (B, E) |e|²
    inv_len_sq: torch.Tensor  # (B, E) 1/|e|², 0 for point-like edges (pytorch3d: t = 0)
    start_sq: torch.Tensor  # (B, E) |start|²
    start_dir: torch.Tensor  # (B, E) start · direction
    first_face: torch.Tensor  # (E,)


class _PlaneData(NamedTuple):
    """Per-frame float64 quantities of the faces whose interior may count (area >= min area)."""

    faces: torch.Tensor  # (L,) long, face indices
    v0: torch.Tensor  # (B, L, 3)
    normal: torch.Tensor  # (B, L, 3) unit normal (pytorch3d's: cross(v2 - v0, v1 - v0) / (|n| + eps))
    e0: torch.Tensor  # (B, L, 3) v1 - v0
    e1: torch.Tensor  # (B, L, 3) v2 - v0
    gram: torch.Tensor  # (B, L, 3) d00, d01, d11 of pytorch3d's BarycentricCoords3Forward
    usable: torch.Tensor  # (B, L) bool: area >= min area and |n| > eps


def _edge_data(verts: torch.Tensor, table: FaceEdges) -> _EdgeData:
    start = verts[:, table.edges[:, 0]]
    direction = verts[:, table.edges[:, 1]] - start
    len_sq = direction.square().sum(-1)
    inv = torch.where(len_sq < PYTORCH3D_EPS, torch.zeros_like(len_sq), 1 / len_sq.clamp_min(PYTORCH3D_EPS))
    start_sq, start_dir = start.square().sum(-1), (start * direction).sum(-1)
    return _EdgeData(start, direction, len_sq, inv, start_sq, start_dir, table.first_face)


def _plane_data(verts: torch.Tensor, faces: torch.Tensor, min_area: float) -> _PlaneData:
    area = triangle_areas(verts, faces)  # (B, F)
    if verts.is_cuda:
        chosen = torch.arange(len(faces), device=faces.device)  # no host sync; masked by ``usable``
    else:
        chosen = (area >= min_area).any(0).nonzero().squeeze(-1)  # usually empty (FLAME proxy)
    tris = verts[:, faces[chosen]]  # (B, L, 3, 3)
    v0, v1, v2 = tris.unbind(-2)
    e0, e1 = v1 - v0, v2 - v0
    cross = torch.cross(e1, e0, dim=-1)
    norm = torch.linalg.vector_norm(cross, dim=-1)
    gram = torch.stack([e0.square().sum(-1), (e0 * e1).sum(-1), e1.square().sum(-1)], dim=-1)
    usable = (area[:, chosen] >= min_area) & (norm > PYTORCH3D_EPS)
    return _PlaneData(chosen, v0, cross / (norm[..., None] + PYTORCH3D_EPS), e0, e1, gram, usable)


def _edge_sq_products(points: torch.Tensor, edges: _EdgeData) -> torch.Tensor:
    """(B, c, E) squared point-edge distances through two small products (eager: ~10 passes)."""
    # |p - a - t e|² = |p - a|² - t (2 (p - a)·e - t |e|²), t = clamp((p - a)·e / |e|², 0, 1). In float64
    # the expansion's rounding (~1e-16 · |p|²) is far below TIE_RTOL; float64 products never run in TF32.
    p_sq = points.square().sum(-1, keepdim=True)  # (B, c, 1)
    to_start_sq = p_sq - 2 * (points @ edges.start.transpose(1, 2)) + edges.start_sq[:, None]
    top = points @ edges.direction.transpose(1, 2) - edges.start_dir[:, None]  # (p - a)·e
    t = (top * edges.inv_len_sq[:, None]).clamp(0, 1)
    return (to_start_sq - t * (2 * top - t * edges.len_sq[:, None])).clamp_min(0)


def _edge_sq_pointwise(points: torch.Tensor, edges: _EdgeData) -> torch.Tensor:
    """The same distances as one pointwise expression, for torch.compile to fuse into the reductions
    (nothing of size (B, c, E, 3) is stored then)."""
    rel = points[:, :, None] - edges.start[:, None]  # (B, c, E, 3)
    top = (rel * edges.direction[:, None]).sum(-1)
    t = (top * edges.inv_len_sq[:, None]).clamp(0, 1)
    return (rel.square().sum(-1) - t * (2 * top - t * edges.len_sq[:, None])).clamp_min(0)


def _chunk_search(
    points: torch.Tensor, edges: _EdgeData, plane: _PlaneData, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """points (B, c, 3) float64 -> (min squared distance (B, c), chosen face (B, c))."""
    edge_sq = _edge_sq_pointwise(points, edges) if fused else _edge_sq_products(points, edges)
    best = edge_sq.amin(-1)

    if plane.faces.numel():
        rel = points[:, :, None] - plane.v0[:, None]  # (B, c, L, 3)
        height = (rel * plane.normal[:, None]).sum(-1)
        # barycentrics of the projection p + t n (pytorch3d BarycentricCoords3Forward, +kEpsilon)
        proj = rel - height[..., None] * plane.normal[:, None]
        d20, d21 = (proj * plane.e0[:, None]).sum(-1), (proj * plane.e1[:, None]).sum(-1)
        d00, d01, d11 = (g[:, None] for g in plane.gram.unbind(-1))
        denom = d00 * d11 - d01 * d01 + PYTORCH3D_EPS
        w1, w2 = (d11 * d20 - d01 * d21) / denom, (d00 * d21 - d01 * d20) / denom
        w0 = 1 - w1 - w2
        inside = (w0 >= 0) & (w0 <= 1) & (w1 >= 0) & (w1 <= 1) & (w2 >= 0) & (w2 <= 1) & plane.usable[:, None]
        plane_sq = torch.where(inside, height.square(), torch.full_like(height, torch.inf))
        best = torch.minimum(best, plane_sq.amin(-1))
    else:
        plane_sq = None

    # The lowest face index among the faces within the tie margin of the minimum. A face is that
    # near iff one of its edges is (or, for a large face, its interior), so the edges' first owners
    # give it without a per-face pass.
    limit = (best * (1 + TIE_RTOL) + TIE_ATOL)[..., None]
    none = torch.iinfo(torch.long).max
    face = torch.where(edge_sq <= limit, edges.first_face, none).amin(-1)
    if plane_sq is not None:
        face = torch.minimum(face, torch.where(plane_sq <= limit, plane.faces, none).amin(-1))
    return best, face


def _compiled_search(device: torch.device) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """The chunk search compiled for CUDA (inductor fuses the pointwise distances with the two
    reductions; the first call compiles for ~20 s), or None: on CPU, or with P4D_EAGER=1 (model.compiled)."""
    return compiled(_chunk_search) if compiling(device) else None


def nearest_face(
    points: torch.Tensor,
    verts: torch.Tensor,
    faces: torch.Tensor,
    min_triangle_area: float,
    table: FaceEdges | None = None,
    max_pairs: int = 1 << 22,
) -> NearestFace:
    """The official (pytorch3d) nearest face of verts (B, N, 3) / faces (F, 3) to points (B, P, 3).

    ``table`` is ``face_edges(faces)``, passed in when cached. No autograd (the official field is
    a fixed function of FLAME); ``max_pairs`` bounds the point-edge pairs held at once.
    """
    _check(points, verts)
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces must be a non-empty (F, 3) index tensor, got {tuple(faces.shape)}")
    faces = faces.long()
    table = face_edges(faces) if table is None else table
    with torch.no_grad():
        verts64 = verts.detach().double()
        edges = _edge_data(verts64, table)
        plane = _plane_data(verts64, faces, min_triangle_area)
        pts = points.detach().double()
        bsz, n_edges = pts.shape[0], table.edges.shape[0] + plane.faces.shape[0]
        compiled = _compiled_search(points.device)
        # fused, a pair costs at most one float64 in memory instead of the eager ~8
        step = max(1, max_pairs * (8 if compiled else 1) // max(1, bsz * n_edges))
        if compiled is None:
            found = [_chunk_search(pts[:, s : s + step], edges, plane) for s in range(0, pts.shape[1], step)]
        else:
            found = [compiled(pts[:, s : s + step], edges, plane, True) for s in range(0, pts.shape[1], step)]
    dist_sq = torch.cat([d for d, _ in found], dim=1).to(points.dtype)
    return NearestFace(dist_sq, torch.cat([f for _, f in found], dim=1))

"""The simplified FLAME proxy mesh (~730 vertices, ~1.4K triangles) used for Surface-Field queries.

Official format (models/FLAME/simplify_baricentric2.npy, a pickled dict):
- ``idxs`` (Vs, 3) int64: three FLAME vertex ids per proxy vertex (a FLAME triangle),
- ``baris`` (Vs, 3) float32: weights of those vertices (sum to 1; may be negative, i.e. the proxy
  vertex lies off the triangle, in its plane), so proxy = Σ baris · flame[idxs] for any pose;
- ``faces`` (Fs, 3) int64: proxy triangles over the Vs proxy vertices;
- ``coarse_face_region_idxs`` (Fs, 50) int64: per proxy triangle, the FLAME vertices it stands
  for, sorted ascending and padded with V (= 5023, the official "point at infinity" sentinel).
The official file has Vs = 730, Fs = 1394, and no region ever mixes eyeball and face vertices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from model.deformation.nearest import closest_point_barycentric, nearest_triangle

OFFICIAL_REGION_WIDTH = 50


@dataclass(frozen=True)
class ProxyMesh:
    source_vertices: torch.Tensor  # (Vs, 3) long: FLAME vertex ids (official 'idxs')
    source_weights: torch.Tensor  # (Vs, 3) float: their weights (official 'baris')
    faces: torch.Tensor  # (Fs, 3) long over proxy vertices (official 'faces')
    face_regions: torch.Tensor  # (Fs, K) long FLAME vertex ids padded with n_flame_vertices
    n_flame_vertices: int

    def __post_init__(self) -> None:
        vs = self.source_vertices.shape[0]
        if self.source_vertices.shape != (vs, 3) or self.source_weights.shape != (vs, 3):
            raise ValueError(
                f"proxy idxs/baris must both be (Vs, 3), got {tuple(self.source_vertices.shape)} "
                f"and {tuple(self.source_weights.shape)}"
            )
        if self.faces.dim() != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise ValueError(f"proxy faces must be a non-empty (Fs, 3), got {tuple(self.faces.shape)}")
        if int(self.faces.min()) < 0 or int(self.faces.max()) >= vs:
            raise ValueError(f"proxy faces index outside the {vs} proxy vertices")
        if int(self.source_vertices.min()) < 0 or int(self.source_vertices.max()) >= self.n_flame_vertices:
            raise ValueError(f"proxy idxs index outside the {self.n_flame_vertices} FLAME vertices")
        if self.face_regions.dim() != 2 or self.face_regions.shape[0] != len(self.faces):
            raise ValueError(
                f"coarse_face_region_idxs must be (Fs={len(self.faces)}, K), got {tuple(self.face_regions.shape)}"
            )

    @property
    def n_vertices(self) -> int:
        return self.source_vertices.shape[0]

    def vertices(self, flame_vertices: torch.Tensor) -> torch.Tensor:
        """Proxy vertices (B, Vs, 3) of posed FLAME meshes (B, V, 3)."""
        if flame_vertices.shape[1] != self.n_flame_vertices:
            raise ValueError(
                f"proxy mesh was built for {self.n_flame_vertices} FLAME vertices, got {flame_vertices.shape[1]}"
            )
        idx = self.source_vertices.to(flame_vertices.device)
        w = self.source_weights.to(flame_vertices)
        return (flame_vertices[:, idx] * w[None, :, :, None]).sum(-2)

    @classmethod
    def from_official(cls, arrays: Mapping[str, Any], n_flame_vertices: int) -> "ProxyMesh":
        """Read the official dict (already loaded, e.g. by model.flame.load_pickled_npy)."""
        missing = {"idxs", "baris", "faces"} - set(arrays)
        if missing:
            raise KeyError(f"proxy mesh arrays lack {sorted(missing)} (have {sorted(arrays)})")
        faces = torch.as_tensor(np.asarray(arrays["faces"], dtype=np.int64))
        regions = arrays.get("coarse_face_region_idxs")
        if regions is None:  # the older simplify_baricentric.npy has no regions
            regions = np.full((len(faces), 0), n_flame_vertices, dtype=np.int64)
        return cls(
            source_vertices=torch.as_tensor(np.asarray(arrays["idxs"], dtype=np.int64)),
            source_weights=torch.as_tensor(np.asarray(arrays["baris"], dtype=np.float32)),
            faces=faces,
            face_regions=torch.as_tensor(np.asarray(regions, dtype=np.int64)),
            n_flame_vertices=n_flame_vertices,
        )

    def to_official(self) -> dict[str, np.ndarray]:
        """The official dict layout (for writing a synthetic bundle's asset file)."""
        return {
            "idxs": self.source_vertices.cpu().numpy().astype(np.int64),
            "baris": self.source_weights.cpu().numpy().astype(np.float32),
            "faces": self.faces.cpu().numpy().astype(np.int64),
            "coarse_face_region_idxs": self.face_regions.cpu().numpy().astype(np.int64),
        }


def _farthest_points(points: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of n farthest-point samples of points (M, 3), starting from the one farthest from the mean."""
    n = min(n, len(points))
    chosen = [int((points - points.mean(0)).square().sum(-1).argmax())]
    dist = (points - points[chosen[0]]).square().sum(-1)
    for _ in range(n - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).square().sum(-1))
    return torch.tensor(chosen, dtype=torch.long)


def _triangle_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tris = verts[faces]
    return torch.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0], dim=-1).norm(dim=-1) / 2


def _cluster(verts: torch.Tensor, faces: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Cluster id (V,) per vertex: farthest-point seeds per part (count ∝ part area), nearest seed in part."""
    face_label = labels[faces[:, 0]]
    areas = _triangle_areas(verts, faces)
    parts = torch.unique(labels)
    total = float(areas.sum())
    cluster = torch.empty(len(verts), dtype=torch.long)
    next_id = 0
    for part in parts.tolist():
        members = (labels == part).nonzero().squeeze(-1)
        share = float(areas[face_label == part].sum()) / total if total > 0 else len(members) / len(verts)
        seeds = members[_farthest_points(verts[members], max(4, round(n_clusters * share)))]
        nearest = torch.cdist(verts[members], verts[seeds]).argmin(-1)
        cluster[members] = nearest + next_id
        next_id += len(seeds)
    return cluster


def build_proxy_mesh(
    vertices: torch.Tensor | np.ndarray,
    faces: torch.Tensor | np.ndarray,
    n_vertices: int = 730,
    part_labels: torch.Tensor | np.ndarray | None = None,
    max_faces: int | None = 1400,
    region_width: int = OFFICIAL_REGION_WIDTH,
) -> ProxyMesh:
    """Simplify a FLAME-topology mesh (V,3)/(F,3) into a proxy in the official format.

    Vertex clustering: farthest-point seeds (per part, so eyeballs never merge with skin), each
    vertex joins its nearest seed; a proxy vertex is the point of the FLAME surface closest to its
    cluster's mean, stored as a FLAME triangle + barycentrics; a FLAME triangle spanning three
    clusters becomes a proxy triangle (winding kept, so normals still point outwards). The
    region of a proxy triangle is the FLAME vertices of its three clusters. If the result has
    more than ``max_faces`` triangles the seed count is lowered and the build repeated.
    """
    verts = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    tri = torch.as_tensor(np.asarray(faces).astype(np.int64))
    if verts.dim() != 2 or verts.shape[1] != 3 or tri.dim() != 2 or tri.shape[1] != 3:
        raise ValueError(f"need vertices (V, 3) and faces (F, 3), got {tuple(verts.shape)} and {tuple(tri.shape)}")
    if part_labels is None:
        labels = torch.zeros(len(verts), dtype=torch.long)
    else:
        labels = torch.as_tensor(np.asarray(part_labels)).long()
    if labels.shape != (len(verts),):
        raise ValueError(f"part_labels must be (V={len(verts)},), got {tuple(labels.shape)}")
    if n_vertices < 4:
        raise ValueError(f"a proxy mesh needs at least 4 vertices, got n_vertices={n_vertices}")

    while True:
        cluster = _cluster(verts, tri, labels, n_vertices)
        corners = cluster[tri]  # (F, 3)
        a, b, c = corners.unbind(1)
        corners = corners[(a != b) & (b != c) & (a != c)]
        key = corners.sort(dim=1).values
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(key), dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(len(key)), reduce="amin"
        )
        proxy_faces = corners[first.sort().values]
        if max_faces is None or len(proxy_faces) <= max_faces or n_vertices <= 4:
            break
        n_vertices = max(4, int(n_vertices * max_faces / len(proxy_faces) * 0.98))

    # Keep only clusters used by some proxy triangle, renumbered 0..Vs-1.
    used = torch.unique(proxy_faces)
    remap = torch.full((int(cluster.max()) + 1,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    proxy_faces = remap[proxy_faces]
    n_clusters = int(cluster.max()) + 1
    sums = torch.zeros(n_clusters, 3).index_add_(0, cluster, verts)
    counts = torch.zeros(n_clusters).index_add_(0, cluster, torch.ones(len(verts)))
    means = (sums / counts.clamp_min(1)[:, None])[used]

    # Express each proxy vertex as a point on the FLAME surface (closest point to the cluster mean),
    # searching only the FLAME triangles of the same part.
    seed_label = labels[(cluster[:, None] == used[None]).float().argmax(0)]
    source_vertices = torch.empty(len(used), 3, dtype=torch.long)
    source_weights = torch.empty(len(used), 3)
    for part in torch.unique(seed_label).tolist():
        rows = (seed_label == part).nonzero().squeeze(-1)
        part_faces = tri[(labels[tri] == part).all(-1)]
        if len(part_faces) == 0:  # a part too small to own a whole triangle: use those touching it
            part_faces = tri[(labels[tri] == part).any(-1)]
        hit = nearest_triangle(means[None, rows], verts[None], part_faces)
        chosen = part_faces[hit.face[0]]
        source_vertices[rows] = chosen
        source_weights[rows] = closest_point_barycentric(means[rows], verts[chosen])

    regions = torch.full((len(proxy_faces), region_width), len(verts), dtype=torch.long)
    members_of = [torch.nonzero(cluster == c).squeeze(-1) for c in used.tolist()]
    proxy_verts = (verts[source_vertices] * source_weights[..., None]).sum(1)
    for i, f in enumerate(proxy_faces.tolist()):
        members = torch.cat([members_of[j] for j in f])
        if len(members) > region_width:  # keep the ones nearest the triangle's centre
            centre = proxy_verts[f].mean(0)
            members = members[(verts[members] - centre).square().sum(-1).argsort()[:region_width]]
        members = members.sort().values
        regions[i, : len(members)] = members
    return ProxyMesh(source_vertices, source_weights, proxy_faces, regions, len(verts))

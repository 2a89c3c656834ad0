"""A small triangle rasteriser in plain torch (replaces pytorch3d's MeshRasterizer for the FLAME meshes).

One fragment per pixel, nearest depth wins, perspective-correct barycentrics, optional back-face
culling. Work is tiled: every triangle is tested only against the pixels of the tiles its
bounding box touches, in chunks of ``chunk`` pixel-triangle tests, so memory stays bounded for
~10K triangles at 512². The discrete part (coverage, z-buffer) runs without autograd; the winning
triangle's barycentrics are recomputed with autograd, so interpolated attributes are differentiable
with respect to vertex positions and vertex attributes (coverage itself is not).

Image convention (same as model.rendering.RaySampler): x to the right, y down, pixel (row i,
col j) covers [j, j+1) x [i, i+1) in pixel units, its centre at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

ZNEAR = 0.1  # official training/deformer/mesh_renderer.py: triangles nearer than this are dropped


class Fragments(NamedTuple):
    face: torch.Tensor  # (B, H, W) long, -1 where no triangle covers the pixel centre
    bary: torch.Tensor  # (B, H, W, 3) perspective-correct barycentrics (0 on background)
    depth: torch.Tensor  # (B, H, W) camera depth of the visible surface (0 on background)

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, H, W) float coverage."""
        return (self.face >= 0).to(self.bary.dtype)[:, None]


def project_points(points: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor, size: int) -> torch.Tensor:
    """World points (B,N,3) -> (B,N,3) = (x, y) pixel coordinates and positive depth, for a size² image.

    cam2world (B,4,4) is OpenGL (camera looks down -z, +y up); intrinsics (B,3,3) are normalised
    by image size (the 25-float label). Inverse of the ray construction in model.rendering.
    """
    # Geometry stays in fp32 under autocast: a bf16 projection would move pixels and break the z-buffer.
    with torch.autocast(points.device.type, enabled=False):
        return _project_fp32(points.float(), cam2world.float(), intrinsics.float(), size)


def _project_fp32(points: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor, size: int) -> torch.Tensor:
    rot, origin = cam2world[:, :3, :3], cam2world[:, None, :3, 3]
    cam = (points - origin) @ rot  # world -> camera: R^T (p - t), row-vector form
    depth = -cam[..., 2]
    # image y grows downwards while camera y grows upwards; flip y, divide by depth, apply K.
    ndc = torch.stack([cam[..., 0], -cam[..., 1], depth], dim=-1) @ intrinsics.transpose(1, 2)
    xy = ndc[..., :2] / depth[..., None] * size
    return torch.cat([xy, depth[..., None]], dim=-1)


def _edge(u: torch.Tensor, v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """2D cross product (v - u) x (p - u) over the last dim (x, y)."""
    return (v[..., 0] - u[..., 0]) * (p[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (p[..., 0] - u[..., 0])


def _screen_barycentric(tris: torch.Tensor, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tris (..., 3, 3) screen (x, y, depth), pix (..., 2) -> screen-space bary (..., 3), depth (...)."""
    a, b, c = tris.unbind(-2)
    area = _edge(a, b, c)
    bary = torch.stack([_edge(b, c, pix), _edge(c, a, pix), _edge(a, b, pix)], dim=-1) / area[..., None]
    # Perspective: 1/z is affine in screen space.
    inv_depth = (bary / tris[..., 2]).sum(-1)
    return bary, 1.0 / inv_depth


def _tile_pairs(
    tris: torch.Tensor, keep: torch.Tensor, size: int, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(triangle, tile) pairs whose bounding boxes overlap: flat triangle ids, tile x, tile y."""
    xy = tris[..., :2].reshape(-1, 3, 2)
    lo = torch.ceil(xy.amin(1) - 0.5).clamp(0, size - 1).long()  # first covered pixel centre
    hi = torch.floor(xy.amax(1) - 0.5).clamp(-1, size - 1).long()  # last covered pixel centre
    keep = keep.reshape(-1) & (hi >= lo).all(-1) & (xy.amin(1) < size - 0.5).all(-1)
    tri_id = keep.nonzero().squeeze(-1)
    t_lo, t_hi = lo[tri_id] // tile, hi[tri_id] // tile
    span = t_hi - t_lo + 1  # (T, 2)
    counts = span[:, 0] * span[:, 1]
    pair_tri = torch.repeat_interleave(torch.arange(len(tri_id), device=tris.device), counts)
    first_pair = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    k = torch.arange(len(pair_tri), device=tris.device) - first_pair  # tile number within the box
    tx = t_lo[pair_tri, 0] + k % span[pair_tri, 0]
    ty = t_lo[pair_tri, 1] + k // span[pair_tri, 0]
    return tri_id[pair_tri], tx, ty


@torch.no_grad()
def _visible_faces(
    screen: torch.Tensor, faces: torch.Tensor, size: int, cull_backfaces: bool, tile: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel winning face (B,H,W) long and its depth, by a z-buffer over tiled coverage tests."""
    bsz, n_faces = screen.shape[0], faces.shape[0]
    tris = screen[:, faces]  # (B, F, 3, 3)
    area = _edge(tris[..., 0, :], tris[..., 1, :], tris[..., 2, :])
    # Screen y points down, so a triangle wound counter-clockwise as seen from the camera (outward
    # normal towards the camera) has negative screen area.
    keep = (area < 0) if cull_backfaces else (area != 0)
    keep = keep & (tris[..., 2] > ZNEAR).all(-1)
    tri_id, tx, ty = _tile_pairs(tris, keep, size, tile)

    offs = torch.arange(tile, device=screen.device)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    dx, dy = dx.reshape(-1), dy.reshape(-1)
    flat_tris = tris.reshape(-1, 3, 3)
    pix_ids, depths, face_ids = [], [], []
    step = max(1, chunk // (tile * tile))
    for s in range(0, len(tri_id), step):
        t = tri_id[s : s + step]
        px = tx[s : s + step, None] * tile + dx  # (n, tile²)
        py = ty[s : s + step, None] * tile + dy
        centre = torch.stack([px, py], dim=-1).to(screen.dtype) + 0.5
        bary, depth = _screen_barycentric(flat_tris[t][:, None], centre)
        inside = (bary >= 0).all(-1) & (px < size) & (py < size) & (depth > 0)
        b = (t // n_faces)[:, None].expand_as(px)
        pix_ids.append(((b * size + py) * size + px)[inside])
        depths.append(depth[inside])
        face_ids.append((t % n_faces)[:, None].expand_as(px)[inside])
    n_pix = bsz * size * size
    face_buf = torch.full((n_pix,), -1, dtype=torch.long, device=screen.device)
    zbuf = torch.zeros(n_pix, dtype=screen.dtype, device=screen.device)
    if pix_ids:
        pix, depth, face = torch.cat(pix_ids), torch.cat(depths), torch.cat(face_ids)
        zmin = torch.full((n_pix,), float("inf"), dtype=screen.dtype, device=screen.device)
        zmin = zmin.scatter_reduce(0, pix, depth, reduce="amin")
        win = depth <= zmin[pix]
        # Exact depth ties (shared edges, duplicated triangles) go to the lowest face index.
        face_buf.fill_(n_faces).scatter_reduce_(0, pix[win], face[win], reduce="amin")
        face_buf[face_buf == n_faces] = -1
        zbuf = torch.where(face_buf >= 0, zmin, zbuf)
    shape = (bsz, size, size)
    return face_buf.reshape(shape), zbuf.reshape(shape)


def rasterize(
    screen: torch.Tensor,
    faces: torch.Tensor,
    size: int,
    cull_backfaces: bool = True,
    tile: int = 16,
    chunk: int = 1 << 22,
) -> Fragments:
    """Rasterise triangles faces (F,3) over screen vertices (B,N,3) = (x, y, depth) into size² images.

    ``cull_backfaces`` drops triangles whose right-hand (outward, for FLAME) normal faces away
    from the camera.
    """
    if screen.dim() != 3 or screen.shape[-1] != 3:
        raise ValueError(f"screen vertices must be (B, N, 3) = (x, y, depth), got {tuple(screen.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    faces = faces.long().to(screen.device)
    screen = screen.float()
    face, _ = _visible_faces(screen, faces, size, cull_backfaces, tile, chunk)
    # Recompute the winners' barycentrics with autograd (vertex positions -> attributes).
    covered = face >= 0
    b_idx, row, col = covered.nonzero(as_tuple=True)
    tris = screen[b_idx[:, None], faces[face[covered]]]  # (K, 3, 3)
    centre = torch.stack([col, row], dim=-1).to(screen.dtype) + 0.5
    bary_s, depth = _screen_barycentric(tris, centre)
    bary = bary_s / tris[..., 2] * depth[:, None]  # perspective-correct
    bary_img = screen.new_zeros(*face.shape, 3).index_put((b_idx, row, col), bary)
    depth_img = screen.new_zeros(face.shape).index_put((b_idx, row, col), depth)
    return Fragments(face, bary_img, depth_img)


def interpolate(fragments: Fragments, attributes: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-pixel attributes (B, C, H, W) from per-vertex attributes (B, N, C) or (N, C); 0 on background."""
    face = fragments.face
    bsz = face.shape[0]
    if attributes.dim() == 2:
        attributes = attributes.expand(bsz, -1, -1)
    faces = faces.long().to(face.device)
    corner = faces[face.clamp_min(0)]  # (B, H, W, 3)
    flat = corner.reshape(bsz, -1, 1).expand(-1, -1, attributes.shape[-1])
    values = torch.gather(attributes, 1, flat).reshape(*corner.shape, -1)  # (B, H, W, 3, C)
    out = (fragments.bary[..., None] * values).sum(-2) * (face >= 0)[..., None]
    return out.permute(0, 3, 1, 2)

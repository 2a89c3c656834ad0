"""Neck-pose rotation field: the Surface Field on the proxy mesh, tabulated on voxel grids.

Paper (Portrait4D-v2 §3): the neck rotation is not in the motion embedding; an explicit field on
a 24³ grid removes it, every grid point's deformation coming from a Surface Field on the FLAME
mesh, and each sample point's deformation is interpolated from the grid.
Official (training/deformer/deformation.py ``FlameDeformationModuleOnlyHead.forward``) tabulates
the Surface-Field *offsets* x_c - x (not rotations) at voxel centres of a 24³ grid and of an 8³ grid
that is box-filtered twice; a sample point takes the fine offset near the mesh and fades to the
smooth one away from it, w = exp(-1000·relu(d² - 3e-3)), d² being the interpolated squared
distance to the mesh. Outside the grid the offsets fade to zero (zero padding), i.e. identity.

Official line by line (deformation.py): grid points l.519-521 (voxel centres, x slowest; ours z
slowest, the same points), Surface Field l.458-514 on the simplified mesh with the neck-free head as
canonical (l.477-478), 8³ box filter l.715-720 (3x3x3 mean, replicate padding, twice), lookups
l.722-729 (``grid_sample`` bilinear, zeros padding, align_corners=True after world2grid l.529-534,
which maps the outer voxel centres to ±1), fade l.731-734. d² is pytorch3d's point-face distance
(model.deformation.face_search), not the distance to the closest surface point. docs/fidelity.md
lists where ours departs and by how much.

Everything that depends only on the grid (the voxel centres) is built once and cached; the mesh's
edge table comes in with the faces (model.deformation.FlameHead keeps it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.deformation.config import DeformationConfig
from model.deformation.face_search import FaceEdges
from model.deformation.surface_field import surface_field_offsets

_GRID_POINTS: dict[tuple, torch.Tensor] = {}


def voxel_centres(
    resolution: int, box_warp: float, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(R, R, R, 3) xyz of voxel centres of the cube [-box_warp/2, box_warp/2]³, laid out [z, y, x].

    The [z, y, x] layout is what ``F.grid_sample`` reads as (D, H, W) for (x, y, z) lookups.
    """
    t = ((torch.arange(resolution, device=device, dtype=dtype) + 0.5) / resolution - 0.5) * box_warp
    z, y, x = torch.meshgrid(t, t, t, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def box_filter3d(volume: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3x3 mean filters over (B, C, D, H, W) with edge replication (official smoothing)."""
    channels = volume.shape[1]
    kernel = torch.full((channels, 1, 3, 3, 3), 1.0 / 27, dtype=volume.dtype, device=volume.device)
    for _ in range(passes):
        volume = F.conv3d(F.pad(volume, (1, 1, 1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return volume


def grid_points(
    resolutions: tuple[int, ...], box_warp: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(Σ R³, 3) voxel centres of the grids, one after the other; built once per device and dtype."""
    key = (resolutions, box_warp, str(device), dtype)
    if key not in _GRID_POINTS:
        _GRID_POINTS[key] = torch.cat([voxel_centres(r, box_warp, device, dtype).reshape(-1, 3) for r in resolutions])
    return _GRID_POINTS[key]


def _tabulate(
    resolutions: tuple[int, ...],
    target: torch.Tensor,
    canonical: torch.Tensor,
    faces: torch.Tensor,
    cfg: DeformationConfig,
    table: FaceEdges | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per resolution R: Surface-Field offsets (B,3,R,R,R) and squared distances (B,1,R,R,R) at the
    voxel centres; all grids go through one nearest-face search."""
    bsz = target.shape[0]
    points = grid_points(resolutions, cfg.box_warp, target.device, target.dtype)[None].expand(bsz, -1, -1)
    offsets, dist_sq = surface_field_offsets(
        points, target, canonical, faces, cfg.min_triangle_area, table, cfg.face_search_pairs
    )
    sizes = [r**3 for r in resolutions]
    out = []
    for r, off, d in zip(resolutions, offsets.split(sizes, 1), dist_sq.split(sizes, 1)):
        shape = (bsz, r, r, r)
        out.append((off.reshape(*shape, 3).permute(0, 4, 1, 2, 3), d.reshape(*shape)[:, None]))
    return out


class NeckRotationField:
    """Deformation from the posed (target) space to the neck-free space for one batch of heads.

    Callable as the renderer's ``deform_fn``: coords (B, P, 3) -> coords (B, P, 3).
    Built without autograd (a fixed function of FLAME, as in the official code); the lookup is
    differentiable with respect to the query coordinates.
    """

    def __init__(
        self, fine_offsets: torch.Tensor, fine_dist_sq: torch.Tensor, smooth_offsets: torch.Tensor, cfg: DeformationConfig
    ):
        if fine_offsets.dim() != 5 or fine_offsets.shape[1] != 3:
            raise ValueError(f"fine_offsets must be (B, 3, R, R, R), got {tuple(fine_offsets.shape)}")
        self.fine_offsets = fine_offsets  # (B, 3, R, R, R)
        self.fine_dist_sq = fine_dist_sq  # (B, 1, R, R, R)
        self.smooth_offsets = smooth_offsets  # (B, 3, r, r, r), already box-filtered
        self.cfg = cfg

    @classmethod
    @torch.no_grad()
    def from_meshes(
        cls,
        target_verts: torch.Tensor,
        canonical_verts: torch.Tensor,
        faces: torch.Tensor,
        cfg: DeformationConfig,
        table: FaceEdges | None = None,
    ) -> "NeckRotationField":
        """Tabulate the field of target_verts -> canonical_verts (B, N, 3) over faces (F, 3);
        ``table`` is ``face_edges(faces)`` when the caller keeps it."""
        resolutions = (cfg.grid_resolution, cfg.smooth_grid_resolution)
        (fine, fine_dist_sq), (coarse, _) = _tabulate(resolutions, target_verts, canonical_verts, faces, cfg, table)
        return cls(fine, fine_dist_sq, box_filter3d(coarse, cfg.smooth_passes), cfg)

    @classmethod
    def identity(cls, batch: int, cfg: DeformationConfig, like: torch.Tensor) -> "NeckRotationField":
        """The field of heads with zero neck pose: every offset is zero, so lookups return coords unchanged."""
        r, s = cfg.grid_resolution, cfg.smooth_grid_resolution
        zeros = like.new_zeros
        return cls(zeros(batch, 3, r, r, r), zeros(batch, 1, r, r, r), zeros(batch, 3, s, s, s), cfg)

    @property
    def batch_size(self) -> int:
        return self.fine_offsets.shape[0]

    def _lookup(self, volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Trilinear lookup of volume (B,C,R,R,R) at coords (B,P,3) -> (B,P,C)."""
        resolution = volume.shape[-1]
        last_centre = (0.5 - 0.5 / resolution) * self.cfg.box_warp  # align_corners: ±1 = outer centres
        grid = (coords / last_centre).to(volume.dtype)[:, None, None]  # (B, 1, 1, P, 3)
        out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out[:, :, 0, 0].transpose(1, 2)

    def offsets(self, coords: torch.Tensor) -> torch.Tensor:
        """x_c - x (B, P, 3) for coords (B, P, 3)."""
        if coords.dim() != 3 or coords.shape[-1] != 3 or coords.shape[0] != self.batch_size:
            raise ValueError(f"coords must be (B={self.batch_size}, P, 3), got {tuple(coords.shape)}")
        with torch.autocast(coords.device.type, enabled=False):  # fp32 lookups under a caller's autocast
            fine = self._lookup(self.fine_offsets, coords)
            smooth = self._lookup(self.smooth_offsets, coords)
            dist_sq = self._lookup(self.fine_dist_sq, coords)
            # Near the mesh the fine grid is trusted; far from it the surface field jumps between
            # distant triangles (e.g. chin vs. chest), so the smooth grid takes over.
            w = torch.exp(-self.cfg.smooth_falloff * F.relu(dist_sq - self.cfg.smooth_threshold_sq))
            return (w * fine + (1 - w) * smooth).to(coords.dtype)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        return coords + self.offsets(coords)

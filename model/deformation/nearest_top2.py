"""The float32 candidate pass of the nearest-vertex search with k = 2, as one Triton kernel.

``model.deformation.nearest`` finds each point's two nearest vertices in float32, ranks them in float64 and
re-searches the few points whose two float32 keys are too close to call. On CUDA its candidate pass runs as two
inductor reductions (the second excluding the first's winner), each reading every (point, vertex) pair. Here one
program takes a block of points, streams the vertices through in tiles, and keeps the two smallest keys and their
ids in registers: one pass, no (point, vertex) tensor in memory.

The contract is the one the certification relies on: the two smallest float32 squared distances of each point,
ascending, and two distinct vertex ids that have them; the key is ``(dx² + dy²) + dz²`` in float32 (the compiler
may fuse a multiply-add, which only removes roundings, inside the certification's error bound). Ties may pick
either vertex: the float64 rank and the re-search decide the answer, not this pass. Off by default until measured
on a GPU: the deformation config's ``vertex_search_kernel: triton`` turns it on.
"""

from __future__ import annotations

import torch

from model.triton_support import interpreting, jitted, runs_on, tl

BLOCK_POINTS = 64  # points per program on the GPU
BLOCK_VERTS = 64  # vertices per tile
_INTERPRETER_BLOCK_POINTS = 2048  # the interpreter runs a program as numpy arrays: bigger blocks, fewer loops


def enabled(kernel: str, device: torch.device | str) -> bool:
    """Whether the candidate pass runs this kernel: asked for (``kernel == "triton"``; ``nearest_vertex`` refuses
    other names than torch / triton) and Triton runs on ``device``."""
    return kernel == "triton" and runs_on(device)


if tl is not None:  # the kernel body; its annotations need triton.language

    def _top2(points_ptr, verts_ptr, keys_ptr, ids_ptr, n_points, n_verts,
              BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr):
        """One program: BLOCK_P points of one batch element against all its vertices, two best kept."""
        batch = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        valid = rows < n_points
        point = (batch.to(tl.int64) * n_points + rows) * 3
        px = tl.load(points_ptr + point, mask=valid, other=0.0)
        py = tl.load(points_ptr + point + 1, mask=valid, other=0.0)
        pz = tl.load(points_ptr + point + 2, mask=valid, other=0.0)
        best1 = tl.full((BLOCK_P,), float("inf"), tl.float32)
        best2 = tl.full((BLOCK_P,), float("inf"), tl.float32)
        id1 = tl.zeros((BLOCK_P,), tl.int32)
        id2 = tl.zeros((BLOCK_P,), tl.int32)
        first = batch.to(tl.int64) * n_verts * 3
        for start in range(0, n_verts, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            inside = cols < n_verts
            vx = tl.load(verts_ptr + first + cols * 3, mask=inside, other=0.0)
            vy = tl.load(verts_ptr + first + cols * 3 + 1, mask=inside, other=0.0)
            vz = tl.load(verts_ptr + first + cols * 3 + 2, mask=inside, other=0.0)
            dx = px[:, None] - vx[None, :]
            dy = py[:, None] - vy[None, :]
            dz = pz[:, None] - vz[None, :]
            d = tl.where(inside[None, :], dx * dx + dy * dy + dz * dz, float("inf"))
            # the tile's two best: its minimum, then the minimum without that column
            m1 = tl.min(d, axis=1)
            i1 = tl.argmin(d, axis=1).to(tl.int32) + start
            d = tl.where(cols[None, :] == i1[:, None], float("inf"), d)
            m2 = tl.min(d, axis=1)
            i2 = tl.argmin(d, axis=1).to(tl.int32) + start
            # merge (best1 <= best2) with (m1 <= m2): earlier tiles keep ties
            tile_first = m1 < best1
            second = tl.where(tile_first, best1, best2)
            second_id = tl.where(tile_first, id1, id2)
            other = tl.where(tile_first, m2, m1)
            other_id = tl.where(tile_first, i2, i1)
            take = other < second
            best1 = tl.where(tile_first, m1, best1)
            id1 = tl.where(tile_first, i1, id1)
            best2 = tl.where(take, other, second)
            id2 = tl.where(take, other_id, second_id)
        out = (batch.to(tl.int64) * n_points + rows) * 2
        tl.store(keys_ptr + out, best1, mask=valid)
        tl.store(keys_ptr + out + 1, best2, mask=valid)
        tl.store(ids_ptr + out, id1.to(tl.int64), mask=valid)
        tl.store(ids_ptr + out + 1, id2.to(tl.int64), mask=valid)


def top2_candidates(points: torch.Tensor, verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (B, P, 3), verts (B, N, 3) float32, N >= 2 -> the two smallest float32 squared distances (B, P, 2),
    ascending, and their distinct vertex ids (B, P, 2)."""
    if points.dtype != torch.float32 or verts.dtype != torch.float32:
        raise TypeError(f"the candidate pass runs in float32, got {points.dtype} and {verts.dtype}")
    if points.dim() != 3 or verts.dim() != 3 or points.shape[-1] != 3 or verts.shape[-1] != 3 \
            or points.shape[0] != verts.shape[0]:
        raise ValueError(f"need points (B, P, 3) and verts (B, N, 3), got {tuple(points.shape)}, {tuple(verts.shape)}")
    if verts.shape[1] < 2:
        raise ValueError(f"need at least 2 vertices for two candidates, got {verts.shape[1]}")
    b, p, _ = points.shape
    keys = torch.empty(b, p, 2, dtype=torch.float32, device=points.device)
    ids = torch.empty(b, p, 2, dtype=torch.long, device=points.device)
    if p == 0:
        return keys, ids
    block = _INTERPRETER_BLOCK_POINTS if interpreting() else BLOCK_POINTS
    grid = ((p + block - 1) // block, b)
    jitted(_top2)[grid](points.contiguous(), verts.contiguous(), keys, ids, p, verts.shape[1],
                        BLOCK_P=block, BLOCK_V=BLOCK_VERTS)
    return keys, ids

"""The nearest-vertex search (GenHead's part field) returns exactly the float64 brute force's index.

The reference here is numpy: float64 keys (dx² + dy²) + dz², argmin = the lowest index among equal
minima. The search's float32 candidate pass must never lose that vertex, including at near-ties far
below float32 resolution, where only the float64 rank or the float64 fallback can tell vertices apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.deformation import nearest as nr
from model.deformation.nearest import nearest_vertex


def _reference(points: torch.Tensor, verts: torch.Tensor) -> np.ndarray:
    p, v = points.double().numpy()[:, :, None], verts.double().numpy()[:, None]
    dx, dy, dz = (p - v).transpose(3, 0, 1, 2)
    return (dx * dx + dy * dy + dz * dz).argmin(-1)  # numpy: first occurrence of the minimum


def _near_ties(verts: torch.Tensor, n: int, g: torch.Generator, jitter: float) -> torch.Tensor:
    """Points (B, n, 3) at midpoints of random vertex pairs, moved by ~jitter (equidistant to ~1e-8)."""
    bsz, nv, _ = verts.shape
    i, j = torch.randint(0, nv, (2, bsz, n), generator=g)

    def take(ix: torch.Tensor) -> torch.Tensor:
        return verts.gather(1, ix[..., None].expand(-1, -1, 3))

    return (take(i) + take(j)) / 2 + torch.randn(bsz, n, 3, generator=g) * jitter


def _uncertified(points: torch.Tensor, verts: torch.Tensor, k: int) -> int:
    keys, _ = nr._fp32_candidates(points.float(), verts.float(), k)
    return int((~nr._certified(keys)).sum())


@pytest.mark.parametrize("k", [2, 3, 4])
def test_vertex_search_is_the_float64_brute_force_including_near_ties(k):
    g = torch.Generator().manual_seed(10 + k)
    fallbacks = 0
    for trial in range(4):
        # a FLAME-sized head (~0.3 units) and sample points around it; a grid adds exactly equidistant points
        verts = torch.randn(2, 300, 3, generator=g) * 0.3
        if trial == 3:
            verts = torch.round(verts * 8) / 8  # coincident and lattice vertices: many exact ties
        points = torch.cat(
            [
                (torch.rand(2, 400, 3, generator=g) - 0.5) * 1.2,
                _near_ties(verts, 400, g, 1e-8),  # gaps below float32 resolution
                _near_ties(verts, 100, g, 0.0),
                verts[:, :50] + 1e-7,
            ],
            dim=1,
        )
        fallbacks += _uncertified(points, verts, k)
        hit = nearest_vertex(points, verts, max_pairs=3 * 97 * 300, candidates=k)  # chunks of 97 points
        np.testing.assert_array_equal(hit.index.numpy(), _reference(points, verts))
        nearest = verts.gather(1, hit.index[..., None].expand(-1, -1, 3))
        torch.testing.assert_close(hit.dist_sq, (nearest - points).square().sum(-1))
    assert fallbacks > 0  # the float64 fallback ran, and agreed


def test_exact_ties_go_to_the_lowest_index():
    verts = torch.tensor(
        [[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]]]
    )
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.3], [0.5, 0.5, 0.0], [0.0, 0.0, 4.9]]])
    # origin: four at distance 1 -> 0; x = 0.6: vertices 1 and 4 coincide -> 1; (0.5, 0.5): 0 and 1 -> 0
    assert nearest_vertex(points, verts, candidates=2).index.tolist() == [[0, 1, 0, 0, 5]]
    assert nearest_vertex(points, verts, candidates=4).index.tolist() == [[0, 1, 0, 0, 5]]


def test_float32_keys_stay_inside_the_certified_error_bound():
    """The certificate assumes |K32 - D| <= 6u·D (u = 2^-24) relative to the distance itself, also far
    from the origin, where |v|² - 2 p·v in float32 would be off by ~u·|p|² instead."""
    g = torch.Generator().manual_seed(5)
    offset = torch.tensor([100.0, -50.0, 30.0])
    verts = offset + torch.randn(1, 200, 3, generator=g) * 1e-3
    points = offset + torch.randn(1, 300, 3, generator=g) * 1e-3
    exact = torch.from_numpy(
        ((points.double().numpy()[:, :, None] - verts.double().numpy()[:, None]) ** 2).sum(-1)
    )
    keys = nr._sq_dist(points[:, :, None], verts[:, None]).double()
    assert ((keys - exact).abs() / exact).max() < 6 * 2.0**-24
    assert nr.CERTIFY_RTOL >= 2 * 6 * 2.0**-24  # the margin the certificate uses covers it with room
    np.testing.assert_array_equal(nearest_vertex(points, verts).index.numpy(), _reference(points, verts))


def test_float64_input_is_searched_in_float64():
    """Float64 coordinates 1e-9 apart round to the same float32 value; the answer must still be exact."""
    verts = torch.tensor([[[1.0, 0.0, 0.0], [1.0 + 4e-9, 0.0, 0.0], [3.0, 0.0, 0.0]]], dtype=torch.float64)
    verts = torch.cat([verts, torch.full((1, 10, 3), 9.0, dtype=torch.float64)], dim=1)
    points = torch.tensor([[[1.0 + 3e-9, 0.0, 0.0], [1.0 + 1e-9, 0.0, 0.0]]], dtype=torch.float64)
    assert nearest_vertex(points, verts).index.tolist() == [[1, 0]]


def test_nan_points_get_the_lowest_index_and_bad_k_is_refused():
    verts = torch.randn(1, 20, 3)
    points = torch.tensor([[[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    index = nearest_vertex(points, verts).index
    assert index[0, 0] == 0 and index[0, 1] == int(_reference(points[:, 1:], verts)[0, 0])
    with pytest.raises(ValueError, match="candidates must be 2..4, got 5"):
        nearest_vertex(points, verts, candidates=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled float32 pass runs on CUDA only")
def test_compiled_cuda_search_matches_the_float64_brute_force_with_tf32_allowed():
    g = torch.Generator().manual_seed(7)
    verts = torch.randn(2, 2000, 3, generator=g) * 0.3
    points = torch.cat([(torch.rand(2, 20000, 3, generator=g) - 0.5) * 1.2, _near_ties(verts, 5000, g, 1e-8)], 1)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # must not matter: the search has no matrix product
        hit = nearest_vertex(points.cuda(), verts.cuda(), max_pairs=1 << 20)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    np.testing.assert_array_equal(hit.index.cpu().numpy(), _reference(points, verts))

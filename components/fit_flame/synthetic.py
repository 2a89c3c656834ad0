"""Synthetic FLAME fitting problems with known answers (tests and ``benchmarks/bench_fit_flame.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch


def random_fit_problem(
    arrays: Mapping[str, Any], embedding, batch: int, size: int, seed: int = 0
) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
    """Landmarks (B, L, 2) in ``size`` crops rendered from known FLAME parameters and cameras.

    Truth: 10 shape and 10 expression coefficients, a jaw opening, head rotations within about
    ±15° pitch / ±30° yaw / ±9° roll, the camera 4.2-4.6 in front of the head.
    """
    import torch

    from components.fit_flame.fitting import FLAME_TO_WORLD, project
    from model.flame import FlameLayer, landmarks_from_vertices

    g = torch.Generator().manual_seed(seed)
    shape = torch.zeros(batch, 300)
    shape[:, :10] = torch.randn(batch, 10, generator=g) * 0.5
    expression = torch.zeros(batch, 100)
    expression[:, :10] = torch.randn(batch, 10, generator=g)
    jaw = torch.zeros(batch, 3)
    jaw[:, 0] = torch.rand(batch, generator=g) * 0.2
    head = (torch.rand(batch, 3, generator=g) - 0.5) * torch.tensor([0.5, 1.0, 0.3])
    translation = torch.stack(
        [
            (torch.rand(batch, generator=g) - 0.5) * 0.1,
            (torch.rand(batch, generator=g) - 0.5) * 0.1,
            -4.4 + (torch.rand(batch, generator=g) - 0.5) * 0.4,
        ],
        dim=1,
    )
    flame = FlameLayer(arrays)
    with torch.no_grad():
        out = flame(shape, expression, jaw_pose=jaw)
        world = FLAME_TO_WORLD * landmarks_from_vertices(out.vertices, flame.faces, embedding)
        targets = project(world, head, translation, size)
    truth = {"head": head, "translation": translation, "jaw": jaw, "shape": shape, "expression": expression}
    return targets, truth

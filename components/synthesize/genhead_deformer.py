"""GenHead's FLAME deformer for one batch: model.deformation's HeadDeformation behind GenHead's protocol.

GenHead (model/networks/genhead_parts.py ``PartDeformer``) calls ``deformer(points)`` for the
part-wise canonical coordinates and ``deformer.part_masks(c, size)`` for the rasterized eye / mouth
masks; model.deformation provides both as ``HeadDeformation.parts`` and ``render_part_masks``.
This adapter is the only glue; it would sit equally well in model.deformation.
"""

from __future__ import annotations

import torch

from model.deformation import FlameHead, HeadDeformation, PartDeformation, PartMasks, render_part_masks


class GenHeadDeformer:
    """Binds B sets of FLAME parameters (each (B, ·)) for one GenHead synthesis call."""

    def __init__(self, head: FlameHead, shape: torch.Tensor, expression: torch.Tensor, neck_pose: torch.Tensor,
                 jaw_pose: torch.Tensor, eye_pose: torch.Tensor) -> None:
        self.head = head
        with torch.no_grad():
            self.deformation = HeadDeformation(head, shape, expression, neck_pose, jaw_pose, eye_pose)
            self.vertices = head(shape, expression, neck_pose, jaw_pose, eye_pose).vertices  # (B, V, 3)

    def __call__(self, points: torch.Tensor) -> PartDeformation:
        return self.deformation.parts(points)

    def part_masks(self, c: torch.Tensor, resolution: int) -> PartMasks:
        return render_part_masks(self.head, self.vertices, c, resolution)

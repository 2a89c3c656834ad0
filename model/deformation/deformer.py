"""One batch of FLAME conditions bound into the deformation (and images) a generator needs."""

from __future__ import annotations

import torch

from model.deformation.flame_head import FlameHead
from model.deformation.head_render import (
    CorrespondenceMap,
    PartMasks,
    project_landmarks,
    render_correspondence,
    render_part_masks,
)
from model.deformation.neck_field import NeckRotationField
from model.deformation.part_deformation import PartDeformation, part_deformation


def _fp32(device: torch.device) -> torch.autocast:
    """Autocast off: FLAME and the fields are built in fp32 whatever the caller's autocast (under bf16
    autocast FLAME's products would run in bf16 and move the neck field by ~3e-2, measured on an H200)."""
    return torch.autocast(device.type, enabled=False)


class HeadDeformation:
    """Target (posed) space -> canonical space for a batch of B heads, plus their mesh images.

    ``__call__(coords (B,P,3)) -> (B,P,3)`` removes the neck rotation (Ψ / Ψ_3d: the renderer's
    ``deform_fn``). ``parts(coords)`` is GenHead's part-wise map; ``part_deformer()`` wraps it in
    the protocol model.networks.genhead expects. Everything FLAME-derived is built without
    autograd, as in the official code.
    """

    def __init__(
        self,
        head: FlameHead,
        shape: torch.Tensor,
        expression: torch.Tensor,
        neck_pose: torch.Tensor,
        jaw_pose: torch.Tensor,
        eye_pose: torch.Tensor,
        eye_blink_expression: torch.Tensor | None = None,
    ) -> None:
        self.head = head
        self.cfg = head.config
        with torch.no_grad(), _fp32(shape.device):
            # official FlameDeformationModuleOnlyHead: canonical = the same head with zero neck pose;
            # both heads go through one FLAME call
            bsz = neck_pose.shape[0]
            twice = [torch.cat([x, x]) if x is not None else None for x in (shape, expression, jaw_pose, eye_pose)]
            both = head(twice[0], twice[1], torch.cat([neck_pose, torch.zeros_like(neck_pose)]), *twice[2:]).vertices
            posed, no_neck = both[:bsz], both[bsz:]
            # Rows with zero neck pose reuse the neck-free mesh, so their field is exactly zero.
            still = (neck_pose == 0).all(-1)[:, None, None]
            posed = torch.where(still, no_neck, posed)
            if not posed.is_cuda and bool(still.all()):
                # Synthesized data (neck pose zeroed) skips the tabulation; on CUDA the check would
                # cost a host sync, and the tabulated field of such rows is exactly zero anyway.
                self.neck = NeckRotationField.identity(posed.shape[0], self.cfg, posed)
            else:
                proxies = head.proxy_vertices(torch.cat([posed, no_neck]))
                self.neck = NeckRotationField.from_meshes(
                    proxies[:bsz], proxies[bsz:], head.proxy_faces, self.cfg, head.proxy_edge_table
                )
            self.posed = posed  # (B, V, 3) landmarks use it without the blink (official)
            self.posed_blink, self.part_target = posed, no_neck
            if eye_blink_expression is not None:
                # official: eyelid vertices come from a second (blink) expression of the same head
                lids = head.eyelids
                blink = head(shape, eye_blink_expression, neck_pose, jaw_pose, eye_pose).vertices
                self.posed_blink = posed.clone()
                self.posed_blink[:, lids] = blink[:, lids]
                blink = head(shape, eye_blink_expression, torch.zeros_like(neck_pose), jaw_pose, eye_pose).vertices
                self.part_target = no_neck.clone()
                self.part_target[:, lids] = blink[:, lids]
        self._mouth_args = (shape, expression, jaw_pose)
        self._mouth_target: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.posed.shape[0]

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        return self.neck(coords)

    @torch.no_grad()
    def mouth_target(self) -> torch.Tensor:
        """(B, V, 3) the neck-free head without expression and eye pose: teeth follow the jaw (official)."""
        if self._mouth_target is None:
            shape, expression, jaw_pose = self._mouth_args
            with _fp32(shape.device):
                no_neck = torch.zeros_like(jaw_pose)
                self._mouth_target = self.head(shape, torch.zeros_like(expression), no_neck, jaw_pose).vertices
        return self._mouth_target

    @torch.no_grad()
    def parts(self, coords: torch.Tensor, mouth: bool = True) -> PartDeformation:
        """GenHead: neck rotation removed first (detached, as official), then the part-wise map."""
        with _fp32(coords.device):
            return part_deformation(
                self.neck(coords),
                self.part_target,
                self.head.canonical_vertices[None],
                self.head.part_sets,
                self.cfg,
                self.mouth_target() if mouth else None,
            )

    def part_deformer(self) -> "PartDeformer":
        return PartDeformer(self)

    # --- images of the bound heads (no autograd; use model.deformation.head_render for gradients) --
    @torch.no_grad()
    def correspondence(self, c: torch.Tensor, size: int) -> CorrespondenceMap:
        return render_correspondence(self.head, self.posed_blink, c, size)

    @torch.no_grad()
    def part_masks(self, c: torch.Tensor, size: int) -> PartMasks:
        return render_part_masks(self.head, self.posed_blink, c, size)

    @torch.no_grad()
    def landmarks(self, c: torch.Tensor, size: int) -> torch.Tensor:
        """(B, L, 2) pixels, x right, y down (see head_render.project_landmarks)."""
        return project_landmarks(self.head, self.posed, c, size)


class PartDeformer:
    """GenHead's deformer protocol (model.networks.genhead_parts.PartDeformer) over a HeadDeformation:
    ``__call__(points) -> PartDeformation`` (mouth part on, as official GenHead), ``part_masks(c, size)``."""

    def __init__(self, deformation: HeadDeformation) -> None:
        self.deformation = deformation

    def __call__(self, points: torch.Tensor) -> PartDeformation:
        return self.deformation.parts(points, mouth=True)

    def part_masks(self, c: torch.Tensor, size: int) -> PartMasks:
        return self.deformation.part_masks(c, size)

"""What the trainers derive from a 437-float label with FLAME (no learned weights, no gradients).

For a batch of labels: the rendering camera (the label's camera is the *composed* one, with the head
rotation in it; official ``decompose_camera_pose`` moves the neck rotation into the deformation),
the neck-rotation deformation (the renderer's ``deform_fn``; None when every neck pose is zero, where
it is the identity), the FLAME correspondence ("uv") map the discriminator sees, and 70 landmarks
(68 + eye centres) in image pixels for the ArcFace / PD-FGC crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model.cameras import LabelLayout
from model.deformation import (
    DeformationConfig,
    FlameHead,
    HeadDeformation,
    decompose_camera_pose,
    project_landmarks,
    render_correspondence,
)
from model.flame import LandmarkEmbedding


@dataclass
class LabelConditions:
    c_compose: torch.Tensor  # (B, 25) the label's camera: discriminator condition
    c_render: torch.Tensor  # (B, 25) camera after the neck rotation is split off
    deform_fn: HeadDeformation | None  # neck rotation field; None = identity
    uv: torch.Tensor | None  # (B, 3, h, h) correspondence map; None when asked for the renderer's part only
    landmarks: torch.Tensor | None  # (B, 70, 2) pixels of the full image, +y down; None as uv
    vertices: torch.Tensor  # (B, V, 3) posed FLAME vertices (camera-independent, like deform_fn)


def flame_params(label: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "shape": label[:, LabelLayout.SHAPE],
        "expression": label[:, LabelLayout.EXPRESSION],
        "neck_pose": label[:, LabelLayout.NECK_POSE],
        "jaw_pose": label[:, LabelLayout.JAW_POSE],
        "eye_pose": label[:, LabelLayout.EYE_POSE],
    }


def with_eye_centres(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, 68, 2) -> (B, 70, 2): append the two eye centres (official 70-point layout, indices 68 / 69)."""
    if landmarks.shape[1] >= 70:
        return landmarks
    left, right = landmarks[:, 36:42].mean(1, keepdim=True), landmarks[:, 42:48].mean(1, keepdim=True)
    return torch.cat([landmarks[:, :68], left, right], dim=1)


class FlameConditioner:
    """Binds a FlameHead (with a 68-point landmark embedding) to the image sizes of a stage."""

    def __init__(self, head: FlameHead, image_resolution: int, uv_resolution: int) -> None:
        if head.landmarks is None:
            raise ValueError("the trainers need a FlameHead with a landmark embedding (identity / motion crops)")
        self.head, self.image_resolution, self.uv_resolution = head, image_resolution, uv_resolution

    @classmethod
    def from_assets(cls, asset_dir: str | Path, config: DeformationConfig, image_resolution: int,
                    device: str) -> "FlameConditioner":
        from components.assets.flame import load_flame_head
        from components.assets.manifest import spec
        from model.flame import load_landmark_embeddings

        asset_dir = Path(asset_dir)
        embeddings = load_landmark_embeddings(asset_dir / spec("flame_landmarks").path)
        if "full" not in embeddings:
            raise ValueError(f"{asset_dir / spec('flame_landmarks').path}: no 'full' (68-point) landmark embedding")
        base = load_flame_head(asset_dir, config).head  # the same parts and proxy mesh as the synthesize stage
        full = embeddings["full"]
        landmarks = LandmarkEmbedding(full.face_idx.to(device), full.bary.to(device))
        head = FlameHead(base.flame, base.proxy, base.parts, landmarks, config).to(device)
        # official: correspondence maps are rendered at half the image size (renderer half_size)
        return cls(head, image_resolution, image_resolution // 2)

    @torch.no_grad()
    def __call__(self, label: torch.Tensor, shape: torch.Tensor | None = None, neck: bool = True,
                 camera: torch.Tensor | None = None, same_head: LabelConditions | None = None,
                 images: bool = True) -> LabelConditions:
        """Conditions of (B, 437) labels; ``shape`` (B, 300) replaces the label's shape (Ψ: the source identity).

        ``camera`` (B, 25): render from this camera as is (the official random-view renders) instead
        of splitting the neck rotation off the label's composed camera. ``neck=False`` drops the neck
        rotation (official G_fix_img regularisation renders heads without it).
        ``same_head``: conditions computed earlier for the same label, shape and ``neck``; its mesh and neck
        field (which do not depend on the camera) are reused, so only the camera-dependent parts are redone
        (the neck field's nearest-triangle tabulation is the costly part of a conditioner call).
        ``images=False``: only what the renderer reads (cameras, neck field, vertices); the correspondence
        map (a rasterization of the mesh) and the landmarks stay None. Inference asks for this: per driving
        frame they cost time and nothing reads them.
        """
        p = flame_params(label.float())
        if shape is not None:
            p["shape"] = shape.float()
        if not neck:
            p["neck_pose"] = torch.zeros_like(p["neck_pose"])
        c = label[:, LabelLayout.CAMERA].float()
        has_neck = bool((p["neck_pose"] != 0).any())
        deformation = None
        if same_head is not None:
            if same_head.vertices.shape[0] != label.shape[0]:
                raise ValueError(f"same_head holds {same_head.vertices.shape[0]} heads, the label {label.shape[0]}")
            deformation, vertices = same_head.deform_fn, same_head.vertices
        elif has_neck:  # the neck rotation field is only built when some head turns on its neck
            deformation = HeadDeformation(self.head, p["shape"], p["expression"], p["neck_pose"], p["jaw_pose"],
                                          p["eye_pose"])
            vertices = deformation.posed
        else:
            vertices = self.head(p["shape"], p["expression"], p["neck_pose"], p["jaw_pose"], p["eye_pose"]).vertices
        if camera is not None:
            c = c_render = camera.float()
        elif has_neck:
            c_render = decompose_camera_pose(self.head, c, p["shape"], p["expression"], p["neck_pose"], p["jaw_pose"])
        else:
            c_render = c
        return LabelConditions(
            c_compose=c,
            c_render=c_render,
            deform_fn=deformation,
            uv=render_correspondence(self.head, vertices, c_render, self.uv_resolution).image if images else None,
            landmarks=(with_eye_centres(project_landmarks(self.head, vertices, c_render, self.image_resolution))
                       if images else None),
            vertices=vertices,
        )

    @torch.no_grad()
    def eye_opening(self, label: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) eyelid gap / eye width of the 68 landmarks seen frontally (official g_fix_reg_img_aug)."""
        p = flame_params(label.float())
        if shape is not None:
            p["shape"] = shape.float()
        mesh = self.head(p["shape"], p["expression"], p["neck_pose"], p["jaw_pose"], p["eye_pose"])
        lm = self.head.landmarks3d(mesh.vertices)[..., :2]  # frontal camera: x, y of the 3D landmarks
        gap = (lm[:, [37, 38, 43, 44]] - lm[:, [41, 40, 47, 46]]).square().sum(-1).add(1e-10).sqrt().mean(1)
        width = (lm[:, [36, 42]] - lm[:, [39, 45]]).square().sum(-1).add(1e-10).sqrt().mean(1)
        return gap / width

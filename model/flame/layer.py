"""FLAME 2020 as a differentiable layer: blendshapes, joint regression, pose correctives, LBS.

Joint order (``kintree_table``): 0 global (root), 1 neck, 2 jaw, 3 left eye, 4 right eye; neck is
the child of global, jaw and both eyes are children of neck.

How Portrait4D feeds the 437-float label to FLAME (official models/FLAME/DecaFLAME.py ``forward``
and gen_images_portrait4d.py / training/dataloader/dataset.py, which slice the label):
- the global (root) rotation is always zero;
- ``pose_params`` = label[425:431] (6 floats): ``[:3]`` = LabelLayout.NECK_POSE -> joint 1 (neck),
  ``[3:]`` = LabelLayout.JAW_POSE -> joint 2 (jaw);
- ``eye_pose_params`` = LabelLayout.EYE_POSE [431:437]: ``[:3]`` -> joint 3 (left eye),
  ``[3:]`` -> joint 4 (right eye).
GenHead/Psi training zero the neck pose and let the camera carry the head rotation
(training_loop_recon_v1.py, dataset_recon.py ``labels[425:428] = 0``), which callers do by passing
a zero ``neck_pose``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from model.cameras import LABEL_DIM, LabelLayout
from model.flame.rotation import batch_rodrigues

N_JOINTS = 5
N_SHAPE_MAX = 300  # expression directions start at column 300 of shapedirs (FLAME 2020)
N_EXPRESSION_MAX = 100


class FlameConfig(BaseModel):
    """Which part of the FLAME basis a layer uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_shape: int = Field(300, ge=0, le=N_SHAPE_MAX, description="shape coefficients used (first n of 300)")
    n_expression: int = Field(100, ge=0, le=N_EXPRESSION_MAX, description="expression coefficients used (first n of 100)")
    detach_pose_correctives: bool = Field(
        True,
        description="stop gradients through pose-corrective offsets; official lbs() default "
        "(models/FLAME/lbs.py detach_pose_correctives=True)",
    )

    @classmethod
    def tiny(cls) -> "FlameConfig":
        return cls(n_shape=20, n_expression=10)


@dataclass
class FlameOutput:
    vertices: torch.Tensor  # (B, V, 3) posed mesh
    joints: torch.Tensor  # (B, 5, 3) posed joint locations
    joint_transforms: torch.Tensor  # (B, 5, 4, 4) rest-pose -> posed rigid transform of each joint


def _as_array(arrays: Mapping[str, Any], key: str, ndim: int) -> np.ndarray:
    if key not in arrays:
        raise KeyError(f"FLAME arrays lack {key!r} (have {sorted(arrays)})")
    value = np.asarray(arrays[key])
    if value.ndim != ndim:
        raise ValueError(f"FLAME {key!r} must be {ndim}-D, got shape {value.shape}")
    return value


def _parents(kintree_table: np.ndarray) -> torch.Tensor:
    parents = kintree_table[0].astype(np.int64)
    parents[0] = -1  # the file stores uint32(-1) = 4294967295 for the root
    if parents.shape != (N_JOINTS,) or any(not 0 <= p < i for i, p in enumerate(parents) if i > 0):
        raise ValueError(f"FLAME kintree_table must list {N_JOINTS} joints, parents first; got {kintree_table}")
    return torch.from_numpy(parents)


class FlameLayer(nn.Module):
    """FLAME forward pass on buffers only (no parameters); batched, float32, differentiable."""

    def __init__(
        self,
        arrays: Mapping[str, Any],
        n_shape: int | None = None,
        n_expression: int | None = None,
        config: FlameConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or FlameConfig()
        overrides = {k: v for k, v in (("n_shape", n_shape), ("n_expression", n_expression)) if v is not None}
        self.config = FlameConfig(**{**config.model_dump(), **overrides})  # validates the overrides

        v_template = _as_array(arrays, "v_template", 2)
        n_vertices = v_template.shape[0]
        shapedirs = _as_array(arrays, "shapedirs", 3)
        posedirs = _as_array(arrays, "posedirs", 3)
        j_regressor = _as_array(arrays, "J_regressor", 2)
        weights = _as_array(arrays, "weights", 2)
        faces = _as_array(arrays, "f", 2)
        n_exp_cols = shapedirs.shape[2] - N_SHAPE_MAX
        if shapedirs.shape[:2] != (n_vertices, 3) or self.config.n_expression > max(n_exp_cols, 0):
            raise ValueError(
                f"FLAME shapedirs {shapedirs.shape} cannot give {self.config.n_shape} shape + "
                f"{self.config.n_expression} expression directions for {n_vertices} vertices"
            )
        checks = {
            "posedirs": (posedirs.shape, (n_vertices, 3, (N_JOINTS - 1) * 9)),
            "J_regressor": (j_regressor.shape, (N_JOINTS, n_vertices)),
            "weights": (weights.shape, (n_vertices, N_JOINTS)),
        }
        for key, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"FLAME {key!r} has shape {got}, expected {want}")
        if faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n_vertices:
            raise ValueError(f"FLAME faces 'f' must be (F, 3) indices into {n_vertices} vertices")

        # Official DecaFLAME keeps shape dirs [:n_shape] and expression dirs [300:300+n_exp].
        basis = np.concatenate(
            [shapedirs[:, :, : self.config.n_shape], shapedirs[:, :, N_SHAPE_MAX : N_SHAPE_MAX + self.config.n_expression]],
            axis=2,
        )
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(v_template, dtype=f32))  # (V, 3)
        self.register_buffer("shapedirs", torch.as_tensor(basis, dtype=f32))  # (V, 3, n_shape + n_expr)
        self.register_buffer("posedirs", torch.as_tensor(posedirs, dtype=f32))  # (V, 3, 36)
        self.register_buffer("J_regressor", torch.as_tensor(j_regressor, dtype=f32))  # (5, V)
        self.register_buffer("lbs_weights", torch.as_tensor(weights, dtype=f32))  # (V, 5)
        self.register_buffer("faces", torch.as_tensor(faces.astype(np.int64)))  # (F, 3)
        self.register_buffer("parents", _parents(_as_array(arrays, "kintree_table", 2)))  # (5,)
        self._parent_list = [int(p) for p in self.parents]  # python ints: no device sync per joint

    @classmethod
    def from_config(cls, arrays: Mapping[str, Any], config: FlameConfig) -> "FlameLayer":
        return cls(arrays, config=config)

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    def _pose(self, pose: torch.Tensor | None, batch: int, width: int, name: str) -> torch.Tensor:
        if pose is None:
            return self.v_template.new_zeros(batch, width)
        if pose.shape != (batch, width):
            raise ValueError(f"{name} must be ({batch}, {width}), got {tuple(pose.shape)}")
        return pose.to(self.v_template.dtype)

    def forward(
        self,
        shape: torch.Tensor,
        expression: torch.Tensor,
        global_pose: torch.Tensor | None = None,
        neck_pose: torch.Tensor | None = None,
        jaw_pose: torch.Tensor | None = None,
        eye_pose: torch.Tensor | None = None,
    ) -> FlameOutput:
        """shape (B, n_shape), expression (B, n_expr), axis-angle poses (B, 3) / eyes (B, 6); None = 0."""
        cfg = self.config
        if shape.ndim != 2 or shape.shape[1] != cfg.n_shape:
            raise ValueError(f"shape must be (B, {cfg.n_shape}), got {tuple(shape.shape)}")
        batch = shape.shape[0]
        if expression.shape != (batch, cfg.n_expression):
            raise ValueError(f"expression must be ({batch}, {cfg.n_expression}), got {tuple(expression.shape)}")
        dtype = self.v_template.dtype
        full_pose = torch.cat(
            [
                self._pose(global_pose, batch, 3, "global_pose"),
                self._pose(neck_pose, batch, 3, "neck_pose"),
                self._pose(jaw_pose, batch, 3, "jaw_pose"),
                self._pose(eye_pose, batch, 6, "eye_pose"),
            ],
            dim=1,
        )  # (B, 15) = 5 joints x axis-angle

        betas = torch.cat([shape, expression], dim=1).to(dtype)
        v_shaped = self.v_template + torch.einsum("bl,vcl->bvc", betas, self.shapedirs)  # (B, V, 3)
        rest_joints = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)  # (B, 5, 3)

        rotations = batch_rodrigues(full_pose.reshape(-1, 3)).view(batch, N_JOINTS, 3, 3)
        eye3 = torch.eye(3, dtype=dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - eye3).reshape(batch, -1)  # (B, 36): root excluded
        pose_offsets = torch.einsum("bp,vcp->bvc", pose_feature, self.posedirs)
        if cfg.detach_pose_correctives:
            pose_offsets = pose_offsets.detach()
        v_posed = v_shaped + pose_offsets

        posed_joints, transforms = self._rigid_chain(rotations, rest_joints)
        # Linear blend skinning, written as rest + weighted sum of each joint's displacement
        # ((R - I) x + t) so that the rest pose reproduces v_posed bit for bit.
        motion = transforms[:, :, :3, :] - torch.eye(3, 4, dtype=dtype, device=rotations.device)  # (B, 5, 3, 4)
        blended = torch.einsum("vj,bjxy->bvxy", self.lbs_weights, motion)  # (B, V, 3, 4)
        vertices = v_posed + torch.einsum("bvxy,bvy->bvx", blended[..., :3], v_posed) + blended[..., 3]
        return FlameOutput(vertices=vertices, joints=posed_joints, joint_transforms=transforms)

    def _rigid_chain(self, rotations: torch.Tensor, rest_joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compose joint rotations along the tree into rest-pose -> posed transforms (B, 5, 4, 4).

        Joint j rotates its subtree about its rest location J_j, then the parent's transform
        applies: A_j(x) = A_parent(R_j (x - J_j) + J_j). Same result as the official chain of
        parent-relative frames (models/FLAME/lbs.py batch_rigid_transform), and exact at rest.
        """
        batch = rotations.shape[0]
        chain: list[torch.Tensor] = []
        for j in range(N_JOINTS):
            r_j, joint = rotations[:, j], rest_joints[:, j, :, None]  # (B,3,3), (B,3,1)
            t_local = joint - r_j @ joint
            parent = self._parent_list[j]
            if parent < 0:
                chain.append(torch.cat([r_j, t_local], dim=2))
            else:
                r_p, t_p = chain[parent][..., :3], chain[parent][..., 3:]
                chain.append(torch.cat([r_p @ r_j, r_p @ t_local + t_p], dim=2))
        affine = torch.stack(chain, dim=1)  # (B, 5, 3, 4)
        posed_joints = torch.einsum("bjxy,bjy->bjx", affine[..., :3], rest_joints) + affine[..., 3]
        # built on the device, not copied from host memory, so the chain can be captured in a CUDA graph
        bottom = F.pad(rotations.new_zeros(3), (0, 1), value=1.0).expand(batch, N_JOINTS, 1, 4)
        return posed_joints, torch.cat([affine, bottom], dim=2)


def flame_params_from_label(
    label: torch.Tensor, n_shape: int = N_SHAPE_MAX, n_expression: int = N_EXPRESSION_MAX
) -> dict[str, torch.Tensor]:
    """Split (B, 437) labels into FlameLayer.forward keyword arguments (global pose stays zero)."""
    if label.ndim != 2 or label.shape[1] != LABEL_DIM:
        raise ValueError(f"label must be (B, {LABEL_DIM}), got {tuple(label.shape)}")
    return {
        "shape": label[:, LabelLayout.SHAPE][:, :n_shape],
        "expression": label[:, LabelLayout.EXPRESSION][:, :n_expression],
        "neck_pose": label[:, LabelLayout.NECK_POSE],
        "jaw_pose": label[:, LabelLayout.JAW_POSE],
        "eye_pose": label[:, LabelLayout.EYE_POSE],
    }

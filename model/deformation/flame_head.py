"""FLAME placed in the triplane world, with the canonical head and the assets the deformers need.

Official training/deformer/deformation.py ``FlameDeformationModule.__init__``: FLAME is scaled by 3
(v_template, shapedirs, posedirs *= 3) and translated so that the neck joint of the canonical head
(zero shape and expression, jaw opened 0.3 rad, models/FLAME/ca_*.txt) sits at the world origin.
Scaling the three bases scales every LBS output by 3, and shifting the template shifts every output
(J_regressor rows sum to 1), so we apply the same map to FlameLayer's outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from model.deformation.config import DeformationConfig
from model.deformation.face_search import FaceEdges, face_edges
from model.deformation.flame_parts import FlameParts, faces_within
from model.deformation.part_deformation import PartVertexSets
from model.deformation.proxy_mesh import ProxyMesh
from model.flame import FlameLayer, LandmarkEmbedding, landmarks_from_vertices

NECK_JOINT = 1  # FLAME kintree: 0 global, 1 neck, 2 jaw, 3 left eye, 4 right eye


class HeadMesh(NamedTuple):
    vertices: torch.Tensor  # (B, V, 3) triplane-world coordinates
    joints: torch.Tensor  # (B, 5, 3)


class FlameHead(nn.Module):
    """FLAME + proxy mesh + part sets (+ optional landmark embedding), all as buffers; no parameters."""

    def __init__(
        self,
        flame: FlameLayer,
        proxy: ProxyMesh,
        parts: FlameParts,
        landmarks: LandmarkEmbedding | None = None,
        config: DeformationConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or DeformationConfig()
        self.flame = flame
        n = flame.n_vertices
        if proxy.n_flame_vertices != n or parts.n_vertices != n:
            raise ValueError(
                f"FLAME has {n} vertices but the proxy mesh expects {proxy.n_flame_vertices} "
                f"and the part sets {parts.n_vertices}"
            )
        self.proxy = proxy
        self.parts = parts
        self.landmarks = landmarks
        self.register_buffer("proxy_source_vertices", proxy.source_vertices.clone())  # (Vs, 3)
        self.register_buffer("proxy_source_weights", proxy.source_weights.float().clone())  # (Vs, 3)
        self.register_buffer("proxy_faces", proxy.faces.clone())  # (Fs, 3)
        edges = face_edges(proxy.faces)  # the neck field's search table depends only on the faces
        self.register_buffer("proxy_edges", edges.edges)  # (Es, 2)
        self.register_buffer("proxy_edge_first_face", edges.first_face)  # (Es,)
        faces = flame.faces
        # Triangles of each rendered region (official get_face_tri), in FLAME vertex numbering.
        self.register_buffer("faces_correspondence", faces_within(parts.correspondence_region, faces, n))
        self.register_buffer("faces_eyeballs", faces_within(parts.eyeballs, faces, n))
        self.register_buffer("faces_without_eyes", faces_within(parts.face_without_eyes, faces, n))
        self.register_buffer("faces_no_inner_mouth", faces_within(parts.no_inner_mouth, faces, n))
        for name in PartVertexSets._fields:
            self.register_buffer(f"part_{name}", getattr(parts, name).clone())
        self.register_buffer("eyelids", parts.eyelids.clone())
        eyeball = torch.zeros(n, dtype=torch.bool)
        eyeball[parts.eyeballs] = True
        self.register_buffer("is_eyeball", eyeball)

        self.register_buffer("origin", torch.zeros(3))
        with torch.no_grad():
            zero = self._zero_params(1)
            canonical = self._scaled(zero["shape"], zero["expression"], jaw_pose=self.canonical_jaw(1))
            self.origin = canonical.joints[0, NECK_JOINT].clone()
            self.register_buffer("canonical_vertices", canonical.vertices[0] - self.origin)  # (V, 3)

    # --- FLAME in the triplane world ------------------------------------------------------------
    def canonical_jaw(self, batch: int) -> torch.Tensor:
        return self.origin.new_tensor(self.config.canonical_jaw_pose).expand(batch, 3)

    def _zero_params(self, batch: int) -> dict[str, torch.Tensor]:
        cfg = self.flame.config
        return {
            "shape": self.flame.v_template.new_zeros(batch, cfg.n_shape),
            "expression": self.flame.v_template.new_zeros(batch, cfg.n_expression),
        }

    def _scaled(self, shape: torch.Tensor, expression: torch.Tensor, **poses: torch.Tensor | None) -> HeadMesh:
        out = self.flame(shape, expression, **poses)
        s = self.config.flame_scale
        return HeadMesh(out.vertices * s, out.joints * s)

    def forward(
        self,
        shape: torch.Tensor,
        expression: torch.Tensor,
        neck_pose: torch.Tensor | None = None,
        jaw_pose: torch.Tensor | None = None,
        eye_pose: torch.Tensor | None = None,
    ) -> HeadMesh:
        """Posed head (global rotation always zero, as in the official FLAME wrapper)."""
        mesh = self._scaled(shape, expression, neck_pose=neck_pose, jaw_pose=jaw_pose, eye_pose=eye_pose)
        return HeadMesh(mesh.vertices - self.origin, mesh.joints - self.origin)

    @property
    def part_sets(self) -> PartVertexSets:
        return PartVertexSets(*(getattr(self, f"part_{name}") for name in PartVertexSets._fields))

    @property
    def faces(self) -> torch.Tensor:
        return self.flame.faces

    @property
    def proxy_edge_table(self) -> FaceEdges:
        return FaceEdges(self.proxy_edges, self.proxy_edge_first_face)

    def proxy_vertices(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, Vs, 3) proxy vertices of full meshes (B, V, 3)."""
        w = self.proxy_source_weights.to(vertices.dtype)
        return (vertices[:, self.proxy_source_vertices] * w[None, :, :, None]).sum(-2)

    def landmarks3d(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, L, 3) landmarks of meshes (B, V, 3); needs a landmark embedding."""
        if self.landmarks is None:
            raise ValueError("this FlameHead was built without a landmark embedding")
        return landmarks_from_vertices(vertices, self.faces, self.landmarks)

"""Vertex sets of the FLAME head that GenHead deforms and renders separately (eyes, face, mouth).

Official sources (user-supplied FLAME assets, loaded elsewhere and passed in as dicts):
- ``FLAME_masks.pkl`` (FLAME website): vertex-id arrays ``face``, ``left_eyeball``,
  ``right_eyeball``, ``lips``, ``noinmouth`` (training/deformer/deformation.py reads these five);
- models/FLAME/flame_addition_info_new_smallface.npy (pickled dict): ``eye_idxs`` (1092,) the two
  eyeballs, left half then right half, contiguous 3931..5022; ``face_idxs`` (3931,) = 0..3930;
  ``vertices_region_idxs`` (5023, 10) each vertex itself then its 1-ring (same part only),
  padded with 5023; ``eyelids_idxs`` (721,); plus ``eye_mask``, ``smallface_idxs``,
  ``dynamic_idxs`` that the GenHead path does not use.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch

OFFICIAL_REGION_WIDTH = 10


def _ids(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values).astype(np.int64).reshape(-1))


@dataclass(frozen=True)
class FlameParts:
    left_eye: torch.Tensor  # (Ve/2,) eyeball vertex ids (first half of official eye_idxs)
    right_eye: torch.Tensor  # (Ve/2,) (second half)
    face: torch.Tensor  # (Vf,) non-eyeball vertex ids searched for the face part (official face_idxs)
    lips: torch.Tensor  # (Vl,) lip vertex ids searched for the mouth part (FLAME_masks 'lips')
    eyelids: torch.Tensor  # (Vk,) vertices that take the blink expression (official eyelids_idxs)
    vertex_regions: torch.Tensor  # (V, K) each vertex, then its 1-ring, padded with V
    correspondence_region: torch.Tensor  # vertices of the rendered correspondence map: face ∪ eyeballs
    face_without_eyes: torch.Tensor  # FLAME_masks 'face'
    eyeballs: torch.Tensor  # FLAME_masks left ∪ right eyeball
    no_inner_mouth: torch.Tensor  # FLAME_masks 'noinmouth'

    def __post_init__(self) -> None:
        n = self.n_vertices
        for f in fields(self):
            value = getattr(self, f.name)
            if value.dtype != torch.long:
                raise TypeError(f"FlameParts.{f.name} must be a long tensor, got {value.dtype}")
            if f.name != "vertex_regions" and value.numel() and (int(value.min()) < 0 or int(value.max()) >= n):
                raise ValueError(f"FlameParts.{f.name} has vertex ids outside 0..{n - 1}")
        if self.vertex_regions.dim() != 2:
            raise ValueError(f"vertex_regions must be (V, K), got {tuple(self.vertex_regions.shape)}")
        for name in ("left_eye", "right_eye", "face", "lips"):
            if getattr(self, name).numel() == 0:
                raise ValueError(f"FlameParts.{name} is empty; the part deformation needs it")

    @property
    def n_vertices(self) -> int:
        return self.vertex_regions.shape[0]

    @classmethod
    def from_official(cls, masks: Mapping[str, Any], addition_info: Mapping[str, Any]) -> "FlameParts":
        """Read FLAME_masks.pkl and flame_addition_info*.npy dicts (already loaded)."""
        need_masks = {"face", "left_eyeball", "right_eyeball", "lips", "noinmouth"}
        need_info = {"eye_idxs", "face_idxs", "vertices_region_idxs", "eyelids_idxs"}
        for name, have, need in (("FLAME_masks", masks, need_masks), ("flame_addition_info", addition_info, need_info)):
            if need - set(have):
                raise KeyError(f"{name} lacks {sorted(need - set(have))} (have {sorted(have)})")
        eyes = _ids(addition_info["eye_idxs"])
        half = len(eyes) // 2  # official: first half left eyeball, second half right
        eyeballs = torch.unique(torch.cat([_ids(masks["right_eyeball"]), _ids(masks["left_eyeball"])]))
        face = torch.unique(_ids(masks["face"]))
        return cls(
            left_eye=eyes[:half],
            right_eye=eyes[half:],
            face=_ids(addition_info["face_idxs"]),
            lips=_ids(masks["lips"]),
            eyelids=_ids(addition_info["eyelids_idxs"]),
            vertex_regions=torch.as_tensor(np.asarray(addition_info["vertices_region_idxs"]).astype(np.int64)),
            correspondence_region=torch.unique(torch.cat([face, eyeballs])),
            face_without_eyes=face,
            eyeballs=eyeballs,
            no_inner_mouth=_ids(masks["noinmouth"]),
        )

    def to_official(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(FLAME_masks-like dict, flame_addition_info-like dict) for a synthetic bundle."""
        n = self.n_vertices
        eyes = torch.cat([self.left_eye, self.right_eye])
        eye_mask = np.zeros(n, dtype=np.float32)
        eye_mask[eyes.numpy()] = 1.0
        masks = {
            "face": self.face_without_eyes.numpy(),
            "left_eyeball": self.left_eye.numpy(),
            "right_eyeball": self.right_eye.numpy(),
            "lips": self.lips.numpy(),
            "noinmouth": self.no_inner_mouth.numpy(),
        }
        info = {
            "eye_idxs": eyes.numpy(),
            "face_idxs": self.face.numpy(),
            "vertices_region_idxs": self.vertex_regions.numpy(),
            "eyelids_idxs": self.eyelids.numpy(),
            "eye_mask": eye_mask,
        }
        return masks, info


def faces_within(vertex_ids: torch.Tensor, faces: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """Triangles (F', 3) of faces (F, 3) whose three corners are all in vertex_ids (official get_face_tri,
    but keeping the original vertex numbering)."""
    inside = torch.zeros(n_vertices, dtype=torch.bool, device=faces.device)
    inside[vertex_ids.to(faces.device)] = True
    return faces[inside[faces].all(-1)]


def vertex_regions(
    faces: torch.Tensor, n_vertices: int, labels: torch.Tensor, width: int = OFFICIAL_REGION_WIDTH
) -> torch.Tensor:
    """(V, width): each vertex, then its 1-ring neighbours with the same label, padded with V."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).long()
    edges = torch.unique(torch.cat([edges, edges.flip(1)]), dim=0)
    edges = edges[labels[edges[:, 0]] == labels[edges[:, 1]]]
    table = torch.full((n_vertices, width), n_vertices, dtype=torch.long)
    table[:, 0] = torch.arange(n_vertices)
    fill = torch.ones(n_vertices, dtype=torch.long)
    for a, b in edges.tolist():  # sorted by a, then b
        if fill[a] < width:
            table[a, fill[a]] = b
            fill[a] += 1
    return table


def synthetic_flame_parts(arrays: Mapping[str, Any]) -> FlameParts:
    """Part sets for a FLAME-like mesh that ships without FLAME_masks (e.g. model.flame.synthetic).

    Rules (ours, for synthetic heads only): eyeballs = vertices whose strongest skinning joint is
    an eye (3 left, 4 right); lips = other vertices whose jaw weight is between 0.25 and 0.75 (the
    jaw/cranium seam, where FLAME's lips are); eyelids = non-eye vertices touching an eyeball;
    correspondence region = eyeballs + the front half of the head (template z above its mean);
    no inner mouth = every vertex (the synthetic head has no mouth cavity).
    """
    weights = torch.as_tensor(np.asarray(arrays["weights"]), dtype=torch.float32)
    verts = torch.as_tensor(np.asarray(arrays["v_template"]), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(arrays["f"]).astype(np.int64))
    n = len(verts)
    strongest = weights.argmax(1)
    left, right = (strongest == 3).nonzero().squeeze(-1), (strongest == 4).nonzero().squeeze(-1)
    if len(left) == 0 or len(right) == 0:
        raise ValueError("no vertex is skinned mainly to an eye joint; cannot derive eyeball sets")
    is_eye = (strongest == 3) | (strongest == 4)
    face = (~is_eye).nonzero().squeeze(-1)
    lips = (~is_eye & (weights[:, 2] > 0.25) & (weights[:, 2] < 0.75)).nonzero().squeeze(-1)
    if len(lips) == 0:  # fall back to the most jaw-weighted skin vertex
        lips = face[weights[face, 2].argmax()].reshape(1)
    touches_eye = torch.zeros(n, dtype=torch.bool)
    touches_eye[faces[is_eye[faces].any(-1)].reshape(-1)] = True
    labels = strongest.where(is_eye, torch.zeros_like(strongest))
    front = (verts[:, 2] > verts[:, 2].mean()) & ~is_eye
    eyeballs = torch.cat([left, right]).sort().values
    return FlameParts(
        left_eye=left,
        right_eye=right,
        face=face,
        lips=lips,
        eyelids=(touches_eye & ~is_eye).nonzero().squeeze(-1),
        vertex_regions=vertex_regions(faces, n, labels),
        correspondence_region=torch.unique(torch.cat([front.nonzero().squeeze(-1), eyeballs])),
        face_without_eyes=front.nonzero().squeeze(-1),
        eyeballs=eyeballs,
        no_inner_mouth=torch.arange(n),
    )


def part_labels(parts: FlameParts) -> torch.Tensor:
    """(V,) 0 skin, 1 left eyeball, 2 right eyeball: keeps proxy-mesh clusters within one part."""
    labels = torch.zeros(parts.n_vertices, dtype=torch.long)
    labels[parts.left_eye] = 1
    labels[parts.right_eye] = 2
    return labels

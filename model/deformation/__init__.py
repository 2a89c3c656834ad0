"""FLAME-driven deformation fields and proxy-mesh rendering (pure torch; no pytorch3d, no file I/O).

Build once per model (assets are arrays that a loader in ``components`` has already read)::

    head = FlameHead(FlameLayer(flame_arrays), proxy, parts, landmark_embedding, DeformationConfig())
    # proxy = ProxyMesh.from_official(simplify_baricentric2_dict, n_flame_vertices=5023)
    #         or build_proxy_mesh(flame_arrays["v_template"], flame_arrays["f"], part_labels=part_labels(parts))
    # parts = FlameParts.from_official(flame_masks_dict, addition_info_dict)
    #         or synthetic_flame_parts(flame_arrays)

Deformer protocol (what a generator receives at forward time)::

    deform = HeadDeformation(head, shape, expression, neck_pose, jaw_pose, eye_pose)  # (B, ·) each
    deform(coords)                 # (B, P, 3) -> (B, P, 3): neck rotation removed. This IS the
                                   # renderer's ``deform_fn`` (Ψ_3d, Ψ): model.rendering.ImportanceRenderer(..., deform_fn=deform)
    deform.parts(coords, mouth=True) -> PartDeformation   # GenHead: canonical_eye / canonical_face /
                                   # canonical_mouth (B,P,3), dist_eye / dist_face / dist_mouth (B,P),
                                   # inside_eye_box (B,P) float — the official 'canonical_*',
                                   # 'dist_to_*_surface', 'inside_bbox_eye' outputs.
    deform.part_deformer()         # GenHead's protocol (model.networks.genhead_parts.PartDeformer):
                                   # __call__(points) -> PartDeformation, part_masks(c, size) -> PartMasks
    deform.correspondence(c, size) / deform.part_masks(c, size) / deform.landmarks(c, size)
                                   # images of the bound (posed, neck included) heads, see below

All are no-grad functions of FLAME (official). ``deform(coords)`` is differentiable in coords;
``parts`` returns detached tensors. A zero neck pose gives ``deform(coords) == coords`` exactly.
Optional ``eye_blink_expression`` (B, n_expr) replaces the eyelid vertices (official eye_blink_params).

Images for a camera label c (B, 25) at size² (pixel grid of model.rendering.RaySampler), with
autograd through the vertices (for fitting / losses)::

    mesh = head(shape, expression, neck_pose, jaw_pose, eye_pose)        # HeadMesh(vertices, joints)
    render_correspondence(head, mesh.vertices, c, size)  -> CorrespondenceMap(image (B,3,H,W), mask, depth)
    render_part_masks(head, mesh.vertices, c, size)      -> PartMasks(eye, head, mouth), each (B,1,H,W) raw;
        GenHead then (official triplane.py): eye_sr = gaussian blur σ=1 of eye; eye = resize(eye, neural res);
        mouth_sr = maxpool7(-maxpool7(-mouth)) blurred σ=2, + resize(resize(mouth, neural), full), clamp ≤1;
        head resized to the neural and full resolutions (bilinear, antialias).
    project_landmarks(head, mesh.vertices, c, size)      -> (B, L, 2) pixels, x right, y DOWN
                                                            (official is y-up: y_off = size - y)
    decompose_camera_pose(head, c_compose, shape, expression, neck_pose, jaw_pose) -> (B, 25)

World units: FLAME x 3, neck joint of the canonical head (jaw 0.3 rad) at the origin (official).

Fidelity: the neck field and the part field equal the official definitions (float64 references in
tests/model/test_field_fidelity.py, ≤ 3e-7 measured); docs/fidelity.md lists every departure. The
official nearest-surface search is pytorch3d's point-face distance, which for the FLAME proxy's
small triangles is the distance to the nearest EDGE, so every point ties between the triangles that
share that edge (or vertex); the official pick is float32 rounding, ours the lowest face index
(model.deformation.face_search). Where the tied triangles carry different maps (the neck seam, and
far from the head) the official field itself is only defined up to that pick.

Speed: on CUDA the nearest-face search is torch.compile'd on first use (~20 s once; set
P4D_EAGER=1 to stay eager); the voxel centres and the proxy's edge table are built once.
FLAME and the fields run in fp32 whatever the caller's autocast.
"""

from model.deformation.camera_pose import decompose_camera_pose
from model.deformation.config import DeformationConfig
from model.deformation.deformer import HeadDeformation, PartDeformer
from model.deformation.face_search import FaceEdges, NearestFace, face_edges, nearest_face
from model.deformation.flame_head import FlameHead, HeadMesh
from model.deformation.flame_parts import FlameParts, faces_within, part_labels, synthetic_flame_parts, vertex_regions
from model.deformation.head_render import (
    CorrespondenceMap,
    PartMasks,
    correspondence_features,
    project_landmarks,
    render_correspondence,
    render_part_masks,
)
from model.deformation.nearest import NearestTriangle, NearestVertex, nearest_triangle, nearest_vertex
from model.deformation.neck_field import NeckRotationField, box_filter3d, voxel_centres
from model.deformation.part_deformation import PartDeformation, PartVertexSets, part_deformation
from model.deformation.proxy_mesh import ProxyMesh, build_proxy_mesh
from model.deformation.rasterizer import Fragments, interpolate, project_points, rasterize
from model.deformation.surface_field import face_normals, surface_field_offsets

__all__ = [
    "CorrespondenceMap",
    "DeformationConfig",
    "FaceEdges",
    "FlameHead",
    "FlameParts",
    "Fragments",
    "HeadDeformation",
    "HeadMesh",
    "NearestFace",
    "NearestTriangle",
    "NearestVertex",
    "NeckRotationField",
    "PartDeformation",
    "PartDeformer",
    "PartMasks",
    "PartVertexSets",
    "ProxyMesh",
    "box_filter3d",
    "build_proxy_mesh",
    "correspondence_features",
    "decompose_camera_pose",
    "face_normals",
    "face_edges",
    "faces_within",
    "interpolate",
    "nearest_face",
    "nearest_triangle",
    "nearest_vertex",
    "part_deformation",
    "part_labels",
    "project_landmarks",
    "project_points",
    "rasterize",
    "render_correspondence",
    "render_part_masks",
    "surface_field_offsets",
    "synthetic_flame_parts",
    "vertex_regions",
    "voxel_centres",
]

"""Every external (user-supplied, licensed) file the system reads, where it goes and where to get it.

Nothing is downloaded at run time: a user places these files under one asset directory (locally or
synced from S3) and ``p4d assets check --dir D`` verifies each. ``p4d assets synth`` writes a
synthetic bundle in the same formats for tests and the embedded default; its ``bundle.json`` marks
it synthetic so no report or registry entry can pass it off as real weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# evaluate.fid_inception_weights' default: evaluate reads the file there unless that setting says otherwise
from components.config.evaluate import FID_INCEPTION_WEIGHTS

BUNDLE_METADATA = "bundle.json"

Kind = Literal[
    "flame_model",
    "flame_landmarks",
    "mediapipe_embedding",
    "flame_masks",
    "flame_parts_info",
    "flame_proxy_mesh",
    "official_pickle",
    "state_dict",
    "fid_inception",
]


@dataclass(frozen=True)
class AssetSpec:
    name: str
    path: str  # relative to the asset directory
    kind: Kind
    required: bool
    format: str  # what the file is, in a user's words
    obtain: str  # where a user gets the real file
    network: str | None = None  # for weights: which of our networks reads them (key list name)
    in_synthetic_bundle: bool = True  # `p4d assets synth` writes a random stand-in of it


ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec(
        "flame_model",
        "flame/generic_model.pkl",
        "flame_model",
        True,
        "FLAME 2020 model pickle (chumpy arrays): 5023 vertices, 9976 faces, 300 shape + 100 expression, 5 joints",
        "register at https://flame.is.tue.mpg.de and download FLAME 2020 (generic_model.pkl)",
    ),
    AssetSpec(
        "flame_landmarks",
        "flame/landmark_embedding.npy",
        "flame_landmarks",
        True,
        "pickled dict in .npy: static/dynamic/full landmark face indices + barycentric coordinates (68 points)",
        "DECA / official Portrait-4D repository (models/FLAME/geometry/landmark_embedding.npy)",
    ),
    AssetSpec(
        "mediapipe_embedding",
        "flame/mediapipe_landmark_embedding.npz",
        "mediapipe_embedding",
        True,
        "npz: lmk_face_idx (105,), lmk_b_coords (105, 3), landmark_indices (105,) into the 478 MediaPipe points",
        "MICA / flame-head-tracker release (mediapipe_landmark_embedding.npz)",
    ),
    AssetSpec(
        "flame_masks",
        "flame/FLAME_masks.pkl",
        "flame_masks",
        False,
        "pickled dict of FLAME vertex-id arrays (face, left_eyeball, right_eyeball, lips, noinmouth, ...)",
        "https://flame.is.tue.mpg.de (FLAME_masks.zip); without it part sets are derived from the mesh",
    ),
    AssetSpec(
        "flame_parts_info",
        "flame/flame_addition_info_new_smallface.npy",
        "flame_parts_info",
        False,
        "pickled dict in .npy: eye_idxs, face_idxs, vertices_region_idxs (V, 10), eyelids_idxs",
        "official Portrait-4D repository (portrait4d/models/FLAME/flame_addition_info_new_smallface.npy)",
    ),
    AssetSpec(
        "flame_proxy_mesh",
        "flame/simplify_baricentric2.npy",
        "flame_proxy_mesh",
        False,
        "pickled dict in .npy: simplified FLAME proxy mesh for the neck rotation field (idxs, baris, faces, "
        "coarse_face_region_idxs)",
        "official Portrait-4D repository (portrait4d/models/FLAME/simplify_baricentric2.npy); without it a "
        "proxy mesh is built from the FLAME mesh",
    ),
    AssetSpec(
        "genhead",
        "weights/genhead-ffhq512.pkl",
        "official_pickle",
        True,
        "official StyleGAN-style network pickle (G, D, G_ema); read without executing its code",
        "Portrait-4D release (GenHead trained on FFHQ at 512²)",
        network="genhead",
    ),
    AssetSpec(
        "psi3d",
        "weights/portrait4d-static-genhead512.pkl",
        "official_pickle",
        False,
        "official StyleGAN-style network pickle of Ψ_3d (static); optional: training can start from scratch",
        "Portrait-4D release (portrait4d-static-genhead512.pkl)",
        network="psi3d",
    ),
    AssetSpec(
        "psi",
        "weights/portrait4d-v2-vfhq512.pkl",
        "official_pickle",
        False,
        "official StyleGAN-style network pickle of Ψ (Portrait4D-v2); optional: for serving/fine-tuning",
        "Portrait-4D release (portrait4d-v2-vfhq512.pkl)",
        network="psi",
    ),
    AssetSpec(
        "pdfgc",
        "weights/motion_model.pth",
        "state_dict",
        True,
        "PyTorch state dict of the PD-FGC motion encoder (548-d motion embedding)",
        "PD-FGC release (Wang et al., CVPR 2023): motion_model.pth",
        network="pdfgc_motion_model",
    ),
    AssetSpec(
        "arcface",
        "weights/arcface_r18_backbone.pth",
        "state_dict",
        True,
        "PyTorch state dict of ArcFace iresnet18 (identity loss)",
        "insightface arcface_torch model zoo: ms1mv3_arcface_r18_fp16/backbone.pth",
        network="arcface_r18",
    ),
    AssetSpec(
        "lpips",
        "weights/lpips_vgg.pth",
        "state_dict",
        True,
        "PyTorch state dict of LPIPS-VGG16 (VGG16 features + v0.1 linear heads) in our key layout",
        "VGG16 ImageNet weights + LPIPS v0.1 vgg.pth (richzhang/PerceptualSimilarity), merged by "
        "`p4d import-official --pth ... --kind lpips`",
        network="lpips_vgg",
    ),
    AssetSpec(
        "fid_inception",
        FID_INCEPTION_WEIGHTS,
        "fid_inception",
        False,
        "PyTorch state dict of the FID Inception-v3 (TF 2015-12-05 graph ported to PyTorch): 472 tensors, "
        "fc.weight (1008, 2048); optional: without it eval/fid is \"not computed\"",
        "pytorch-fid release fid_weights: pt_inception-2015-12-05-6726825d.pth (github.com/mseitzer/pytorch-fid "
        "releases; torch-fidelity's weights-inception-2015-12-05-6726825d.pth has the same SHA-256 prefix), saved as "
        f"{FID_INCEPTION_WEIGHTS}",
        # fixed paper-size weights (24 M parameters, ~95 MB): too big to write into every synthetic bundle
        in_synthetic_bundle=False,
    ),
)


def spec(name: str) -> AssetSpec:
    for a in ASSETS:
        if a.name == name:
            return a
    raise KeyError(f"unknown asset {name!r}; known: {', '.join(a.name for a in ASSETS)}")

"""The user-supplied files this stage reads, loaded and validated once per run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.assets.manifest import BUNDLE_METADATA, spec
from components.errors import P4DError
from model.face_mesh import N_MESH_POINTS
from model.flame import FlameFileError, LandmarkEmbedding, load_flame_pickle, load_landmark_embeddings
from model.networks.pdfgc import PDFGCConfig, PDFGCMotionEncoder


class AssetError(P4DError, ValueError):
    """An asset file is missing or unreadable; the message names the file and where to get it."""


@dataclass
class FitAssets:
    flame_arrays: dict[str, Any]
    embedding: LandmarkEmbedding  # MediaPipe -> FLAME, with landmark_indices into the 478 points
    motion_encoder: PDFGCMotionEncoder | None  # None when the PD-FGC weights are not supplied
    synthetic: bool  # bundle.json says these are stand-ins, not the licensed files
    fingerprint: str  # sha256 over the files used: part of the resume key


def _path(assets_dir: Path, name: str) -> Path:
    return assets_dir / spec(name).path


def _missing(assets_dir: Path, name: str) -> AssetError:
    s = spec(name)
    return AssetError(f"asset {s.name!r} not found at {assets_dir / s.path} ({s.format}); obtain: {s.obtain}")


def load_assets(assets_dir: Path) -> FitAssets:
    if not assets_dir.is_dir():
        raise AssetError(f"--assets {assets_dir}: no such folder")
    digest = hashlib.sha256()
    flame_path = _path(assets_dir, "flame_model")
    if not flame_path.is_file():
        raise _missing(assets_dir, "flame_model")
    embedding_path = _path(assets_dir, "mediapipe_embedding")
    if not embedding_path.is_file():
        raise _missing(assets_dir, "mediapipe_embedding")
    try:
        arrays = load_flame_pickle(flame_path)
        embedding = load_landmark_embeddings(embedding_path)["mediapipe"]
    except (FlameFileError, OSError, ValueError, KeyError) as err:
        raise AssetError(f"cannot read FLAME assets: {err}") from None
    if embedding.landmark_indices is None or int(embedding.landmark_indices.max()) >= N_MESH_POINTS:
        raise AssetError(f"{embedding_path}: landmark_indices must index the {N_MESH_POINTS} MediaPipe points")
    n_faces = len(arrays["f"])
    if int(embedding.face_idx.max()) >= n_faces:
        raise AssetError(f"{embedding_path}: face indices exceed the FLAME model's {n_faces} triangles")
    for path in (flame_path, embedding_path):
        digest.update(path.read_bytes())

    motion_path = _path(assets_dir, "pdfgc")
    encoder = None
    if motion_path.is_file():
        encoder = _load_motion_encoder(motion_path)
        digest.update(motion_path.read_bytes())

    synthetic = False
    bundle = assets_dir / BUNDLE_METADATA
    if bundle.is_file():
        try:
            synthetic = bool(json.loads(bundle.read_text()).get("synthetic", False))
        except (json.JSONDecodeError, AttributeError) as err:
            raise AssetError(f"{bundle}: not a JSON object ({err})") from None
    return FitAssets(arrays, embedding, encoder, synthetic, digest.hexdigest()[:16])


def _load_motion_encoder(path: Path) -> PDFGCMotionEncoder:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same here
        raise AssetError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    # The released weights are the paper size; synthetic bundles may carry the tiny network.
    errors = []
    for cfg in (PDFGCConfig(), PDFGCConfig.tiny()):
        encoder = PDFGCMotionEncoder(cfg)
        try:
            encoder.load_state_dict(state, strict=True)
            return encoder.eval().requires_grad_(False)
        except (RuntimeError, TypeError) as err:
            errors.append(str(err).splitlines()[0])
    raise AssetError(f"{path}: does not match the PD-FGC motion encoder ({errors[0]})")

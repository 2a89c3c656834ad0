"""Verify an asset directory: one result per asset (ok / missing / wrong format, with the reason).

Checks read the files for real (FLAME through the restricted unpickler, network pickles through the
code-free reader, state dicts with ``weights_only=True``) and compare shapes with what our networks
expect for the bundle's profile. Nothing here executes code from a file.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from components.assets.manifest import ASSETS, BUNDLE_METADATA, AssetSpec
from components.errors import P4DError
from model.face_mesh import N_MESH_POINTS

Status = Literal["ok", "missing", "wrong format"]


class AssetError(P4DError):
    """An asset is missing or not in the expected format."""


@dataclass(frozen=True)
class AssetResult:
    spec: AssetSpec
    status: Status
    detail: str

    def line(self) -> str:
        req = "required" if self.spec.required else "optional"
        return f"{self.status:<13} {self.spec.name:<20} {self.spec.path} ({req}): {self.detail}"


@dataclass(frozen=True)
class BundleInfo:
    synthetic: bool
    profile: str


def read_bundle_info(asset_dir: Path) -> BundleInfo:
    """``bundle.json`` written by ``p4d assets synth``; a directory without one holds real assets (paper)."""
    meta = asset_dir / BUNDLE_METADATA
    if not meta.exists():
        return BundleInfo(synthetic=False, profile="paper")
    try:
        data = json.loads(meta.read_text())
        return BundleInfo(synthetic=bool(data["synthetic"]), profile=str(data["profile"]))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise AssetError(f"{meta}: unreadable bundle metadata ({err}); re-create it with `p4d assets synth`") from None


def _check_flame_model(path: Path, bundle: BundleInfo) -> str:
    from model.flame import load_flame_pickle

    arrays = load_flame_pickle(path)
    need = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"missing arrays {missing}")
    v = arrays["v_template"].shape
    sd = arrays["shapedirs"].shape
    if len(v) != 2 or v[1] != 3:
        raise ValueError(f"v_template has shape {v}, expected (V, 3)")
    if sd[:2] != v or sd[2] < 400:
        raise ValueError(f"shapedirs has shape {sd}, expected ({v[0]}, 3, >=400)")
    if arrays["J_regressor"].shape != (5, v[0]) or arrays["weights"].shape != (v[0], 5):
        raise ValueError(
            f"J_regressor {arrays['J_regressor'].shape} / weights {arrays['weights'].shape} do not match 5 joints x {v[0]} vertices"
        )
    if not bundle.synthetic and v[0] != 5023:
        raise ValueError(f"{v[0]} vertices; FLAME 2020 has 5023")
    return f"FLAME {v[0]} vertices, {arrays['f'].shape[0]} faces, {sd[2]} blendshapes"


def _check_flame_landmarks(path: Path, bundle: BundleInfo) -> str:
    from model.flame import load_pickled_npy

    data = load_pickled_npy(path)
    if not isinstance(data, dict):
        raise ValueError(f"holds a {type(data).__name__}, expected a dict of landmark arrays")
    need = ("static_lmk_faces_idx", "static_lmk_bary_coords")
    missing = [k for k in need if k not in data]
    if missing:
        raise ValueError(f"missing keys {missing}")
    n = np.asarray(data["static_lmk_faces_idx"]).shape[0]
    bary = np.asarray(data["static_lmk_bary_coords"])
    if bary.shape != (n, 3):
        raise ValueError(f"static_lmk_bary_coords has shape {bary.shape}, expected ({n}, 3)")
    return f"{n} static landmarks"


def _check_mediapipe_embedding(path: Path, bundle: BundleInfo) -> str:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"not a readable npz ({err})") from None
    need = ("lmk_face_idx", "lmk_b_coords", "landmark_indices")
    missing = [k for k in need if k not in data.files]
    if missing:
        raise ValueError(f"missing arrays {missing}")
    n = data["lmk_face_idx"].shape[0]
    if data["lmk_b_coords"].shape != (n, 3) or data["landmark_indices"].shape != (n,):
        raise ValueError(
            f"shapes {data['lmk_b_coords'].shape} / {data['landmark_indices'].shape} do not match {n} landmarks"
        )
    if data["landmark_indices"].max(initial=0) >= N_MESH_POINTS:
        raise ValueError(f"landmark_indices point past the {N_MESH_POINTS} MediaPipe face-mesh points")
    return f"{n} MediaPipe-to-FLAME landmarks"


def _check_flame_parts(path: Path, bundle: BundleInfo, kind: str) -> str:
    """FLAME part sets / proxy mesh: read with the official readers against the bundle's FLAME model."""
    from components.assets.flame import official_parts_and_proxy
    from components.assets.manifest import spec
    from model.flame import load_flame_pickle

    root = path.parents[len(Path(spec(kind).path).parts) - 1]
    n_vertices = load_flame_pickle(root / spec("flame_model").path)["v_template"].shape[0]
    if kind == "flame_proxy_mesh":
        _, proxy = official_parts_and_proxy(root, n_vertices)
        return f"proxy mesh with {proxy.n_vertices} vertices, {len(proxy.faces)} faces"
    other = "flame_parts_info" if kind == "flame_masks" else "flame_masks"
    if not (root / spec(other).path).exists():
        return f"readable; pairs with {spec(other).path}, which is missing (part sets will be derived)"
    parts, _ = official_parts_and_proxy(root, n_vertices)
    return f"part sets for {parts.n_vertices} vertices ({len(parts.left_eye) + len(parts.right_eye)} eyeball vertices)"


def _compare_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{len(missing)} missing keys (first: {missing[:3]}), {len(extra)} unexpected keys (first: {extra[:3]})"
        )
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            raise ValueError(f"key {key!r} has shape {tuple(found[key])}, expected {tuple(shape)}")


def _check_official_pickle(path: Path, bundle: BundleInfo, network: str) -> str:
    from components.assets.networks import expected_shapes
    from components.import_official import read_official_pickle

    record = read_official_pickle(path)
    if "G_ema" not in record.networks:
        raise ValueError(f"no G_ema network in the pickle (found: {sorted(record.networks)})")
    found = {k: tuple(v.shape) for k, v in record.networks["G_ema"].state_dict.items()}
    _compare_shapes(found, expected_shapes(network, bundle.profile))
    return f"G_ema with {len(found)} tensors matches the {bundle.profile} {network} architecture"


def _check_state_dict(path: Path, bundle: BundleInfo, network: str) -> str:
    import torch

    from components.assets.networks import expected_shapes

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"not a plain PyTorch state dict ({str(err).splitlines()[0]})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"holds a {type(sd).__name__}, expected a state dict")
    found = {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
    _compare_shapes(found, expected_shapes(network, bundle.profile))
    return f"{len(found)} tensors match the {bundle.profile} {network} architecture"


def _check_fid_inception(path: Path) -> str:
    """The FID Inception weights, through the reader evaluate loads them with (weights_only + key/shape check)."""
    from components.assets.fid_inception import read_inception_weights

    state = read_inception_weights(path)
    return f"{len(state)} tensors match the FID Inception-v3 (pool3 2048-d features)"


def check_asset(asset_dir: Path, spec: AssetSpec, bundle: BundleInfo) -> AssetResult:
    path = asset_dir / spec.path
    if not path.exists():
        return AssetResult(spec, "missing", f"not found; {spec.obtain}")
    if path.stat().st_size == 0:
        return AssetResult(spec, "wrong format", "empty file")
    try:
        if spec.kind == "flame_model":
            detail = _check_flame_model(path, bundle)
        elif spec.kind == "flame_landmarks":
            detail = _check_flame_landmarks(path, bundle)
        elif spec.kind == "mediapipe_embedding":
            detail = _check_mediapipe_embedding(path, bundle)
        elif spec.kind in ("flame_masks", "flame_parts_info", "flame_proxy_mesh"):
            detail = _check_flame_parts(path, bundle, spec.kind)
        elif spec.kind == "fid_inception":
            detail = _check_fid_inception(path)
        elif spec.kind == "official_pickle":
            detail = _check_official_pickle(path, bundle, spec.network or spec.name)
        else:
            detail = _check_state_dict(path, bundle, spec.network or spec.name)
    except (ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError, P4DError) as err:
        return AssetResult(spec, "wrong format", str(err).splitlines()[0] or type(err).__name__)
    if bundle.synthetic and spec.in_synthetic_bundle:  # a user-supplied file in a synthetic bundle is real
        detail += " [SYNTHETIC]"
    return AssetResult(spec, "ok", detail)


def check_assets(asset_dir: str | Path) -> tuple[BundleInfo, list[AssetResult]]:
    asset_dir = Path(asset_dir)
    if not asset_dir.is_dir():
        raise AssetError(f"asset directory {asset_dir} does not exist; create one with `p4d assets synth --out {asset_dir}`")
    bundle = read_bundle_info(asset_dir)
    return bundle, [check_asset(asset_dir, spec, bundle) for spec in ASSETS]


def require_assets(asset_dir: str | Path, names: list[str]) -> BundleInfo:
    """Fail before any work if one of ``names`` is not ok; stages call this first."""
    bundle, results = check_assets(asset_dir)
    bad = [r for r in results if r.spec.name in names and r.status != "ok"]
    if bad:
        lines = "\n  ".join(r.line() for r in bad)
        raise AssetError(f"assets in {asset_dir} are not usable:\n  {lines}")
    return bundle

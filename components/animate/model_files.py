"""Where a trained Ψ comes from, and the self-contained *model package* that MLflow and Triton ship.

``Animator.load`` accepts four forms of a model; this module turns each into one ``PsiWeights``
(tensors + the network config that built them + where the inference settings come from):

- a ``p4d train psi`` output folder: the newest complete checkpoint's EMA generator
  (``checkpoints/ckpt-*/ema.safetensors``), else the final export ``model/psi.safetensors``;
- a weights file: a ``.safetensors`` written by training (its metadata holds the network config) or by
  ``p4d import-official`` from ``portrait4d-v2-vfhq512.pkl`` (its ``.json`` sidecar says which official
  key list the tensors matched; the official key list is the paper-size network, so the config is
  ``PsiConfig()`` with the sidecar's neural rendering resolution);
- a model package folder (``animator.json`` + ``psi.safetensors`` + ``assets/``), see ``write_package``;
- an MLflow URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/PATH``) whose artifacts hold a
  package: downloaded once, then read as a package.

Network sizes always come with the weights; the inference settings that are not part of the network
(FLAME fitting, the neck-field deformation sizes, the neural rendering resolution Ψ was trained at) come
from the package, or, for the other forms, from the typed config of the run (``--params``/profile).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from components.assets.manifest import BUNDLE_METADATA, spec
from components.errors import P4DError
from components.io.atomic import atomic_dir
from model.networks.psi import PsiConfig

PACKAGE_FILE = "animator.json"
PACKAGE_WEIGHTS = "psi.safetensors"
PACKAGE_ASSETS = "assets"
PACKAGE_FORMAT = "p4d-animator-package"
PACKAGE_VERSION = 1
# What the Animator reads from an asset bundle: FLAME + its embeddings (alignment, fitting, the neck
# field, landmarks for crops), the optional part / proxy-mesh files (neck field), PD-FGC (motion).
PACKAGE_ASSET_NAMES = ("flame_model", "flame_landmarks", "mediapipe_embedding", "flame_masks", "flame_parts_info",
                       "flame_proxy_mesh", "pdfgc")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class ModelLoadError(P4DError):
    """The model argument is none of the accepted forms, or its weights do not fit their network config."""


@dataclass
class PsiWeights:
    state: dict[str, torch.Tensor]
    config: PsiConfig
    source: str  # what was loaded, for messages and model cards
    package: dict[str, Any] | None = None  # animator.json of a package (inference settings), else None
    assets: Path | None = None  # a package's own asset folder


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safetensors.safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except (safetensors.SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err})") from None


def _config_from_metadata(path: Path, meta: dict[str, str]) -> PsiConfig | None:
    if "config" not in meta:
        return None
    if meta.get("network") not in ("psi", None):
        raise ModelLoadError(f"{path}: holds a {meta.get('network')!r} network, not Ψ (a `p4d train psi` output)")
    try:
        cfg = PsiConfig.model_validate(json.loads(meta["config"]))
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"{path}: its network config is not a valid Ψ config ({err})") from None
    if cfg.static:
        raise ModelLoadError(f"{path}: is a static Ψ_3d; animation needs Ψ (`p4d train psi` output)")
    return cfg


def _official_sidecar(path: Path) -> dict[str, Any] | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    from components.import_official.errors import OfficialImportError
    from components.import_official.importer import read_sidecar

    try:
        return read_sidecar(sidecar)
    except OfficialImportError as err:
        raise ModelLoadError(str(err)) from None


def _from_file(path: Path) -> PsiWeights:
    meta = _metadata(path)
    cfg = _config_from_metadata(path, meta)
    if cfg is None:
        sidecar = _official_sidecar(path)
        if sidecar is None:
            raise ModelLoadError(f"{path}: safetensors without a network config (no 'config' metadata and no "
                                 f"{path.with_suffix('.json').name} sidecar from `p4d import-official`)")
        if sidecar.get("kind") != "psi":
            raise ModelLoadError(f"{path}: the import sidecar says kind {sidecar.get('kind')!r}; animation needs "
                                 "Ψ (import portrait4d-v2-vfhq512.pkl)")
        # The importer only writes a 'psi' sidecar after every key and shape matched the official Ψ list,
        # which is the paper-size network: PsiConfig() is that network, not a guess.
        res = sidecar.get("neural_rendering_resolution") or PsiConfig().neural_rendering_resolution
        cfg = PsiConfig(neural_rendering_resolution=int(res))
    return PsiWeights(_read_tensors(path), cfg, str(path))


def _from_run_dir(path: Path) -> PsiWeights:
    from components.train.checkpoint import EMA_FILE, complete_checkpoints
    from components.train.models import MODEL_DIR

    done = complete_checkpoints(path / "checkpoints")
    for candidate in ([done[-1] / EMA_FILE] if done else []) + [path / MODEL_DIR / "psi.safetensors"]:
        if candidate.is_file():
            return _from_file(candidate)
    raise ModelLoadError(f"{path}: a folder without Ψ weights: expected a `p4d train psi` output (checkpoints/ckpt-*/"
                         f"{EMA_FILE} or {MODEL_DIR}/psi.safetensors) or a model package ({PACKAGE_FILE})")


def _from_package(path: Path) -> PsiWeights:
    try:
        info = json.loads((path / PACKAGE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path / PACKAGE_FILE}: unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != PACKAGE_FORMAT:
        raise ModelLoadError(f"{path / PACKAGE_FILE}: not a p4d model package (format {info.get('format')!r})")
    weights = _from_file(path / PACKAGE_WEIGHTS)
    weights.package, weights.assets, weights.source = info, path / PACKAGE_ASSETS, info.get("source", str(path))
    return weights


def _download_mlflow(uri: str) -> Path:
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # MlflowException, connection errors, ...: all mean "cannot fetch this URI"
        raise ModelLoadError(f"{uri}: cannot download the model from MLflow ({type(err).__name__}: {err})") from None
    found = sorted(p.parent for p in local.rglob(PACKAGE_FILE))
    if not found:
        raise ModelLoadError(f"{uri}: the MLflow artifacts hold no p4d model package ({PACKAGE_FILE})")
    return found[0]


def resolve_weights(model: str | Path) -> PsiWeights:
    """The Ψ weights and network config of any accepted model form (see the module docstring)."""
    text = str(model)
    if text.startswith(MLFLOW_SCHEMES):
        return _from_package(_download_mlflow(text))
    path = Path(model)
    if path.is_dir():
        return _from_package(path) if (path / PACKAGE_FILE).is_file() else _from_run_dir(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{path}: unsupported model file {path.suffix!r}; import official pickles first "
                                 "with `p4d import-official --pkl X.pkl --out X` and pass X.safetensors")
        return _from_file(path)
    raise ModelLoadError(f"{model}: no such file or folder, and not an MLflow URI ({', '.join(MLFLOW_SCHEMES)}...)")


def check_state(weights: PsiWeights, own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors Ψ loads; a clear error naming keys when the weights do not fit the network config."""
    state = {k: v for k, v in weights.state.items() if k in own}  # official extras: deformer.*, dataset_label_std
    missing = sorted(set(own) - set(state))
    if missing:
        raise ModelLoadError(f"{weights.source}: weights lack {len(missing)} keys of the Ψ network they declare "
                             f"(first: {', '.join(missing[:3])})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise ModelLoadError(f"{weights.source}: {len(wrong)} tensors do not match the network sizes stored with the "
                             f"weights (weights vs network: {'; '.join(wrong[:3])})")
    return state


def write_package(out: str | Path, state: dict[str, torch.Tensor], psi_config: PsiConfig, info: dict[str, Any],
                  asset_dir: Path) -> Path:
    """A folder that ``Animator.load`` reads with nothing else: weights + config, settings, needed assets.

    Written under a temporary name and renamed, so a half-written package is never visible.
    """
    out = Path(out)
    if out.exists():
        raise ModelLoadError(f"{out}: already exists; choose a new folder for the package")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        meta = {"network": "psi", "config": json.dumps(psi_config.model_dump(mode="json"))}
        safetensors.torch.save_file(tensors, str(tmp / PACKAGE_WEIGHTS), metadata=meta)
        copied = []
        for name in PACKAGE_ASSET_NAMES:
            src = asset_dir / spec(name).path
            if src.is_file():
                dst = tmp / PACKAGE_ASSETS / spec(name).path
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                copied.append(name)
        if (asset_dir / BUNDLE_METADATA).is_file():
            shutil.copyfile(asset_dir / BUNDLE_METADATA, tmp / PACKAGE_ASSETS / BUNDLE_METADATA)
        body = {"format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION, **info, "assets": copied}
        (tmp / PACKAGE_FILE).write_text(json.dumps(body, indent=2) + "\n")
    return out

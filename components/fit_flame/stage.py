"""The ``fit_flame`` stage: real images / video clips -> aligned crops, FLAME labels, motion features.

Outputs under ``out_dir`` (all written atomically):
- ``crops/<id>.png``: aligned crops (``crop_size``², 512 for the paper);
- ``labels.npy`` (N, 437) float32, official layout (model.cameras.LabelLayout);
- ``landmarks.npy`` (N, 478, 2) float32: MediaPipe points in crop pixels (+y down);
- ``motion.npy`` (N, 548) float32: PD-FGC motion, only when the asset is supplied;
- ``manifest.parquet``: one row per input item (see manifest.py); row k of the arrays is the
  item whose ``label_row`` is k;
- ``summary.json``: counts, config, asset fingerprint, and whether the assets were synthetic;
- ``config.yaml``: the run's whole resolved config, when the caller passes it (the CLI does);
- ``items/``: the per-input resume cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from components.errors import P4DError
from components.fit_flame.assets import FitAssets, load_assets
from components.config.fit_flame import FitFlameConfig
from components.fit_flame.fitting import FlameFitter
from components.fit_flame.manifest import FAILED, MANIFEST_NAME, OK, ManifestRow, write_manifest
from components.fit_flame.media import InputItem, list_inputs
from components.fit_flame.motion import encode_motion
from components.fit_flame.pool import prepared_inputs
from components.fit_flame.prepare import PENDING_DIR, PrepareContext, PreparedFace, PreparedInput
from components.fit_flame.units import UnitResult, save_unit
from components.config import P4DConfig
from components.io.atomic import atomic_path, atomic_write_text
from components.io.run_config import write_run_config
from model.cameras import LABEL_DIM

log = logging.getLogger(__name__)
MOTION_BATCH = 64  # PD-FGC crops encoded together


class FailureRatioExceeded(P4DError):
    """Too many items failed; every output is still written so the manifest can be inspected."""

    exit_code = 3

    def __init__(self, message: str, result: "FitFlameResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class FitFlameResult:
    out_dir: Path
    n_items: int
    n_ok: int
    n_failed: int
    n_reused_inputs: int
    has_motion: bool
    reasons: dict[str, int] = field(default_factory=dict)  # failure reason -> count

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def failure_ratio(self) -> float:
        return self.n_failed / max(self.n_items, 1)


def unit_ids(items: list[InputItem]) -> list[str]:
    """File-system-safe ids from relative names; ambiguous ones get a short hash of the name."""
    stems = [re.sub(r"[^A-Za-z0-9._-]+", "_", it.name.rsplit(".", 1)[0].replace("/", "__")) or "item" for it in items]
    counts = Counter(stems)
    return [
        f"{stem}-{hashlib.sha1(it.name.encode()).hexdigest()[:8]}" if counts[stem] > 1 else stem
        for stem, it in zip(stems, items)
    ]


class _Stage:
    """Consumes prepared inputs in order: batches their faces for the fit, commits each input."""

    def __init__(self, cfg: FitFlameConfig, assets: FitAssets, out_dir: Path, video: bool, device: str, batch: int):
        self.cfg, self.assets, self.out_dir = cfg, assets, out_dir
        self.video, self.device, self.batch = video, device, batch
        self.config_key = f"{cfg.fingerprint()}-{assets.fingerprint}-{'video' if video else 'image'}"
        self.fitter = FlameFitter(assets.flame_arrays, assets.embedding, cfg).to(device)
        self.results: dict[str, UnitResult] = {}
        self.queue: list[PreparedInput] = []
        self.motion: dict[int, np.ndarray] = {}  # id(PreparedFace) -> motion embedding
        self.motion_queue: list[PreparedFace] = []
        self.n_reused = 0

    def accept(self, prepared: PreparedInput) -> None:
        if prepared.reused is not None:
            self.results[prepared.unit_id] = prepared.reused
            self.n_reused += 1
            return
        faces = [f for f in prepared.faces if f is not None]
        if not faces:
            self._commit(UnitResult.failed(prepared.unit_id, prepared.sha256, self.config_key, prepared.rows), [])
            return
        self.queue.append(prepared)
        if self.assets.motion_encoder is not None:
            self.motion_queue.extend(faces)
            if len(self.motion_queue) >= MOTION_BATCH:
                self._encode_motion()
        if sum(f is not None for p in self.queue for f in p.faces) >= self.batch:
            self.flush()

    def _encode_motion(self) -> None:
        """PD-FGC on the queued motion crops, in GPU-sized chunks; the crops are then dropped."""
        faces, self.motion_queue = self.motion_queue, []
        for i in range(0, len(faces), MOTION_BATCH):
            chunk = faces[i : i + MOTION_BATCH]
            codes = encode_motion(self.assets.motion_encoder, np.stack([f.motion_crop for f in chunk]), self.device)
            for face, code in zip(chunk, codes):
                self.motion[id(face)] = code
                face.motion_crop = None

    # ------------------------------------------------------------------------- batched fit
    def flush(self) -> None:
        if not self.queue:
            return
        if self.motion_queue:
            self._encode_motion()
        queue, self.queue = self.queue, []
        faces = [(u, k, f) for u, p in enumerate(queue) for k, f in enumerate(p.faces) if f is not None]
        landmarks = np.stack([f.landmarks for _, _, f in faces]).astype(np.float32)
        try:
            targets = torch.from_numpy(landmarks[:, self.assets.embedding.landmark_indices.numpy()]).to(self.device)
            # Images get their own shape; the frames of one clip share theirs (group = input).
            groups = torch.tensor([u for u, _, _ in faces], device=self.device) if self.video else None
            fit = self.fitter(targets, self.cfg.crop_size, groups)
            labels = fit.labels.cpu().numpy().astype(np.float32)
            errors = fit.reprojection_px.cpu().numpy()
        except Exception as err:
            log.exception("FLAME fit failed for a batch")
            for u, k, face in faces:
                row = queue[u].rows[k]
                row.status, row.reason = FAILED, f"FLAME fit failed: {type(err).__name__}: {err}"
                face.pending_crop.unlink(missing_ok=True)
                self.motion.pop(id(face), None)
            for p in queue:
                self._commit(UnitResult.failed(p.unit_id, p.sha256, self.config_key, p.rows), [])
            return

        for u, p in enumerate(queue):
            keep, crops = [], []
            for j, (fu, k, face) in enumerate(faces):
                if fu != u:
                    continue
                row = p.rows[k]
                row.reprojection_px = float(errors[j])
                row.notes = "; ".join(face.notes)
                if not np.isfinite(labels[j]).all():
                    row.status, row.reason = FAILED, "FLAME fit diverged (non-finite label)"
                elif errors[j] > self.cfg.max_reprojection_px:
                    row.status = FAILED
                    row.reason = (f"FLAME fit too far from the landmarks: {errors[j]:.1f} px mean error at 512 "
                                  f"> max_reprojection_px {self.cfg.max_reprojection_px:g}")  # fmt: skip
                if row.status == OK:
                    row.crop_path = f"crops/{row.id}.png"
                    keep.append(j)
                    crops.append((face.pending_crop, row.crop_path))
                else:
                    face.pending_crop.unlink(missing_ok=True)
            codes = {j: self.motion.pop(id(face), None) for j, (fu, _, face) in enumerate(faces) if fu == u}
            motion = np.stack([codes[j] for j in keep]) if keep and self.assets.motion_encoder is not None else None
            unit = UnitResult(p.unit_id, p.sha256, self.config_key, p.rows, labels[keep].reshape(-1, LABEL_DIM),
                              landmarks[keep].reshape(-1, 478, 2), motion)  # fmt: skip
            self._commit(unit, crops)

    def _commit(self, unit: UnitResult, crops: list[tuple[Path, str]]) -> None:
        """Crops first (complete pending files, renamed), then the unit record: a crash never
        leaves a record pointing at nothing."""
        for pending, rel in crops:
            os.replace(pending, self.out_dir / rel)
        save_unit(self.out_dir / "items" / f"{unit.unit_id}.npz", unit)
        self.results[unit.unit_id] = unit

    # ------------------------------------------------------------------------------ outputs
    def assemble(self, ids: list[str]) -> FitFlameResult:
        rows: list[ManifestRow] = []
        labels, landmarks, motion = [], [], []
        for uid in ids:
            unit = self.results[uid]
            for row in unit.rows:
                row.config_hash = self.config_key
                rows.append(row)
            labels.append(unit.labels)
            landmarks.append(unit.landmarks)
            if unit.motion is not None:
                motion.append(unit.motion)
        # label_row: position among the ok rows, in manifest order (= order of the stacked arrays).
        next_row = 0
        for row in rows:
            row.label_row = -1
            if row.status == OK:
                row.label_row, next_row = next_row, next_row + 1
        all_labels = np.concatenate(labels).astype(np.float32) if labels else np.zeros((0, LABEL_DIM), np.float32)
        all_landmarks = np.concatenate(landmarks).astype(np.float32)
        if len(all_labels) != next_row or not np.isfinite(all_labels).all():
            raise RuntimeError("internal error: labels do not match the ok rows")
        self._save_npy("labels.npy", all_labels)
        self._save_npy("landmarks.npy", all_landmarks)
        has_motion = self.assets.motion_encoder is not None
        if has_motion:
            empty = np.zeros((0, self.assets.motion_encoder.cfg.motion_dim), np.float32)
            self._save_npy("motion.npy", np.concatenate(motion).astype(np.float32) if motion else empty)
        else:
            (self.out_dir / "motion.npy").unlink(missing_ok=True)  # a stale file would mislead
        write_manifest(rows, self.out_dir / MANIFEST_NAME)
        self._prune(ids, rows)

        n_failed = sum(r.status == FAILED for r in rows)
        result = FitFlameResult(
            self.out_dir, len(rows), len(rows) - n_failed, n_failed, self.n_reused, has_motion,
            dict(Counter(r.reason for r in rows if r.status == FAILED).most_common()),
        )  # fmt: skip
        summary = {
            "items": result.n_items,
            "ok": result.n_ok,
            "failed": result.n_failed,
            "reused_inputs": result.n_reused_inputs,
            "failure_reasons": result.reasons,
            "motion": has_motion,
            "synthetic_assets": self.assets.synthetic,
            "config_key": self.config_key,
            "config": self.cfg.model_dump(mode="json"),
        }
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return result

    def _save_npy(self, name: str, array: np.ndarray) -> None:
        with atomic_path(self.out_dir / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array)

    def _prune(self, ids: list[str], rows: list[ManifestRow]) -> None:
        """Drop cache records and crops of inputs that are no longer part of the input set."""
        keep_units = {f"{uid}.npz" for uid in ids}
        for path in (self.out_dir / "items").glob("*.npz"):
            if path.name not in keep_units:
                path.unlink(missing_ok=True)
        keep_crops = {Path(r.crop_path).name for r in rows if r.crop_path}
        for path in (self.out_dir / "crops").glob("*.png"):
            if path.name not in keep_crops:
                path.unlink(missing_ok=True)


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise P4DError(f"--device {device}: expected cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise P4DError(f"--device {device}: no CUDA device is visible here; use --device cpu")


def run(
    config: FitFlameConfig,
    input_path: str,
    assets_dir: Path,
    out_dir: Path,
    video: bool = False,
    device: str = "cpu",
    batch: int = 16,
    progress: bool = True,
    workers: int = 0,
    run_config: P4DConfig | None = None,
) -> FitFlameResult:
    """Fit every image (or clip, with ``video``) under ``input_path``; see the module docstring.

    ``workers`` > 0 prepares inputs (decode, landmarks, crops) in that many CPU processes.
    ``run_config``, the whole resolved config (``config`` is its fit_flame section), is saved as ``config.yaml``.
    Raises ``FailureRatioExceeded`` (after writing every output) when the failed share of items
    is above ``config.max_failure_ratio``.
    """
    if batch < 1:
        raise P4DError(f"--batch {batch}: must be at least 1")
    if workers < 0:
        raise P4DError(f"--workers {workers}: must be 0 (in-process) or more")
    _check_device(device)
    items = list_inputs(str(input_path))
    assets = load_assets(Path(assets_dir))
    out_dir = Path(out_dir)
    for sub in ("crops", "items"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    ids = unit_ids(items)
    stage = _Stage(config, assets, out_dir, video, device, batch)
    pending = out_dir / PENDING_DIR
    shutil.rmtree(pending, ignore_errors=True)  # crops of a run that died before their fit
    pending.mkdir(parents=True)
    motion_size = None if assets.motion_encoder is None else assets.motion_encoder.cfg.input_size
    ctx = PrepareContext(config, video, out_dir, stage.config_key, motion_size)
    with tqdm(total=len(items), unit="video" if video else "image", desc="fit-flame", disable=not progress) as bar:
        for prepared in prepared_inputs(ctx, items, ids, workers):
            stage.accept(prepared)
            bar.update(1)
        stage.flush()
    shutil.rmtree(pending, ignore_errors=True)
    result = stage.assemble(ids)
    if run_config is not None:
        write_run_config(out_dir, run_config)
    if result.failure_ratio > config.max_failure_ratio:
        top = "; ".join(f"{n}x {reason}" for reason, n in list(result.reasons.items())[:3])
        raise FailureRatioExceeded(
            f"{result.n_failed} of {result.n_items} items failed ({result.failure_ratio:.0%}), above "
            f"max_failure_ratio {config.max_failure_ratio:.0%}. Most common: {top}. "
            f"Every row is in {result.manifest_path}",
            result,
        )
    return result

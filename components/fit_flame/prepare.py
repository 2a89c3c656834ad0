"""Everything per input before the batched fit: fetch, hash, resume check, decode, landmarks, crop.

``prepare_input`` runs in CPU worker processes (see pool.py) or in-process. It writes each aligned
crop to a pending file (renamed into ``crops/`` once its fit succeeds) and returns only small
arrays (landmarks, the PD-FGC input crop), so thousands of items can wait for one GPU fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from components.fit_flame.alignment import CropTransform, crop_image, crop_transform, pos_crop_params, smooth_crop_params
from components.config.fit_flame import FitFlameConfig
from components.landmarks import FaceLandmarker, FaceLandmarks
from components.fit_flame.manifest import FAILED, OK, ItemFailure, ManifestRow
from components.fit_flame.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, InputItem, decode_clip, decode_image, fetch
from components.fit_flame.motion import motion_crop
from components.fit_flame.units import UnitResult, load_unit, reusable

log = logging.getLogger(__name__)
PENDING_DIR = "items/.pending"  # crops waiting for their fit; never part of the outputs


# ------------------------------------------------------------------------------ alignment steps


@dataclass
class AlignedFace:
    crop: np.ndarray  # (S, S, 3) uint8
    landmarks: np.ndarray  # (478, 2) crop px, +y down
    notes: list[str] = field(default_factory=list)
    transform: CropTransform | None = None  # source px -> crop px (inverted for landmarks in the source frame)


def _detect(rgb: np.ndarray, landmarker: FaceLandmarker, cfg: FitFlameConfig) -> tuple[FaceLandmarks, list[str]]:
    face = landmarker(rgb, cfg.min_face_px)
    notes = []
    if face.n_faces > 1:
        notes.append(f"{face.n_faces} faces detected; used the largest ({face.face_px:.0f} px)")
    return face, notes


def _pos(face: FaceLandmarks, height: int) -> tuple[np.ndarray, float]:
    try:
        return pos_crop_params(face.ibug68(), height)
    except ValueError as err:
        raise ItemFailure(f"cannot align the face: {err}") from None


def _align(rgb, face: FaceLandmarks, notes, center, pos_scale, cfg: FitFlameConfig) -> AlignedFace:
    transform = crop_transform(center, pos_scale, cfg.crop_size, cfg.crop_pos_scale, cfg.crop_pos_center)
    return AlignedFace(crop_image(rgb, transform), transform.apply(face.points).astype(np.float32), notes, transform)


def align_image(rgb: np.ndarray, landmarker: FaceLandmarker, cfg: FitFlameConfig) -> AlignedFace:
    face, notes = _detect(rgb, landmarker, cfg)
    return _align(rgb, face, notes, *_pos(face, rgb.shape[0]), cfg)


def align_clip(
    frames: list[np.ndarray], landmarker: FaceLandmarker, cfg: FitFlameConfig
) -> list[AlignedFace | ItemFailure]:
    """Per-frame crops; the crop centre and zoom are one-euro smoothed over the frames with a face."""
    detected: list[tuple | ItemFailure] = []
    for rgb in frames:
        try:
            face, notes = _detect(rgb, landmarker, cfg)
            detected.append((face, notes, *_pos(face, rgb.shape[0])))
        except ItemFailure as failure:
            detected.append(failure)
    good = [i for i, d in enumerate(detected) if not isinstance(d, ItemFailure)]
    if cfg.smooth_video and len(good) > 1:
        # Smooth the zoom in 512-crop units (official: the resize factor), then back to POS scale.
        centers, zooms = smooth_crop_params(
            np.stack([detected[i][2] for i in good]),
            np.array([cfg.crop_pos_scale / detected[i][3] for i in good]),
            np.arange(len(good), dtype=np.float64),  # sampled-frame index as time, as official
            (cfg.smooth_min_cutoff_center, cfg.smooth_beta_center),
            (cfg.smooth_min_cutoff_scale, cfg.smooth_beta_scale),
        )
        for k, i in enumerate(good):
            detected[i] = (*detected[i][:2], centers[k], cfg.crop_pos_scale / zooms[k])
    return [d if isinstance(d, ItemFailure) else _align(rgb, *d, cfg) for rgb, d in zip(frames, detected)]


# --------------------------------------------------------------------------------- one input


@dataclass(frozen=True)
class PrepareContext:
    """What a worker needs to know (picklable)."""

    cfg: FitFlameConfig
    video: bool
    out_dir: Path
    config_key: str
    motion_size: int | None  # PD-FGC input size, None without the asset


@dataclass
class PreparedFace:
    landmarks: np.ndarray  # (478, 2) float32, crop px
    notes: list[str]
    pending_crop: Path
    motion_crop: np.ndarray | None  # (s, s, 3) uint8 PD-FGC input


@dataclass
class PreparedInput:
    unit_id: str
    sha256: str
    rows: list[ManifestRow]
    faces: list[PreparedFace | None]  # per row; None for rows that already failed
    reused: UnitResult | None = None


def failed_input(ctx: PrepareContext, item: InputItem, unit_id: str, sha256: str, reason: str) -> PreparedInput:
    row = _row(unit_id, item, sha256, ctx.video, None)
    row.status, row.reason = FAILED, reason
    return PreparedInput(unit_id, sha256, [row], [None])


def _row(unit_id: str, item: InputItem, sha256: str, clip: bool, frame: int | None) -> ManifestRow:
    row_id = unit_id if frame is None else f"{unit_id}_f{frame:05d}"
    return ManifestRow(row_id, item.source, sha256, unit_id if clip else None, frame, OK)


_LANDMARKER: FaceLandmarker | None = None


def init_worker(cfg: FitFlameConfig, worker_process: bool = True) -> None:
    """Per-process setup: one MediaPipe instance; in a worker process also one torch thread
    (the processes give the parallelism)."""
    global _LANDMARKER
    if worker_process:
        import torch

        torch.set_num_threads(1)
    _LANDMARKER = FaceLandmarker(cfg.detect_max_side, cfg.min_detection_confidence, cfg.mesh_input_px)


def prepare_input(ctx: PrepareContext, item: InputItem, unit_id: str) -> PreparedInput:
    """Never raises for a bad input: every problem becomes a failed row."""
    try:
        local = fetch(item, ctx.out_dir / "items" / ".download")
    except ItemFailure as failure:
        return failed_input(ctx, item, unit_id, "", str(failure))
    try:
        cached = load_unit(ctx.out_dir / "items" / f"{unit_id}.npz")
        if reusable(cached, local.sha256, ctx.config_key, ctx.out_dir):
            return PreparedInput(unit_id, local.sha256, cached.rows, [None] * len(cached.rows), reused=cached)
        return _prepare(ctx, item, unit_id, local.path, local.sha256)
    except Exception as err:  # one bad file must never stop the stage; the row says what broke
        log.exception("unexpected error on %s", item.source)
        return failed_input(ctx, item, unit_id, local.sha256, f"unexpected error: {type(err).__name__}: {err}")
    finally:
        local.release()


def _prepare(ctx: PrepareContext, item: InputItem, unit_id: str, path: Path, sha256: str) -> PreparedInput:
    cfg = ctx.cfg
    suffix = Path(item.name).suffix.lower()
    expected = VIDEO_SUFFIXES if ctx.video else IMAGE_SUFFIXES
    if suffix not in expected:
        hint = ""
        if suffix in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            hint = " (a video: run with --video)" if suffix in VIDEO_SUFFIXES else " (an image: run without --video)"
        reason = f"unsupported file type {suffix or '(none)'!r}{hint}; expected {', '.join(expected)}"
        return failed_input(ctx, item, unit_id, sha256, reason)
    if _LANDMARKER is None:
        init_worker(cfg, worker_process=False)
    try:
        if ctx.video:
            clip = decode_clip(path, cfg.frames_per_clip, cfg.max_image_pixels)
            aligned = align_clip(clip.frames, _LANDMARKER, cfg)
            frames, notes = clip.frame_indices, clip.notes
        else:
            image = decode_image(path, cfg.max_image_pixels, cfg.reject_grayscale)
            aligned, frames, notes = [align_image(image.rgb, _LANDMARKER, cfg)], [None], image.notes
    except ItemFailure as failure:
        return failed_input(ctx, item, unit_id, sha256, str(failure))
    rows, faces = [], []
    for frame, face in zip(frames, aligned):
        row = _row(unit_id, item, sha256, ctx.video, frame)
        rows.append(row)
        if isinstance(face, ItemFailure):
            row.status, row.reason = FAILED, str(face)
            faces.append(None)
            continue
        pending = ctx.out_dir / PENDING_DIR / f"{row.id}.png"
        Image.fromarray(face.crop).save(pending, format="PNG", compress_level=3)
        motion = None if ctx.motion_size is None else motion_crop(face.crop, face.landmarks, ctx.motion_size)
        faces.append(PreparedFace(face.landmarks, notes + face.notes, pending, motion))
    return PreparedInput(unit_id, sha256, rows, faces)

"""Render the held-out clips with the Animator and measure every render: one record per item.

Per test clip: the first usable frame is the source (``Animator.prepare_source``), the others drive
(``Animator.driving_motion(smooth=False)``: each frame on its own, as the metrics compare frame by
frame). The target of a driving frame is its aligned crop at Ψ's size (``Motion.crops``), the frame
the render is drawn in.

Face measurements (FLAME fit, MediaPipe points) of renders AND targets go through the same engine
call on images scaled to ``AKD_RESOLUTION``² (a face of a 64² tiny render is below MediaPipe's
working size; both sides of a comparison take the same path, so the scaling cancels). Each call
fits one FLAME shape per identity, so renders are measured per source and targets per clip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from torch import nn

from components.animate import Animator, Motion, NoFaceError, Source
from components.evaluate import metrics as M
from components.evaluate.data import HeldOutClip, InputFailure
from model.face_mesh import N_MESH_POINTS
from model.cameras import LABEL_DIM

NO_FACE_IN_RENDER = "no face found in the render (MediaPipe + FLAME fit at 512²)"
SOURCE_NOT_MEASURED = "no face found in the source crop at Ψ's size: identity (CSIM) not measurable"


@dataclass
class Measured:
    """Face measurements of a batch of images (rows NaN where no face was found)."""

    labels: np.ndarray  # (N, 437) FLAME + camera fits
    points: np.ndarray  # (N, 478, 2) MediaPipe points, px at AKD_RESOLUTION²
    found: np.ndarray  # (N,) bool
    reasons: list[str | None]


@dataclass
class Item:
    """One evaluated render (a row of per_item.parquet)."""

    kind: str  # "self" | "cross" | "novel"
    clip_id: str  # the source's clip
    driving_clip: str | None
    frame_index: int | None  # the driving frame (None for novel views)
    yaw: float | None  # novel views: the yaw offset (rad)
    values: dict[str, float]  # metric short name -> value (NaN: not measurable)
    face_found: bool
    reason: str = ""


@dataclass
class ClipRun:
    """What one clip leaves for the cross-reenactment, FID and the samples."""

    clip: HeldOutClip
    source: Source
    source_features: np.ndarray  # (1, D) ArcFace features of the source crop (NaN: no face measured)
    drive: Motion  # the valid driving frames only
    frame_indices: list[int]
    driving_crops: list[np.ndarray]  # the fit_flame crops of those frames (samples)
    outputs: np.ndarray  # (N, S, S, 3) self-reenactment renders
    novel: np.ndarray  # (len(yaws), S, S, 3)
    items: list[Item] = field(default_factory=list)
    _targets: Measured | None = None

    def targets_measured(self, animator: Animator) -> Measured:
        """FLAME fits + points of the driving targets, measured once and only when a render has a face to
        compare (renders without a face have no AED / APD / AKD, so the fits would be wasted)."""
        if self._targets is None:
            self._targets = measure(animator, self.drive.crops)
        return self._targets


@dataclass
class Networks:
    """The frozen metric networks (the training loss's LPIPS and ArcFace) and where they run."""

    lpips: nn.Module
    arcface: nn.Module
    device: str


def at_analysis_size(images: np.ndarray) -> list[np.ndarray]:
    size = (M.AKD_RESOLUTION, M.AKD_RESOLUTION)
    return [im if im.shape[:2] == size else np.asarray(Image.fromarray(im).resize(size, Image.BICUBIC)) for im in images]


def unmeasured(n: int, reason: str | None) -> Measured:
    return Measured(np.full((n, LABEL_DIM), np.nan), np.full((n, N_MESH_POINTS, 2), np.nan), np.zeros(n, bool),
                    [reason] * n)  # fmt: skip


def measure(animator: Animator, images: np.ndarray) -> Measured:
    """FLAME fit + MediaPipe points of (N, S, S, 3) images of ONE identity, at AKD_RESOLUTION²."""
    out = unmeasured(len(images), NO_FACE_IN_RENDER)
    try:
        m = animator.driving_motion(at_analysis_size(images), smooth=False)
    except NoFaceError:
        return out
    out.labels[m.valid], out.points[m.valid], out.found = m.labels[m.valid], m.landmarks[m.valid], m.valid.copy()
    out.reasons = [None if ok else NO_FACE_IN_RENDER for ok in m.valid]
    return out


def detect(animator: Animator, images: np.ndarray) -> Measured:
    """MediaPipe points only (no FLAME fit) of (N, S, S, 3) images at AKD_RESOLUTION²: enough for CSIM."""
    from components.fit_flame.manifest import ItemFailure

    out = unmeasured(len(images), None)
    for k, image in enumerate(at_analysis_size(images)):
        try:
            out.points[k] = animator.landmarker(image, animator.fit_cfg.min_face_px).points
            out.found[k] = True
        except ItemFailure as failure:
            out.reasons[k] = f"{NO_FACE_IN_RENDER}: {failure}"
    return out


def subset(motion: Motion, keep: np.ndarray) -> Motion:
    return Motion(motion.motion[keep], motion.labels[keep], motion.crops[keep], motion.landmarks[keep],
                  motion.valid[keep], [motion.reasons[i] for i in np.flatnonzero(keep)])  # fmt: skip


def identity(nets: Networks, images: np.ndarray, measured: Measured) -> np.ndarray:
    """(N, D) ArcFace features of images aligned by their own measured points (scaled to the image size)."""
    scale = images.shape[1] / M.AKD_RESOLUTION
    return M.identity_features(nets.arcface, images, measured.points * scale, nets.device)


def face_values(nets: Networks, outputs: np.ndarray, measured: Measured, source_features: np.ndarray,
                reference: Callable[[], Measured] | None) -> dict[str, np.ndarray]:
    """CSIM against the source, and (with a reference: the driving targets) AED, APD, AKD."""
    values = {"csim": M.cosine(identity(nets, outputs, measured), source_features)}
    if reference is not None:
        n = len(outputs)
        reference = reference() if measured.found.any() else unmeasured(n, None)
        values["aed"] = M.expression_distance(measured.labels, reference.labels)
        values["apd"] = M.pose_distance(measured.labels, reference.labels)
        values["akd"] = M.keypoint_distance(measured.points, reference.points, M.AKD_RESOLUTION)
    return values


def _items(kind: str, clip_id: str, driving: str | None, frames: list, yaws: list, values: dict[str, np.ndarray],
           measured: Measured) -> list[Item]:
    out = []
    for k in range(len(measured.found)):
        out.append(Item(kind, clip_id, driving, frames[k], yaws[k], {n: float(v[k]) for n, v in values.items()},
                        bool(measured.found[k]), measured.reasons[k] or ""))  # fmt: skip
    return out


def run_clip(animator: Animator, nets: Networks, clip: HeldOutClip, yaws: tuple[float, ...], render_batch: int,
             failures: list[InputFailure], progress: Callable[[int], None] | None = None) -> ClipRun | None:
    """Self-reenactment and novel views of one clip; unusable inputs go to ``failures`` (None: clip unusable)."""
    frames = clip.load()
    try:
        source = animator.prepare_source(frames[0])
    except NoFaceError as err:
        failures.append(InputFailure(clip.clip_id, clip.frames[0].frame_index, f"source: {err}"))
        return None
    try:
        drive = animator.driving_motion(frames[1:], smooth=False)
    except NoFaceError as err:
        failures.append(InputFailure(clip.clip_id, None, str(err)))
        return None
    for frame, ok, why in zip(clip.frames[1:], drive.valid, drive.reasons):
        if not ok:
            failures.append(InputFailure(clip.clip_id, frame.frame_index, f"driving frame: {why}"))
    keep = drive.valid.copy()
    drive = subset(drive, keep)
    indices = [f.frame_index for f, ok in zip(clip.frames[1:], keep) if ok]
    crops = [im for im, ok in zip(frames[1:], keep) if ok]

    outputs = animator.render(source, drive, batch=render_batch, progress=progress)
    source_measured = detect(animator, source.crop[None])
    source_features = identity(nets, source.crop[None], source_measured)
    run = ClipRun(clip, source, source_features, drive, indices, crops, outputs, np.zeros((0, *outputs.shape[1:]),
                  np.uint8))  # fmt: skip
    measured = measure(animator, outputs)
    values = face_values(nets, outputs, measured, source_features, lambda: run.targets_measured(animator))
    values["psnr"] = M.psnr(outputs, drive.crops, nets.device)
    values["ssim"] = M.ssim(outputs, drive.crops, nets.device)
    values["lpips"] = M.lpips(nets.lpips, outputs, drive.crops, nets.device)
    items = _items("self", clip.clip_id, clip.clip_id, indices, [None] * len(indices), values, measured)

    still = animator.motion_from_vectors(source.motion[None], source=source)
    run.novel = np.concatenate([animator.render(source, still, camera="fixed", yaw=y, pitch=0.0) for y in yaws])
    novel_measured = detect(animator, run.novel)
    novel_values = face_values(nets, run.novel, novel_measured, source_features, None)
    items += _items("novel", clip.clip_id, None, [None] * len(yaws), list(yaws), novel_values, novel_measured)
    if not source_measured.found[0]:
        for item in items:  # the renders may be fine; only their identity cannot be compared
            item.reason = "; ".join(filter(None, [item.reason, SOURCE_NOT_MEASURED]))
    run.items = items
    return run


def run_cross(animator: Animator, nets: Networks, src: ClipRun, drv: ClipRun, render_batch: int,
              progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[Item]]:
    """``src``'s source driven by ``drv``'s frames: CSIM against src's source, AED / APD against drv's targets."""
    outputs = animator.render(src.source, drv.drive, batch=render_batch, progress=progress)
    measured = measure(animator, outputs)
    values = face_values(nets, outputs, measured, src.source_features, lambda: drv.targets_measured(animator))
    values.pop("akd")  # another face shape: landmark positions are not expected to match
    items = _items("cross", src.clip.clip_id, drv.clip.clip_id, drv.frame_indices, [None] * len(outputs), values,
                   measured)  # fmt: skip
    return outputs, items

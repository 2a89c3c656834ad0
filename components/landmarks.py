"""Offline face landmarks: MediaPipe face detection + 478-point face mesh (models ship in the wheel).

BlazeFace detectors find every face on a downscaled copy; the largest one is cut
out with a margin and handed to the face mesh (with the iris refinement), so small faces in big
photos get the mesh's full input resolution. Landmarks come back in source-image pixels
(continuous coordinates: pixel ``i`` covers ``[i, i + 1)``), +y down.

It sits below the stages (fit_flame, animate, evaluate, and the synthetic asset bundle all detect faces)
so that none of them imports another stage for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from components.errors import ItemFailure
from model.face_mesh import MESH_TO_IBUG68


@dataclass
class FaceLandmarks:
    points: np.ndarray  # (478, 2) float64, source px, +y down
    n_faces: int  # faces the detector saw
    face_px: float  # longest side of the landmark box, source px

    def ibug68(self) -> np.ndarray:
        """(68, 2) iBUG-order subset of the mesh."""
        return self.points[MESH_TO_IBUG68]


class FaceLandmarker:
    """Largest-face landmarks for RGB uint8 images. Reuse one instance (model loading is slow)."""

    def __init__(
        self,
        detect_max_side: int = 1024,
        min_detection_confidence: float = 0.5,
        mesh_input_px: int = 384,
    ) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging is noise here
        import mediapipe as mp  # imported lazily: it is slow to import

        # Two BlazeFace models: short range sees close-ups (FFHQ-like crops, selfies) that the
        # full-range one misses, full range sees small faces in wide shots.
        self._detectors = [
            mp.solutions.face_detection.FaceDetection(
                model_selection=selection, min_detection_confidence=min_detection_confidence
            )
            for selection in (0, 1)
        ]
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )
        self.detect_max_side = detect_max_side
        self.mesh_input_px = mesh_input_px

    def close(self) -> None:
        for detector in self._detectors:
            detector.close()
        self._mesh.close()

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boxes(self, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Detected faces as (x0, y0, x1, y1) source px, largest first."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.detect_max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))
        small = np.ascontiguousarray(small)
        boxes: list[tuple[float, float, float, float]] = []
        for detector in self._detectors:
            for det in detector.process(small).detections or []:
                b = det.location_data.relative_bounding_box
                box = (b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h)
                if all(_iou(box, seen) < 0.3 for seen in boxes):  # same face seen by both models
                    boxes.append(box)
        return sorted(boxes, key=_area, reverse=True)

    def __call__(self, rgb: np.ndarray, min_face_px: float = 0.0) -> FaceLandmarks:
        boxes = self.boxes(rgb)
        if not boxes:
            raise ItemFailure("no face detected")
        points = self._mesh_in_box(rgb, boxes[0])
        if points is None:
            raise ItemFailure("a face was detected but its landmarks could not be located")
        extent = points.max(0) - points.min(0)
        face_px = float(extent.max())
        if face_px < min_face_px:
            raise ItemFailure(f"face too small: {face_px:.0f} px < min_face_px {min_face_px:.0f}")
        return FaceLandmarks(points, len(boxes), face_px)

    def _mesh_in_box(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        # Square window of twice the detector box, edge-padded where it leaves the image: the mesh
        # model expects a face that fills about half of its input.
        x0, y0, x1, y1 = box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
        left, top = int(np.floor(cx - half)), int(np.floor(cy - half))
        side = int(np.ceil(2 * half))
        # Decimate huge windows first so memory stays ~ (2 * mesh_input_px)² whatever the face size.
        step = max(1, side // (2 * self.mesh_input_px))
        side = -(-side // step) * step
        window = _crop_edge_padded(rgb, left, top, side, step)
        scale = self.mesh_input_px / side
        window = np.asarray(
            Image.fromarray(window).resize((self.mesh_input_px,) * 2, Image.BILINEAR, reducing_gap=2.0)
        )
        result = self._mesh.process(np.ascontiguousarray(window))
        if not result.multi_face_landmarks:
            return None
        lms = result.multi_face_landmarks[0].landmark
        xy = np.array([(p.x, p.y) for p in lms], dtype=np.float64) * self.mesh_input_px
        return xy / scale + np.array([left, top], dtype=np.float64)


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _crop_edge_padded(rgb: np.ndarray, left: int, top: int, side: int, step: int = 1) -> np.ndarray:
    """rgb[top:top+side:step, left:left+side:step], replicating border pixels outside the image."""
    h, w = rgb.shape[:2]
    ys = np.clip(np.arange(top, top + side, step), 0, h - 1)
    xs = np.clip(np.arange(left, left + side, step), 0, w - 1)
    return rgb[ys[:, None], xs[None, :]]

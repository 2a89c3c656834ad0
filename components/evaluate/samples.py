"""Held-out test clips for the embedded default (the main job): short clips of the public-domain
scikit-image astronaut photo (NASA) with motion the training clip does not have.

The training clip (pipelines/main_job.py) zooms in; these pan, zoom out, roll a few degrees and pan
across the mirrored photo, so no test clip has the training clip's content (the leakage check compares
file hashes) and each moves the face differently across the frame.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CLIP_SIDE = 320  # px, the size of the training clip
CLIP_FRAMES = 5
CLIP_FPS = 8
_WINDOW = 440  # px of the 512² photo shown per frame (the face stays whole in every frame)


def _window(photo: np.ndarray, left: float, top: float, side: float, roll_deg: float = 0.0) -> np.ndarray:
    """A square window of the photo (rolled about its centre), resampled to CLIP_SIDE²."""
    image = Image.fromarray(photo)
    if roll_deg:
        centre = (left + side / 2, top + side / 2)
        image = image.rotate(roll_deg, resample=Image.BICUBIC, center=centre, fillcolor=(0, 0, 0))
    box = (round(left), round(top), round(left + side), round(top + side))
    return np.asarray(image.crop(box).resize((CLIP_SIDE, CLIP_SIDE), Image.LANCZOS))


def _clips(photo: np.ndarray) -> dict[str, Callable[[float], np.ndarray]]:
    """name -> frame at time t in [0, 1]."""
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    free = 512 - _WINDOW
    return {
        "astronaut_pan": lambda t: _window(photo, free * t, free / 2, _WINDOW),
        "astronaut_zoom_out": lambda t: _window(photo, 60 * (1 - t), 40 * (1 - t), 360 + 100 * t),
        "astronaut_roll": lambda t: _window(photo, free / 2, free / 2, _WINDOW, roll_deg=-8 + 16 * t),
        "astronaut_mirrored_tilt": lambda t: _window(mirrored, free / 2, free / 2 * t, _WINDOW),
    }


def write_test_clips(directory: str | Path) -> list[Path]:
    """Write the test clips (MP4, H.264) into ``directory``; existing files are kept (idempotent, so the
    DVC hash of an unchanged split never changes). Returns the files written this time."""
    import skimage.data

    from components.animate.video import write_video

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    photo = skimage.data.astronaut()
    written = []
    for name, frame_at in _clips(photo).items():
        path = directory / f"{name}.mp4"
        if path.exists():
            continue
        frames = [frame_at(t) for t in np.linspace(0.0, 1.0, CLIP_FRAMES)]
        write_video(path, np.stack(frames), CLIP_FPS)
        written.append(path)
    return written

"""Reading driving inputs (a video file, a folder of frames, one image) and writing MP4 / GIF outputs.

Decoding goes through the fit_flame media code (same upright handling, same limits); writing through
PyAV (H.264, yuv420p), with the driving video's audio copied when it has any.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from components.animate.engine import AnimateError
from components.fit_flame.manifest import ItemFailure
from components.fit_flame.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, decode_image
from components.io.atomic import atomic_path

MAX_PIXELS = 64_000_000


@dataclass
class Frames:
    frames: list[np.ndarray]  # (H, W, 3) uint8 each
    fps: float | None  # None for images / folders
    audio_from: Path | None  # a video whose audio stream should be copied into the output


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """One RGB uint8 image; a clear AnimateError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise AnimateError(f"{what} {path}: no such file")
    try:
        return decode_image(path, MAX_PIXELS).rgb
    except ItemFailure as failure:
        raise AnimateError(f"{what} {path}: {failure}") from None


def _read_video(path: Path, max_frames: int) -> Frames:
    from components.fit_flame.media import _upright

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise AnimateError(f"driving {path}: unreadable video ({err})") from None
    frames: list[np.ndarray] = []
    with container:
        if not container.streams.video:
            raise AnimateError(f"driving {path}: the file has no video stream")
        stream = container.streams.video[0]
        if stream.width * stream.height > MAX_PIXELS:
            raise AnimateError(f"driving {path}: {stream.width}x{stream.height} is above the {MAX_PIXELS // 10**6} MP limit")
        fps = float(stream.average_rate) if stream.average_rate else None
        has_audio = bool(container.streams.audio)
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    frames.append(_upright(frame))
                    if len(frames) > max_frames:
                        raise AnimateError(f"driving {path}: more than {max_frames} frames (animate.max_frames); "
                                           "cut the video or raise the limit")
        except (av.FFmpegError, ValueError) as err:
            if not frames:
                raise AnimateError(f"driving {path}: unreadable video ({err})") from None
    if not frames:
        raise AnimateError(f"driving {path}: the video has no decodable frames")
    return Frames(frames, fps, path if has_audio else None)


def read_driving(path: str | Path, max_frames: int = 10_000) -> Frames:
    """A video file, a folder of frames (sorted by name), or a single image."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise AnimateError(f"driving {path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if len(files) > max_frames:
            raise AnimateError(f"driving {path}: {len(files)} frames, above animate.max_frames {max_frames}")
        return Frames([read_image(p, "driving frame") for p in files], None, None)
    if not path.is_file():
        raise AnimateError(f"driving {path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return _read_video(path, max_frames)
    if suffix in IMAGE_SUFFIXES:
        return Frames([read_image(path, "driving image")], None, None)
    raise AnimateError(f"driving {path}: unsupported file type {suffix!r}; expected a video "
                       f"({', '.join(VIDEO_SUFFIXES)}), an image or a folder of images")


def write_video(path: str | Path, frames: np.ndarray | list[np.ndarray], fps: float,
                audio_from: str | Path | None = None) -> Path:
    """(N, H, W, 3) uint8 -> H.264 MP4 (even sizes), written atomically; audio copied from ``audio_from``."""
    path = Path(path)
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise AnimateError(f"{path}: no frames to write")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
    rate = max(1, round(fps))
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
            audio_in = audio_stream = None
            if audio_from is not None:
                audio_in = av.open(str(audio_from))
                if audio_in.streams.audio:
                    audio_stream = out.add_stream_from_template(audio_in.streams.audio[0])
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
            if audio_stream is not None:
                for packet in audio_in.demux(audio_in.streams.audio[0]):
                    if packet.dts is None:
                        continue
                    packet.stream = audio_stream
                    out.mux(packet)
            if audio_in is not None:
                audio_in.close()
    return path


def write_gif(path: str | Path, frames: np.ndarray | list[np.ndarray], fps: float, max_side: int = 256) -> Path:
    """An animated GIF (for reports, where an MP4 would not play inline)."""
    path = Path(path)
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    if images[0].width > max_side:
        images = [im.resize((max_side, round(im.height * max_side / im.width)), Image.BILINEAR) for im in images]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def side_by_side(*columns: np.ndarray, size: int) -> np.ndarray:
    """(N, size, columns*size, 3) uint8: each column's frames resized to size² and put next to each other."""
    out = []
    for row in zip(*columns):
        tiles = [np.asarray(Image.fromarray(np.asarray(t)).resize((size, size), Image.BILINEAR)) for t in row]
        out.append(np.concatenate(tiles, axis=1))
    return np.stack(out)


def read_frames(path: str | Path, max_frames: int = 10_000) -> list[np.ndarray]:
    """The frames of a video / folder / image (clients that need only the pixels)."""
    return read_driving(path, max_frames).frames

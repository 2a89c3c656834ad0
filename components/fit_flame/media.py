"""Input items and their decoding: local folders or S3 prefixes of images or video clips.

Decoding never trusts a file: format, size, mode and orientation are checked and normalised, and
anything that cannot be turned into an upright 8-bit RGB array raises ``ItemFailure`` with the
reason the manifest records.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.io.hashing import file_sha256
from components.errors import P4DError
from components.fit_flame.manifest import ItemFailure

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov")
# Container formats PIL must report for the suffixes above (MPO = multi-picture JPEG from cameras).
IMAGE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}


class InputError(P4DError, ValueError):
    """The --input location itself is unusable (missing, empty, unreachable)."""


@dataclass(frozen=True)
class InputItem:
    source: str  # local path or s3://bucket/key, as given
    name: str  # path relative to the input root, '/'-separated


def list_inputs(location: str) -> list[InputItem]:
    """Every visible file under a local folder / file or an ``s3://bucket/prefix``, sorted by name."""
    if location.startswith("s3://"):
        return _list_s3(location)
    root = Path(location)
    if root.is_file():
        return [InputItem(str(root), root.name)]
    if not root.is_dir():
        raise InputError(f"--input {location}: no such file or folder")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue  # .DS_Store, editor swap files: never user data
            path = Path(dirpath) / fname
            items.append(InputItem(str(path), path.relative_to(root).as_posix()))
    if not items:
        raise InputError(f"--input {location}: the folder holds no files")
    return sorted(items, key=lambda it: it.name)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InputError(f"--input {uri}: expected s3://BUCKET/PREFIX")
    return bucket, key


def _s3_client():
    import boto3  # endpoint and credentials come from the environment (AWS_ENDPOINT_URL, ...)

    return boto3.client("s3")


def _list_s3(uri: str) -> list[InputItem]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = _split_s3(uri)
    items = []
    try:
        for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                name = key[len(prefix) :].lstrip("/") or key.rsplit("/", 1)[-1]
                if key.endswith("/") or name.rsplit("/", 1)[-1].startswith("."):
                    continue
                items.append(InputItem(f"s3://{bucket}/{key}", name))
    except (BotoCoreError, ClientError) as err:
        raise InputError(f"--input {uri}: cannot list the S3 prefix ({err}); check AWS_* settings") from None
    if not items:
        raise InputError(f"--input {uri}: no objects under this prefix")
    return sorted(items, key=lambda it: it.name)


@dataclass
class LocalFile:
    """An item's bytes on local disk plus their sha256 (S3 objects are fetched to a temp file)."""

    path: Path
    sha256: str
    temporary: bool = False

    def release(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def fetch(item: InputItem, scratch: Path) -> LocalFile:
    """Make ``item`` readable locally and hash it, streaming (bounded memory)."""
    if item.source.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(item.source)
        scratch.mkdir(parents=True, exist_ok=True)
        target = scratch / hashlib.sha1(item.source.encode()).hexdigest()
        try:
            _s3_client().download_file(bucket, key, str(target))
        except (BotoCoreError, ClientError) as err:
            target.unlink(missing_ok=True)
            raise ItemFailure(f"cannot download from S3: {err}") from None
        return LocalFile(target, file_sha256(target), temporary=True)
    path = Path(item.source)
    try:
        return LocalFile(path, file_sha256(path))
    except OSError as err:
        raise ItemFailure(f"cannot read the file: {err.strerror or err}") from None


# --------------------------------------------------------------------------------------- images


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, upright
    notes: list[str] = field(default_factory=list)


def decode_image(path: Path, max_pixels: int, reject_grayscale: bool = False) -> DecodedImage:
    """Upright 8-bit RGB from a JPEG / PNG / WebP file; bounded memory for huge files."""
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            raise ItemFailure("not a decodable image (unknown or corrupt file format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ItemFailure(
                f"image is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels)"
            ) from None
        except OSError as err:
            raise ItemFailure(f"cannot open the image: {err}") from None
    with im:
        if im.format not in IMAGE_FORMATS:
            raise ItemFailure(f"unsupported image format {im.format} (expected JPEG, PNG or WebP)")
        width, height = im.size
        if width < 1 or height < 1:
            raise ItemFailure(f"image has no pixels ({width}x{height})")
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"animated ({im.n_frames} frames): used the first")
        if width * height > max_pixels:
            if im.format not in ("JPEG", "MPO"):
                raise ItemFailure(
                    f"image is {width}x{height} = {width * height / 1e6:.0f} MP, above the "
                    f"{max_pixels / 1e6:.0f} MP limit (fit_flame.max_image_pixels); downscale it first"
                )
            # JPEG can be decoded at 1/2, 1/4, 1/8 scale straight from the DCT: memory stays
            # within a few times the limit, and the rest of the reduction happens after decoding.
            factor = math.sqrt(width * height / max_pixels)
            requested = (math.ceil(width / factor), math.ceil(height / factor))
            im.draft(im.mode if im.mode in ("L", "CMYK") else "RGB", requested)
            if im.size[0] * im.size[1] > 4 * max_pixels:
                raise ItemFailure(
                    f"image is {width}x{height}, too large even at 1/8 scale for the "
                    f"{max_pixels / 1e6:.0f} MP limit (fit_flame.max_image_pixels)"
                )
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ItemFailure(f"truncated or corrupt image data ({err})") from None
        if im.size[0] * im.size[1] > max_pixels:  # what the DCT scaling left over
            shrink = math.sqrt(max_pixels / (im.size[0] * im.size[1]))
            im = im.resize((max(1, int(im.size[0] * shrink)), max(1, int(im.size[1] * shrink))), Image.LANCZOS)
        if (im.size[0], im.size[1]) != (width, height):
            notes.append(f"decoded {width}x{height} at {im.size[0]}x{im.size[1]}")
        orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
        if orientation not in (1, None):
            im = ImageOps.exif_transpose(im)
            notes.append(f"applied EXIF orientation {orientation}")
        rgb = _to_rgb8(im, notes, reject_grayscale)
    return DecodedImage(np.ascontiguousarray(rgb), notes)


_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _to_rgb8(im: Image.Image, notes: list[str], reject_grayscale: bool) -> np.ndarray:
    mode = im.mode
    if mode in _GRAY_MODES and reject_grayscale:
        raise ItemFailure(f"grayscale image (mode {mode}) and fit_flame.reject_grayscale is set")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit / 32-bit grayscale: rescale the real range to 8 bits instead of clipping at 255.
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else values.max()
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"{mode} grayscale converted to 8-bit RGB")
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"{mode} alpha composited on white")
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in _GRAY_MODES:
        notes.append(f"{mode} grayscale converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} converted to RGB")
    return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------------------- videos


@dataclass
class DecodedClip:
    frames: list[np.ndarray]  # (H, W, 3) uint8 each, upright
    frame_indices: list[int]  # index of each frame in the decoded stream
    notes: list[str] = field(default_factory=list)


def sample_indices(n_frames: int, n_wanted: int) -> list[int]:
    """``n_wanted`` indices spread evenly over ``n_frames`` (all of them if the clip is shorter)."""
    if n_frames <= n_wanted:
        return list(range(n_frames))
    return [int(i) for i in np.linspace(0, n_frames - 1, n_wanted).round()]


def decode_clip(path: Path, frames_per_clip: int, max_pixels: int) -> DecodedClip:
    """Evenly sampled, upright RGB frames of the first video stream; one decode pass."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ItemFailure(f"unreadable video: {err}") from None
    with container:
        if not container.streams.video:
            raise ItemFailure("unreadable video: the file has no video stream")
        stream = container.streams.video[0]
        if stream.width * stream.height > max_pixels:
            raise ItemFailure(
                f"video is {stream.width}x{stream.height}, above the {max_pixels / 1e6:.0f} MP "
                "limit (fit_flame.max_image_pixels)"
            )
        n_frames = stream.frames or _count_frames(path)
        if n_frames <= 0:
            raise ItemFailure("unreadable video: no decodable frames")
        wanted = set(sample_indices(n_frames, frames_per_clip))
        frames, indices = [], []
        try:
            for index, frame in enumerate(_decode(container, stream)):
                if index in wanted:
                    frames.append(_upright(frame))
                    indices.append(index)
                if index >= max(wanted):
                    break
        except (av.FFmpegError, ValueError) as err:
            if not frames:
                raise ItemFailure(f"unreadable video: decoding failed ({err})") from None
    notes = []
    if not frames:
        raise ItemFailure("unreadable video: no decodable frames")
    if len(frames) < len(wanted):
        notes.append(f"decoded {len(frames)} of {len(wanted)} sampled frames (stream ended early)")
    if n_frames < frames_per_clip:
        notes.append(f"clip has {n_frames} frames, fewer than frames_per_clip={frames_per_clip}")
    return DecodedClip(frames, indices, notes)


def _decode(container, stream) -> Iterator[av.VideoFrame]:
    for packet in container.demux(stream):
        yield from packet.decode()


def _count_frames(path: Path) -> int:
    """Frame count from packets when the container does not store it (no decoding)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size > 0)
    except (av.FFmpegError, OSError, ValueError):
        return 0


def _upright(frame: av.VideoFrame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    # Display-matrix rotation (phones): degrees counter-clockwise, as ffmpeg reports it.
    quarter_turns = int(round(getattr(frame, "rotation", 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=quarter_turns)) if quarter_turns else rgb

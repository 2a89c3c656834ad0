"""The request contract of the Triton models: tensor names, types, shapes, and request validation.

One home for it: ``model_config.py`` writes ``config.pbtxt`` from these specs, ``backend.py`` parses
requests with :func:`parse_request`, and the client (``client.py``) builds requests from the same
names. Shapes exclude Triton's batch dimension (every model has ``max_batch_size > 0``).

Stateless model (``portrait4d``)::

    SOURCE       BYTES  [1]          encoded image (PNG/JPEG/...)  } exactly one of the two
    SOURCE_RGB   UINT8  [-1,-1,3]    decoded RGB image             }
    DRIVING      BYTES  [1]          encoded driving frame         } exactly one of the three
    DRIVING_RGB  UINT8  [-1,-1,3]    decoded driving frame         }
    MOTION       FP32   [motion_dim] PD-FGC motion embedding       }
    CAMERA       FP32   [25]         optional: cam2world 4x4 + normalised intrinsics 3x3 (render camera)
    -> IMAGE     UINT8  [S,S,3]      the rendered frame

Session model (``portrait4d_session``, Triton sequence batcher, correlation id = session): the same
inputs; the request with START carries SOURCE (or SOURCE_RGB) and optionally a first frame, later
requests carry only a frame. It also returns ``SOURCE_ENCODINGS`` (INT64 [1]): how many times this
session's source was encoded — 1 for the whole video.

Shape and dtype mismatches of declared inputs are rejected by Triton itself (its message names the
input, the expected and the received shape/type); everything else a request can get wrong is a
:class:`RequestError` whose message names the input and the problem.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from components.errors import P4DError

CAMERA_DIM = 25  # cam2world 4x4 (16) + normalised intrinsics 3x3 (9): the first 25 floats of a FLAME label

SOURCE, SOURCE_RGB = "SOURCE", "SOURCE_RGB"
DRIVING, DRIVING_RGB, MOTION, CAMERA = "DRIVING", "DRIVING_RGB", "MOTION", "CAMERA"
IMAGE, SOURCE_ENCODINGS = "IMAGE", "SOURCE_ENCODINGS"
# sequence-batcher control tensors (filled by Triton from the request's sequence flags)
START, END, CORRID = "START", "END", "CORRID"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton data type without the TYPE_ prefix: BYTES/STRING, UINT8, FP32, INT64
    dims: tuple[int, ...]  # without the batch dimension; -1 = any
    description: str


def input_specs(motion_dim: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec(SOURCE, "STRING", (1,), "source portrait, encoded image bytes"),
        TensorSpec(SOURCE_RGB, "UINT8", (-1, -1, 3), "source portrait, RGB pixels"),
        TensorSpec(DRIVING, "STRING", (1,), "driving frame, encoded image bytes"),
        TensorSpec(DRIVING_RGB, "UINT8", (-1, -1, 3), "driving frame, RGB pixels"),
        TensorSpec(MOTION, "FP32", (motion_dim,), "PD-FGC motion embedding instead of a driving frame"),
        TensorSpec(CAMERA, "FP32", (CAMERA_DIM,), "render camera: cam2world 4x4 + normalised intrinsics"),
    )


def output_specs(image_size: int, session: bool) -> tuple[TensorSpec, ...]:
    image = TensorSpec(IMAGE, "UINT8", (image_size, image_size, 3), "rendered frame, RGB")
    if not session:
        return (image,)
    return (image, TensorSpec(SOURCE_ENCODINGS, "INT64", (1,), "source encodings this session paid for"))


class RequestError(P4DError, ValueError):
    """A request cannot be served; the message names the input and what is wrong with it."""


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_image_side: int
    motion_dim: int


@dataclass
class Request:
    """One decoded, validated request. Arrays are per batch row (Triton's leading dimension)."""

    sources: list[np.ndarray] | None  # (H, W, 3) uint8 each, or None (session frame)
    driving: list[np.ndarray] | None  # (H, W, 3) uint8 each
    motion: np.ndarray | None  # (B, motion_dim) float32
    camera: np.ndarray | None  # (B, 25) float32
    batch: int

    @property
    def has_frame(self) -> bool:
        return self.driving is not None or self.motion is not None


def decode_image(name: str, data: bytes, limits: Limits) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8, checking size limits BEFORE the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise RequestError(f"{name}: empty bytes, expected an encoded image (PNG, JPEG, ...)")
    if len(data) > limits.max_image_bytes:
        raise RequestError(f"{name}: {len(data)} bytes is larger than the limit of {limits.max_image_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_side(name, img.width, img.height, limits)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise RequestError(f"{name}: bytes are not a readable image ({err})") from None


def check_side(name: str, width: int, height: int, limits: Limits) -> None:
    if max(width, height) > limits.max_image_side:
        raise RequestError(
            f"{name}: image is {width}x{height} pixels, larger than the limit of {limits.max_image_side} per side"
        )
    if min(width, height) < 1:
        raise RequestError(f"{name}: image is {width}x{height} pixels, empty")


def _images(name: str, value: np.ndarray, encoded: bool, limits: Limits) -> list[np.ndarray]:
    if encoded:
        return [decode_image(name, _as_bytes(name, v), limits) for v in value.reshape(value.shape[0], -1)[:, 0]]
    if value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8:
        raise RequestError(f"{name}: expected uint8 [batch, H, W, 3], got {value.dtype} {list(value.shape)}")
    check_side(name, value.shape[2], value.shape[1], limits)
    return [np.ascontiguousarray(v) for v in value]


def _as_bytes(name: str, value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1", errors="replace")
    raise RequestError(f"{name}: expected encoded image bytes, got {type(value).__name__}")


def _finite(name: str, value: np.ndarray, width: int) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim != 2 or value.shape[1] != width:
        raise RequestError(f"{name}: expected float32 [batch, {width}], got {list(value.shape)}")
    bad = ~np.isfinite(value)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise RequestError(f"{name}: {int(bad.sum())} non-finite value(s) (NaN/Inf), first at row {rows[0]}, "
                           f"index {cols[0]}")
    return value.astype(np.float32, copy=False)


def _one_of(present: dict[str, np.ndarray], names: tuple[str, ...], required: bool, what: str) -> str | None:
    given = [n for n in names if n in present]
    if len(given) > 1:
        raise RequestError(f"{' and '.join(given)} given together; send exactly one {what}")
    if not given and required:
        raise RequestError(f"missing input: {what} ({' or '.join(names)})")
    return given[0] if given else None


def parse_request(
    get: Callable[[str], np.ndarray | None],
    limits: Limits,
    need_source: bool,
    need_frame: bool,
    allow_source: bool = True,
) -> Request:
    """Validate and decode one request. ``get(name)`` returns an input's array or None when absent."""
    names = (SOURCE, SOURCE_RGB, DRIVING, DRIVING_RGB, MOTION, CAMERA)
    present = {n: v for n in names if (v := get(n)) is not None}
    batches = {n: v.shape[0] for n, v in present.items() if v.ndim > 0}
    if len(set(batches.values())) > 1:
        raise RequestError(f"inputs disagree on the batch size: {batches}")
    source_name = _one_of(present, (SOURCE, SOURCE_RGB), need_source, "source portrait")
    if source_name and not allow_source:
        raise RequestError(f"{source_name}: a source is only accepted with the session's START request")
    frame_name = _one_of(present, (DRIVING, DRIVING_RGB, MOTION), need_frame, "driving frame or motion")
    if CAMERA in present and frame_name is None:
        raise RequestError(f"{CAMERA}: given without a driving frame or motion to render")
    sources = _images(source_name, present[source_name], source_name == SOURCE, limits) if source_name else None
    driving = motion = None
    if frame_name == MOTION:
        motion = _finite(MOTION, present[MOTION], limits.motion_dim)
    elif frame_name:
        driving = _images(frame_name, present[frame_name], frame_name == DRIVING, limits)
    camera = _finite(CAMERA, present[CAMERA], CAMERA_DIM) if CAMERA in present else None
    return Request(sources, driving, motion, camera, batch=next(iter(batches.values()), 1))

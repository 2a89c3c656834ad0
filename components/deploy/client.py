"""Client of the Triton endpoint (``tritonclient``): one frame, a video session, latency statistics.

The same request builders serve `p4d infer`, the rollout's smoke request and the tests, so they send
what the contract (``contract.py``) says. HTTP or gRPC by the URL's scheme (``http://H:P`` /
``grpc://H:P``; a bare ``H:P`` is gRPC); sessions are plain sequential requests carrying Triton's
sequence flags (no decoupled stream needed: one response per frame).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from components.deploy.contract import CAMERA, DRIVING, IMAGE, MOTION, SOURCE, SOURCE_ENCODINGS
from components.errors import P4DError

_NUMPY_TO_TRITON = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
                    np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(object): "BYTES"}


class ClientError(P4DError):
    """The endpoint refused a request or cannot be reached; the message is the server's."""


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Endpoint:
    """A tritonclient client for ``url`` and the module its InferInput comes from."""

    url: str
    protocol: str  # "http" | "grpc"
    client: object
    module: object

    @classmethod
    def open(cls, url: str, timeout_s: float = 600.0) -> "Endpoint":
        if url.startswith("http://"):
            import tritonclient.http as module

            client = module.InferenceServerClient(url[len("http://"):], connection_timeout=timeout_s,
                                                  network_timeout=timeout_s)
            return cls(url, "http", client, module)
        if url.startswith("https://"):
            raise ClientError(f"{url}: TLS endpoints are not supported by this client; use http:// or grpc://")
        import tritonclient.grpc as module

        address = url[len("grpc://"):] if url.startswith("grpc://") else url
        return cls(url, "grpc", module.InferenceServerClient(address), module)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tensor(self, name: str, value: np.ndarray | bytes):
        """One input with the batch dimension added (every model has max_batch_size > 0)."""
        array = np.array([[value]], dtype=object) if isinstance(value, bytes) else np.asarray(value)[None]
        if array.dtype not in _NUMPY_TO_TRITON:
            raise ClientError(f"{name}: numpy dtype {array.dtype} has no Triton type here")
        tensor = self.module.InferInput(name, list(array.shape), _NUMPY_TO_TRITON[array.dtype])
        tensor.set_data_from_numpy(array)
        return tensor

    def infer(self, model: str, inputs: dict[str, np.ndarray | bytes], version: str = "", **sequence) -> dict:
        """Send one request; returns {output name: array without the batch dimension}."""
        from tritonclient.utils import InferenceServerException

        tensors = [self.tensor(name, value) for name, value in inputs.items()]
        try:
            result = self.client.infer(model, tensors, model_version=version, **sequence)
        except InferenceServerException as err:
            raise ClientError(f"{model}: {err.message()}") from None
        outputs = {IMAGE: result.as_numpy(IMAGE)[0]}
        encodings = result.as_numpy(SOURCE_ENCODINGS)
        if encodings is not None:
            outputs[SOURCE_ENCODINGS] = int(encodings.reshape(-1)[0])
        return outputs


def frame_inputs(source: bytes | None, driving: bytes | np.ndarray | None,
                 camera: np.ndarray | None = None) -> dict[str, np.ndarray | bytes]:
    """Request inputs: encoded SOURCE, then DRIVING (encoded bytes) or MOTION (a float32 vector)."""
    inputs: dict[str, np.ndarray | bytes] = {}
    if source is not None:
        inputs[SOURCE] = source
    if isinstance(driving, bytes):
        inputs[DRIVING] = driving
    elif driving is not None:
        inputs[MOTION] = np.asarray(driving, dtype=np.float32)
    if camera is not None:
        inputs[CAMERA] = np.asarray(camera, dtype=np.float32)
    return inputs


@dataclass
class Timings:
    """Per-request latencies (s) and the wall time of the run."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies) * 1000
        return {
            "frames": len(lat),
            "frames_per_s": len(lat) / self.wall_s if self.wall_s > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p90_ms": float(np.percentile(lat, 90)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        }

    def line(self) -> str:
        s = self.summary()
        return (f"{s['frames']} frames, {s['frames_per_s']:.2f} frames/s, latency p50 {s['p50_ms']:.0f} ms, "
                f"p90 {s['p90_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms")


def stateless_frames(endpoint: Endpoint, model: str, source: bytes, driving: Iterable[bytes | np.ndarray],
                     timings: Timings, version: str = "") -> Iterator[np.ndarray]:
    """Each frame is one stateless request carrying the source too (the server caches its encoding)."""
    start = time.perf_counter()
    for frame in driving:
        t = time.perf_counter()
        yield endpoint.infer(model, frame_inputs(source, frame), version)[IMAGE]
        timings.latencies.append(time.perf_counter() - t)
        timings.wall_s = time.perf_counter() - start


@dataclass
class SessionResult:
    frames: list[np.ndarray]
    encodings: int  # SOURCE_ENCODINGS of the last response: what the whole session paid


def session_frames(endpoint: Endpoint, model: str, source: bytes, driving: list[bytes | np.ndarray],
                   session_id: int, timings: Timings, version: str = "") -> SessionResult:
    """One video session: START carries the source and the first frame, END the last frame."""
    if not driving:
        raise ClientError("a session needs at least one driving frame")
    frames, encodings = [], 0
    start = time.perf_counter()
    for i, frame in enumerate(driving):
        t = time.perf_counter()
        out = endpoint.infer(model, frame_inputs(source if i == 0 else None, frame), version,
                             sequence_id=session_id, sequence_start=(i == 0), sequence_end=(i == len(driving) - 1))
        timings.latencies.append(time.perf_counter() - t)
        frames.append(out[IMAGE])
        encodings = out.get(SOURCE_ENCODINGS, encodings)
    timings.wall_s = time.perf_counter() - start
    return SessionResult(frames, encodings)

"""The Triton Python-backend model: a thin adapter from Triton requests to the Animator.

Every version folder's ``model.py`` is one import of :class:`TritonPythonModel` from here; which of
the two models it is (stateless or video session) and its limits come from ``config.pbtxt``'s
``parameters``. Each model instance is its own process (Triton starts one backend stub per instance)
holding one Animator loaded from the version folder's ``package/``.

Session model: Triton's sequence batcher pins a correlation id to one instance, so this process's
``sessions`` dict (correlation id -> the encoded Source) is the session's state. The source is encoded
on START and reused for every later frame; the entry is freed on END, or when the session has been idle
longer than the sequence batcher's ``max_sequence_idle_microseconds`` (checked on every execute: Triton
does not tell a Python model that a sequence timed out). ``SOURCE_ENCODINGS`` in every response, the
``p4d_source_encodings_total`` metric and one log line per encoding show what each session paid.

Stateless model: an app that sends the same photo with every frame would pay the source encoding every
time, so each instance keeps the encodings of its last few sources (an LRU keyed by the decoded pixels,
size ``source_cache_size``; 0 turns it off). The dynamic batcher hands ``execute`` requests of different
sources; their frames are rendered together, one Animator network call per ``max_batch_size`` rows (the
``p4d_network_calls_total`` metric counts the calls), so batching buys throughput across users too.

Errors: any problem with one request becomes a ``TritonError`` response for that request naming the
input and the problem; other requests of the same batch are served and the model stays up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.deploy.contract import (
    CAMERA,
    CORRID,
    DRIVING,
    DRIVING_RGB,
    END,
    IMAGE,
    MOTION,
    SOURCE,
    SOURCE_ENCODINGS,
    SOURCE_RGB,
    START,
    Limits,
    Request,
    RequestError,
    parse_request,
)
from components.deploy.model_config import (
    DTYPE_PARAMETER,
    MAX_IMAGE_BYTES_PARAMETER,
    MAX_IMAGE_SIDE_PARAMETER,
    MODE_PARAMETER,
    SOURCE_CACHE_PARAMETER,
)

PACKAGE_DIR = "package"  # inside each version folder: the Animator package (Animator.save_package)
ENCODINGS_METRIC = "p4d_source_encodings_total"
NETWORK_CALLS_METRIC = "p4d_network_calls_total"
log = logging.getLogger("p4d.triton")


@dataclass
class Session:
    source: object  # components.animate.Source
    encodings: int = 1
    last_seen: float = field(default_factory=time.monotonic)
    last_motion: object | None = None  # the newest frame's Motion with a face: held when a frame has none


def _parameter(model_config: dict, key: str) -> str:
    return model_config.get("parameters", {}).get(key, {}).get("string_value", "")


def torch_dtype(name: str | None):
    """The Animator dtype of ``deploy.dtype`` ("" / None: the Animator's default for the device)."""
    import torch

    return {"": None, None: None, "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


@dataclass
class Frame:
    """One frame to render: a row of ``Animator.render_conditions`` (arrays with a leading 1)."""

    source: object  # components.animate.Source
    motion: np.ndarray  # (1, motion_dim) float32
    labels: np.ndarray  # (1, 437) float32: the source's identity with the frame's expression and pose
    camera: np.ndarray  # (1, 25) float32 render camera


def request_frame(animator, source, request: Request, row: int) -> Frame:
    """``source`` driven by row ``row`` of the request (driving frame or motion vector), seen from the
    request's CAMERA when given, else from the driving frame's own camera."""
    camera = request.camera[row:row + 1] if request.camera is not None else None
    if request.motion is not None:
        motion = animator.motion_from_vectors(request.motion[row:row + 1], camera, source=source)
        return motion_frame(animator, source, motion, None)  # the camera is in the motion's labels already
    return motion_frame(animator, source, animator.driving_motion([request.driving[row]], smooth=False), camera)


def motion_frame(animator, source, motion, camera: np.ndarray | None) -> Frame:
    labels, cameras = animator.frame_conditions(source, motion)
    return Frame(source, motion.motion, labels, cameras if camera is None else camera)


def render_frames(animator, frames: list[Frame]) -> np.ndarray:
    """(len(frames), S, S, 3) uint8 in ONE network call, whatever sources the frames have."""
    return animator.render_conditions([f.source for f in frames], np.concatenate([f.motion for f in frames]),
                                      np.concatenate([f.labels for f in frames]),
                                      np.concatenate([f.camera for f in frames]))


def render_motion(animator, source, motion, camera: np.ndarray | None) -> np.ndarray:
    """(S, S, 3) uint8: ``source`` driven by a one-frame Motion (the rollout's smoke reference)."""
    return render_frames(animator, [motion_frame(animator, source, motion, camera)])[0]


def pack_rows(requests: list[tuple[int, list]], max_rows: int) -> list[list[tuple[int, list]]]:
    """Requests (index, rows) in order, grouped so that no group exceeds ``max_rows`` rows and no request is
    split across groups (Triton keeps each request within max_batch_size itself)."""
    groups: list[list[tuple[int, list]]] = []
    size = max_rows
    for item in requests:
        if size + len(item[1]) > max_rows:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item[1])
    return groups


class TritonPythonModel:
    """What the Python backend instantiates (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from components.animate import Animator

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.session_mode = _parameter(config, MODE_PARAMETER) == "session"
        package = Path(args["model_repository"]) / args["model_version"] / PACKAGE_DIR
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.animator = Animator.load(package, device=device, dtype=torch_dtype(_parameter(config, DTYPE_PARAMETER)))
        _ = self.animator.landmarker  # built now (MediaPipe graphs take seconds), not inside the first request
        self.limits = Limits(
            max_image_bytes=int(_parameter(config, MAX_IMAGE_BYTES_PARAMETER)),
            max_image_side=int(_parameter(config, MAX_IMAGE_SIDE_PARAMETER)),
            motion_dim=self.animator.motion_dim,
        )
        idle_us = config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0)
        self.idle_timeout_s = float(idle_us) / 1e6 if idle_us else float("inf")
        self.sessions: dict[int, Session] = {}
        self.source_cache_size = int(_parameter(config, SOURCE_CACHE_PARAMETER))
        self.source_cache: OrderedDict[str, object] = OrderedDict()
        self.max_batch = max(int(config.get("max_batch_size", 0)), 1)  # rows per network call
        self._metric_families = []  # must outlive their metrics (the backend deletes a metric whose family is gone)
        labels = {"model": self.name, "version": str(args["model_version"])}
        self.encodings = self._counter(ENCODINGS_METRIC, "source portraits encoded (Ψ appearance encoders run); a "
                                       "video session pays one", labels)
        self.network_calls = self._counter(NETWORK_CALLS_METRIC, "Animator render calls (one per batch of frames, "
                                           "whatever their sources); fewer than requests when Triton batched them",
                                           labels)
        log.warning("%s version %s instance %s: Animator from %s on %s", self.name, args["model_version"],
                    args.get("model_instance_name"), package, device)

    def _counter(self, name: str, description: str, labels: dict):
        family = self.pb.MetricFamily(name=name, description=description, kind=self.pb.MetricFamily.COUNTER)
        self._metric_families.append(family)
        return family.Metric(labels=labels)

    # -------------------------------------------------------------------------------------- requests
    def _inputs(self, request):
        def get(name: str):
            tensor = self.pb.get_input_tensor_by_name(request, name)
            return None if tensor is None else tensor.as_numpy()

        return get

    def _encode(self, image: np.ndarray):
        from components.animate import NoFaceError

        try:
            source = self.animator.prepare_source(image)
        except NoFaceError as err:
            raise RequestError(f"SOURCE: no face found ({err})") from None
        self.encodings.increment(1)
        return source

    def _cached_source(self, image: np.ndarray):
        """The encoding of ``image``: from this instance's LRU (keyed by the pixels) or freshly encoded."""
        key = hashlib.sha256(np.ascontiguousarray(image).data).hexdigest() + str(image.shape)
        if key in self.source_cache:
            self.source_cache.move_to_end(key)
            return self.source_cache[key]
        source = self._encode(image)
        if self.source_cache_size:
            self.source_cache[key] = source
            while len(self.source_cache) > self.source_cache_size:
                self.source_cache.popitem(last=False)
        return source

    def _stateless(self, request) -> list[Frame]:
        """The frames one stateless request asks for: validated, its sources encoded (or from the cache)."""
        parsed = parse_request(self._inputs(request), self.limits, need_source=True, need_frame=True)
        return [self._frame(self._cached_source(parsed.sources[row]), parsed, row, hold=None)
                for row in range(parsed.batch)]

    def _frame(self, source, parsed: Request, row: int, hold: Session | None) -> Frame:
        from components.animate import AnimateError, NoFaceError

        try:
            if hold is None or parsed.motion is not None:
                return request_frame(self.animator, source, parsed, row)
            try:
                motion = self.animator.driving_motion([parsed.driving[row]], smooth=False)
                hold.last_motion = motion
            except NoFaceError:
                if hold.last_motion is None:
                    raise
                motion = hold.last_motion  # a frame without a face holds the session's last good motion
            camera = parsed.camera[row:row + 1] if parsed.camera is not None else None
            return motion_frame(self.animator, source, motion, camera)
        except NoFaceError as err:
            name = DRIVING if parsed.driving is not None else MOTION
            raise RequestError(f"{name}: no face found in the driving frame ({err})") from None
        except AnimateError as err:
            raise RequestError(str(err)) from None

    def _render(self, frames: list[Frame]) -> np.ndarray:
        from components.animate import AnimateError

        self.network_calls.increment(1)
        try:
            return render_frames(self.animator, frames)
        except AnimateError as err:
            raise RequestError(str(err)) from None

    def _session(self, request, now: float) -> list:
        get = self._inputs(request)
        corrid = int(get(CORRID).reshape(-1)[0])
        start = bool(get(START).reshape(-1)[0])
        end = bool(get(END).reshape(-1)[0])
        if start:
            self.sessions.pop(corrid, None)  # a restarted id starts over
        elif corrid not in self.sessions:
            raise RequestError(f"session {corrid}: unknown or expired (idle > {self.idle_timeout_s:g} s or ended); "
                               f"start it again with {SOURCE} and the START flag")
        parsed = parse_request(get, self.limits, need_source=start, need_frame=not start, allow_source=start)
        if parsed.batch != 1:
            raise RequestError(f"session {corrid}: one frame per request, got a batch of {parsed.batch}")
        if start:
            self.sessions[corrid] = Session(self._encode(parsed.sources[0]))
            log.warning("%s: session %d source encoded", self.name, corrid)
        session = self.sessions[corrid]
        session.last_seen = now
        try:
            if parsed.has_frame:
                image = self._render([self._frame(session.source, parsed, 0, hold=session)])[0]
            else:
                image = session.source.crop  # START without a frame answers with the aligned source
        finally:
            if end:
                del self.sessions[corrid]
        return [self.pb.Tensor(IMAGE, image[None]),
                self.pb.Tensor(SOURCE_ENCODINGS, np.array([[session.encodings]], dtype=np.int64))]

    def _expire(self, now: float) -> None:
        for corrid in [c for c, s in self.sessions.items() if now - s.last_seen > self.idle_timeout_s]:
            del self.sessions[corrid]
            log.warning("%s: session %d expired after %.0f s idle, source cache freed", self.name, corrid,
                        self.idle_timeout_s)

    def _error(self, err: Exception):
        if isinstance(err, RequestError):  # the client's fault: HTTP 400 / gRPC INVALID_ARGUMENT
            return self.pb.InferenceResponse(error=self.pb.TritonError(str(err), self.pb.TritonError.INVALID_ARG))
        # a bug or a device fault for ONE request: answer it, keep serving the others
        log.error("%s: request failed", self.name, exc_info=err)
        return self.pb.InferenceResponse(error=self.pb.TritonError(f"internal error: {type(err).__name__}: {err}"))

    def _answer(self, batch: list[tuple[int, list[Frame]]], responses: list) -> None:
        """Render the frames of ``batch`` (request index, its frames) in one call and answer each request. When
        the call fails, the requests are retried one by one, so only the one at fault gets the error."""
        try:
            images = self._render([f for _, frames in batch for f in frames])
        except Exception as err:  # noqa: BLE001 - answered per request below
            if len(batch) == 1:
                responses[batch[0][0]] = self._error(err)
                return
            log.warning("%s: a batch of %d requests failed to render (%s); rendering them one by one", self.name,
                        len(batch), err)
            for item in batch:
                self._answer([item], responses)
            return
        row = 0
        for index, frames in batch:
            responses[index] = self.pb.InferenceResponse(
                output_tensors=[self.pb.Tensor(IMAGE, images[row:row + len(frames)])])
            row += len(frames)

    def _execute_stateless(self, requests: list) -> list:
        """All requests of Triton's dynamic batch, whatever their sources, rendered together: one network call
        per ``max_batch_size`` rows. A request that cannot be prepared is answered with its error alone."""
        responses: list = [None] * len(requests)
        prepared: list[tuple[int, list[Frame]]] = []
        for index, request in enumerate(requests):
            try:
                prepared.append((index, self._stateless(request)))
            except Exception as err:  # noqa: BLE001 - answered per request
                responses[index] = self._error(err)
        for batch in pack_rows(prepared, self.max_batch):
            self._answer(batch, responses)
        return responses

    def execute(self, requests: list) -> list:
        if not self.session_mode:
            return self._execute_stateless(requests)
        now = time.monotonic()
        self._expire(now)
        responses = []
        for request in requests:
            try:
                responses.append(self.pb.InferenceResponse(output_tensors=self._session(request, now)))
            except Exception as err:  # noqa: BLE001 - answered per request
                responses.append(self._error(err))
        return responses

    def finalize(self) -> None:
        self.sessions.clear()
        # Not animator.close(): closing the MediaPipe landmarker hangs inside the backend stub and Triton then
        # gives up unloading; the process exits right after and the OS frees it.
        self.source_cache.clear()

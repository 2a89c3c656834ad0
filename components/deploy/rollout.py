"""Roll a model onto a live Triton endpoint, or roll it back: export, load, smoke-test, keep or undo.

    export version N (package + model.py + config.pbtxt) into the repository (folder or S3)
    POST /v2/repository/models/<model>/load for both models (Triton re-reads the repository)
    smoke: one stateless request and one 2-frame session, against version N explicitly; each frame must
           equal the Animator's own render of the same inputs within ±smoke_tolerance per uint8 value
    on any failure: delete version N, load again (version N-1 keeps serving), raise RolloutError

With ``version_policy latest{2}`` version N-1 stays loaded next to N, so a client that pins a version
keeps working through the rollout. When the model is an MLflow registry URI, the deployed version,
the endpoint and the time are written back as tags on that registry version (``deploy.*``).
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from components.deploy.client import ClientError, Endpoint, Timings, encode_png, session_frames, stateless_frames
from components.config.deploy import DeployConfig
from components.deploy.repository import ExportResult, export_package, model_names, remove_version, versions
from components.deploy.server import ServerError, http_status
from components.errors import P4DError
from components.io.storage import open_store

DEPLOYMENT_FILE = "deployment.json"  # at the repository root: what the last deploy did (Triton ignores files)
SMOKE_SESSION_ID = 4_000_000_001  # a correlation id no client session is likely to hold


class RolloutError(P4DError):
    """A new version was not deployed (and was removed again); the message says why."""


@dataclass
class RolloutResult:
    deployed: bool
    version: int | None
    endpoint: str | None
    repo: str
    model_uri: str
    time: str
    max_abs_diff: int | None = None
    smoke_ms: float | None = None
    reason: str | None = None

    def lines(self) -> list[str]:
        if not self.deployed:
            return [f"nothing deployed: {self.reason}"]
        return [f"version {self.version} of {self.model_uri} live on {self.endpoint} ({self.repo})",
                f"smoke frame within {self.max_abs_diff} of the Animator's render, {self.smoke_ms:.0f} ms"]


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ Triton repository API
def http_base(triton_url: str) -> str:
    """The HTTP endpoint (the repository API is HTTP): ``http://H:P``; a bare ``H:P`` is taken as HTTP."""
    if triton_url.startswith("grpc://"):
        raise RolloutError(f"--triton {triton_url}: the repository API needs the HTTP endpoint (http://HOST:8000)")
    return triton_url.rstrip("/") if triton_url.startswith("http://") else f"http://{triton_url.rstrip('/')}"


def repository_call(triton_url: str, model: str, action: str, timeout_s: float = 600.0) -> None:
    """POST /v2/repository/models/<model>/<load|unload>; ServerError with Triton's message on failure."""
    url = f"{http_base(triton_url)}/v2/repository/models/{model}/{action}"
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        try:
            message = json.loads(body).get("error", body)
        except json.JSONDecodeError:
            message = body
        message = str(message).split("\n\nAt:")[0].strip()  # drop the backend stub's Python traceback
        raise ServerError(f"{action} {model} on {triton_url}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ServerError(f"{action} {model}: cannot reach Triton at {triton_url} ({err})") from None


def version_ready(triton_url: str, model: str, version: int) -> bool:
    return http_status(f"{http_base(triton_url)}/v2/models/{model}/versions/{version}/ready") == 200


# ------------------------------------------------------------------------------------------ smoke
def smoke_images() -> tuple[np.ndarray, np.ndarray]:
    """(source, driving): public-domain photos that ship inside scikit-image (nothing downloads)."""
    import skimage.data

    photo = skimage.data.astronaut()
    return photo, np.ascontiguousarray(photo[:, ::-1])


def reference_frame(animator, source: np.ndarray, driving: np.ndarray) -> np.ndarray:
    """What the served model must return for (source, driving): the Animator's render, the way backend.py
    calls it."""
    from components.deploy.backend import render_motion

    return render_motion(animator, animator.prepare_source(source), animator.driving_motion([driving], smooth=False),
                         None)


def _check(name: str, got: np.ndarray, want: np.ndarray, tolerance: int) -> int:
    if got.shape != want.shape or got.dtype != np.uint8:
        raise RolloutError(f"smoke {name}: got {got.dtype} {got.shape}, the Animator renders uint8 {want.shape}")
    diff = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max())
    if diff > tolerance:
        raise RolloutError(f"smoke {name}: frame differs from the Animator's render by up to {diff} "
                           f"(allowed {tolerance}) per uint8 value")
    return diff


def smoke_test(triton_url: str, cfg: DeployConfig, version: int, source: np.ndarray, driving: np.ndarray,
               reference: np.ndarray) -> tuple[int, float]:
    """Both models at ``version`` render ``reference`` for (source, driving). Returns (max diff, ms)."""
    src, drv = encode_png(source), encode_png(driving)
    start = time.perf_counter()
    with Endpoint.open(http_base(triton_url), timeout_s=cfg.ready_timeout_s) as endpoint:
        frame = next(stateless_frames(endpoint, cfg.model_name, src, [drv], Timings(), str(version)))
        diff = _check(f"{cfg.model_name} v{version}", frame, reference, cfg.smoke_tolerance)
        session = session_frames(endpoint, cfg.session_model_name, src, [drv, drv], SMOKE_SESSION_ID, Timings(),
                                 str(version))
    for i, frame in enumerate(session.frames):
        diff = max(diff, _check(f"{cfg.session_model_name} v{version} frame {i}", frame, reference,
                                cfg.smoke_tolerance))
    if session.encodings != 1:
        raise RolloutError(f"smoke {cfg.session_model_name} v{version}: the 2-frame session encoded its source "
                           f"{session.encodings} times, expected once")
    return diff, (time.perf_counter() - start) * 1000


# ---------------------------------------------------------------------------------- activate / undo
def rollback(repo: str | Path, triton_url: str, cfg: DeployConfig, version: int) -> list[str]:
    """Delete ``version`` and reload both models from what is left (unload them when nothing is: a first
    deploy that failed); returns what could not be restored."""
    remove_version(repo, cfg, version)
    store = open_store(str(repo))
    problems = []
    for model in model_names(cfg):
        action = "load" if versions(store, model) else "unload"
        try:
            repository_call(triton_url, model, action, cfg.ready_timeout_s)
        except ServerError as err:
            problems.append(str(err))
    return problems


def activate(repo: str | Path, triton_url: str, cfg: DeployConfig, version: int, source: np.ndarray,
             driving: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Load the exported ``version`` on ``triton_url`` and smoke-test it; on any failure roll it back and
    raise RolloutError naming the reason (and whether the previous version still serves)."""
    try:
        for model in model_names(cfg):
            repository_call(triton_url, model, "load", cfg.ready_timeout_s)
            if not version_ready(triton_url, model, version):
                raise RolloutError(f"{model} version {version} is not ready after the load")
        return smoke_test(triton_url, cfg, version, source, driving, reference)
    except (RolloutError, ServerError, ClientError) as err:
        problems = rollback(repo, triton_url, cfg, version)
        if problems:
            restored = "the previous version could not be reloaded either: " + "; ".join(problems)
        elif versions(open_store(str(repo)), cfg.model_name):
            restored = "rolled back: version removed, the previous version keeps serving"
        else:
            restored = "rolled back: version removed (there is no previous version to serve)"
        raise RolloutError(f"version {version} not deployed: {err}; {restored}") from None


# ------------------------------------------------------------------------------------------ records
def write_record(repo: str | Path, result: RolloutResult) -> None:
    open_store(str(repo)).put_bytes(DEPLOYMENT_FILE, (json.dumps(asdict(result), indent=2) + "\n").encode())


def registry_version(model_uri: str) -> tuple[str, str] | None:
    """(name, version) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI, else None."""
    if not model_uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    ref = model_uri[len("models:/"):].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, MlflowClient().get_model_version_by_alias(name, alias).version
    name, _, version = ref.rpartition("/")
    return (name, version) if name and version.isdigit() else None


def tag_registry(model_uri: str, tags: dict[str, str]) -> None:
    found = registry_version(model_uri)
    if found is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(found[0], found[1], key, value)


def rollout_model(model_uri: str, repo: str | Path, triton_url: str, cfg: DeployConfig | None = None,
                  assets: Path | None = None, config=None, reference_device: str | None = None) -> RolloutResult:
    """Export ``model_uri`` as a new version into ``repo`` and make it live on ``triton_url`` (see the
    module docstring). Raises RolloutError after rolling back when it cannot. ``p4d deploy rollout`` and
    ``p4d review approve --deploy`` call this.

    The smoke reference is rendered here on the kind of device the server renders on (``deploy.instance_kind``,
    same dtype): a CPU fp32 frame is not within ±1 of a GPU bf16 one, so a GPU endpoint is rolled out from a
    process with a GPU."""
    from components.animate import Animator
    from components.deploy.backend import torch_dtype

    cfg = cfg or DeployConfig()
    reference_device = reference_device or ("cuda" if cfg.instance_kind == "gpu" else "cpu")
    base = http_base(triton_url)
    if http_status(f"{base}/v2/health/live") != 200:
        raise RolloutError(f"Triton at {triton_url} is not live (GET /v2/health/live); nothing exported")
    animator = Animator.load(model_uri, assets, device=reference_device, dtype=torch_dtype(cfg.dtype), config=config)
    try:
        with tempfile.TemporaryDirectory(prefix="p4d-package-") as tmp:
            package = animator.save_package(Path(tmp) / "package")
            exported: ExportResult = export_package(package, repo, cfg, animator.image_size, animator.motion_dim)
        source, driving = smoke_images()
        reference = reference_frame(animator, source, driving)
    finally:
        animator.close()
    try:
        diff, ms = activate(repo, base, cfg, exported.version, source, driving, reference)
    except RolloutError as err:
        tag_registry(model_uri, {"deploy.failed_at": now_utc(), "deploy.failure": str(err)[:5000]})
        raise
    result = RolloutResult(True, exported.version, base, str(repo), str(model_uri), now_utc(), diff, ms)
    write_record(repo, result)
    tag_registry(model_uri, {"deploy.triton_version": str(result.version), "deploy.endpoint": base,
                             "deploy.repository": str(repo), "deploy.time": result.time})
    return result

"""Start the real ``tritonserver`` binary on a model repository and stop it by PID.

On a developer machine the binary is the one the ``nvidia-pytriton`` wheel ships (Triton 2.51 with
the Python backend only); the PyTriton wrapper class is not used. What the binary needs, found by
running it here:

- ``LD_LIBRARY_PATH``: the wheel's ``nvidia_pytriton.libs`` (libtritonserver and its deps) and the
  running interpreter's libdir (the Python-backend stub links ``libpython3.X.so.1.0``; without the
  libdir it picks whichever system Python has that soname);
- a backend directory whose ``python/`` holds the backend library, ``triton_python_backend_utils.py``
  and the stub built for THIS interpreter's minor version (the wheel keeps one stub per version apart
  from the backend, so we assemble the directory from symlinks in a temporary folder);
- ``PATH`` starting with this interpreter's ``bin/``: the embedded interpreter of the stub finds its
  ``sys.prefix`` by looking ``python3`` up on PATH, so the venv's ``pyvenv.cfg`` puts the venv's
  site-packages (torch, this project) on its ``sys.path``.

Every server gets its own shared-memory prefix, so several servers (tests in parallel) never clash.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components.errors import P4DError

LOG_TAIL_CHARS = 4000


class ServerError(P4DError):
    """The Triton server cannot be started, did not become ready, or a repository call failed."""


def pytriton_dir() -> Path:
    """The installed ``pytriton`` package folder (holds ``tritonserver/``)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed in this environment (it ships the tritonserver binary)")
    return Path(list(spec.submodule_search_locations)[0])


def bundled_binary() -> Path:
    return pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def library_path(binary: Path) -> str:
    """LD_LIBRARY_PATH for the binary: the wheel's libs, the interpreter's libdir, then what was set."""
    dirs = [pytriton_dir().parent / "nvidia_pytriton.libs", binary.parent.parent / "lib"]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        dirs.append(Path(libdir))
    parts = [str(d) for d in dirs if d.is_dir()]
    if os.environ.get("LD_LIBRARY_PATH"):
        parts.append(os.environ["LD_LIBRARY_PATH"])
    return ":".join(parts)


def python_stub() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton_dir() / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"{stub}: nvidia-pytriton ships no Python-backend stub for Python {version}")
    return stub


def assemble_backends(into: Path, backends: Path | None = None) -> Path:
    """A backend directory: ``python/`` = the backend library + utils + the stub for this interpreter."""
    source = (backends or pytriton_dir() / "tritonserver" / "backends") / "python"
    target = into / "python"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        if not (source / name).is_file():
            raise ServerError(f"{source / name}: missing from the Triton Python backend")
        (target / name).symlink_to(source / name)
    (target / "triton_python_backend_stub").symlink_to(python_stub())
    return into


def server_env(binary: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = library_path(binary)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def server_command(
    binary: Path,
    repo: str,
    backends: Path,
    models: Sequence[str],
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    shm_prefix: str,
) -> list[str]:
    cmd = [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in models),
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--exit-timeout-secs=10",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    return cmd


@dataclass
class TritonServer:
    """A running ``tritonserver``: its process (stopped by PID), URLs and log file."""

    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    workdir: Path
    models: tuple[str, ...] = field(default_factory=tuple)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM by PID (Triton drains, then stops its backend processes); SIGKILL if it does not exit.

        Then SIGKILL to what is left of the server's process group (its own, see start_server): a Python
        backend stub whose parent went away can deadlock in its exit path (seen here with MediaPipe
        loaded) and would otherwise linger, holding the model's memory."""
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        deadline = time.monotonic() + 10
        try:
            os.killpg(self.pid, signal.SIGKILL)
            while time.monotonic() < deadline:  # until the kernel has removed the whole group
                os.killpg(self.pid, 0)
                time.sleep(0.05)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.workdir / "backends", ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def triton_repository(repo: str | Path, endpoint_url_env: str = "AWS_ENDPOINT_URL") -> str:
    """``--model-repository`` for a folder or our ``s3://bucket/prefix``: Triton spells a non-AWS endpoint
    (MinIO, moto) inside the URI, ``s3://http://host:port/bucket/prefix``; credentials come from the usual
    AWS_* environment variables, which the server inherits."""
    text = str(repo)
    if not text.startswith("s3://"):
        return str(Path(text).resolve())
    endpoint = os.environ.get(endpoint_url_env, "").rstrip("/")
    return f"s3://{endpoint}/{text[len('s3://'):]}" if endpoint else text


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """HTTP status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_ready(server: TritonServer, timeout_s: float) -> None:
    """Until ``/v2/health/ready`` answers 200; fail early (with the log) when the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.running():
            raise ServerError(
                f"tritonserver exited with status {server.process.returncode} while starting on {server.http_url}; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        if http_status(f"{server.http_url}/v2/health/ready") == 200:
            return
        time.sleep(0.25)
    server.stop()
    raise ServerError(f"tritonserver on {server.http_url} not ready within {timeout_s:.0f} s; "
                      f"log {server.log_path}:\n{server.log_tail()}")


def start_server(
    repo: str | Path,
    models: Sequence[str],
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    ready_timeout_s: float = 600.0,
    binary: Path | None = None,
    backends: Path | None = None,
) -> TritonServer:
    """Start ``tritonserver`` on ``repo`` (a folder or an ``s3://`` URI Triton reads itself) with ``models``
    loaded (explicit model control), and return once it reports ready. Triton listens on all interfaces;
    ``host`` is where this process reaches it."""
    binary = Path(binary) if binary else bundled_binary()
    if not binary.is_file():
        raise ServerError(f"{binary}: no tritonserver binary there")
    repo_arg = str(repo)
    if not repo_arg.startswith("s3://"):
        if not Path(repo).is_dir():
            raise ServerError(f"{repo}: model repository folder does not exist")
        repo_arg = str(Path(repo).resolve())  # Triton resolves relative paths against its own cwd
    workdir = Path(tempfile.mkdtemp(prefix="p4d-triton-"))
    backend_dir = assemble_backends(workdir / "backends", backends)
    log_path = Path(log_path) if log_path else workdir / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shm_prefix = f"p4d{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    cmd = server_command(binary, repo_arg, backend_dir, models, http_port, grpc_port, metrics_port, shm_prefix)
    with open(log_path, "ab") as log:
        # its own session / process group (group id = its PID), so stop() can end every backend stub with it
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(binary),
                                   start_new_session=True)
    server = TritonServer(process, host, http_port, grpc_port, metrics_port, log_path, workdir, tuple(models))
    try:
        wait_ready(server, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server

"""Fixtures shared across test packages: real local servers started on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout_s} s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real ``moto_server`` (S3 API) on 127.0.0.1:<free port>; yields its endpoint URL.

    Tests point boto3 at it with the env vars AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (dummy credentials; moto accepts any).
    """
    exe = str(Path(sys.executable).with_name("moto_server"))  # this environment's, not a PATH shim
    if not Path(exe).exists():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_port(port, proc, timeout_s=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """A tiny Ψ with random (seeded) weights in the three model forms the Animator loads, plus its assets.

    ``assets``: a synthetic tiny asset bundle; ``psi``: a `p4d train psi`-format output folder
    (model/psi.safetensors with its network config); ``weights``: that file; ``package``: a model package
    written by ``Animator.save_package``.
    """
    import json

    import torch

    from components.animate import Animator
    from components.assets.networks import build_network
    from components.assets.synth import synthesize_bundle
    from components.config import build_config
    from components.train.checkpoint import save_module_safetensors

    root = tmp_path_factory.mktemp("tiny_model")
    assets = root / "assets"
    synthesize_bundle(assets, profile="tiny")
    cfg = build_config("tiny")
    torch.manual_seed(0)
    psi = build_network("psi", cfg)
    weights = root / "psi" / "model" / "psi.safetensors"
    weights.parent.mkdir(parents=True)
    # the metadata `p4d train psi` writes with its final export (PsiTask.export_metadata)
    save_module_safetensors(psi, weights, {"network": "psi", "config": json.dumps(psi.cfg.model_dump(mode="json"))})
    animator = Animator.load(root / "psi", assets)
    package = animator.save_package(root / "package")
    animator.close()
    return {"assets": assets, "psi": root / "psi", "weights": weights, "package": package, "config": cfg}


def start_mlflow_server(root: Path, artifacts: str, env: dict[str, str] | None = None):
    """A real ``mlflow server`` (sqlite backend in ``root``, proxied artifacts at ``artifacts``: a folder or an
    s3:// URI) on 127.0.0.1:<free port>, in its own process group. Returns (process, uri, log file)."""
    import urllib.request

    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", artifacts, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, uri, log
        except OSError:
            if time.monotonic() > deadline:
                stop_process_group(proc)
                log.close()
                raise RuntimeError("mlflow server did not come up within 120 s") from None
            time.sleep(0.3)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the group a server was started in (the server and its workers), SIGKILL after 20 s."""
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def mlflow_s3_server(tmp_path_factory, s3_server) -> Iterator[dict]:
    """A real ``mlflow server`` (sqlite) whose artifacts live in the bucket ``mlflow-artifacts`` on the
    ``moto_server`` S3 (the server proxies them: clients need no S3 credentials). Yields {"uri", "s3", "bucket"}."""
    import boto3

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="mlflow-artifacts")
    proc, uri, log = start_mlflow_server(tmp_path_factory.mktemp("mlflow-s3"), "s3://mlflow-artifacts/root",
                                         {**creds, "MLFLOW_S3_ENDPOINT_URL": s3_server})
    try:
        yield {"uri": uri, "s3": s3_server, "bucket": "mlflow-artifacts"}
    finally:
        stop_process_group(proc)
        log.close()

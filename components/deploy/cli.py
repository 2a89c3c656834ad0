"""`p4d deploy export|serve|rollout` and `p4d infer`: the thin command-line entries of the deploy stage.

`p4d deploy rollout` is the pipeline's `deploy` stage. With ``--triton URL`` it rolls that endpoint
(export into the repository, load, smoke, roll back on failure). Without it (the local DVC run) it
exports the repository and, when ``deploy.local_smoke`` is on (``tiny``), starts a Triton server on it on
free 127.0.0.1 ports, loads and smoke-tests the new version exactly as on a live endpoint, and stops it.
With ``--registration`` (written by `p4d register`) a candidate that is not approved is not deployed: the
stage says so and records it in ``deployment.json`` (exit 0).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from components.config import PROFILES, P4DConfig
from components.config import resolve_config as shared_resolve_config
from components.config.deploy import DeployConfig
from components.errors import P4DError

SECTION = "deploy"
REGISTRATION_FILE = "registration.json"


class RegistrationError(P4DError):
    """The registration record of `p4d register` is missing or malformed; the message names the file."""


def resolve_config(profile: str | None, params: Path | None) -> tuple[P4DConfig, DeployConfig]:
    cfg = shared_resolve_config(profile, params)
    return cfg, cfg.deploy


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: params or tiny)")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (profile + section overrides)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy", help="Triton model repository, server and rollout of a model",
        description="Export a model as a Triton model repository, serve it with the real tritonserver, and roll "
        "it onto a live endpoint with a smoke test and automatic rollback.",
    )
    sub = deploy.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")

    export = sub.add_parser("export", help="write a new numbered version of the Triton models",
                            description="Write the model as a new version of the stateless and the session "
                            "model into a Triton model repository (a folder or s3://bucket/prefix).")
    export.add_argument("--model", required=True, help="model package, `p4d train psi` dir, weights file, or "
                        "MLflow URI (models:/portrait4d-v2@champion)")
    export.add_argument("--out", required=True, help="model repository folder or s3://bucket/prefix")
    export.add_argument("--assets", type=Path, default=None, help="asset folder (not needed for a package)")
    _common(export)
    export.set_defaults(func=_export)

    serve = sub.add_parser("serve", help="run tritonserver on a model repository (foreground)",
                           description="Run the tritonserver binary shipped in nvidia-pytriton on REPO with explicit "
                           "model control until interrupted (Ctrl-C / SIGTERM stop it).")
    serve.add_argument("--repo", required=True, help="model repository folder or s3://bucket/prefix")
    serve.add_argument("--http-port", type=int, default=None, help="default: deploy.http_port (8000)")
    serve.add_argument("--grpc-port", type=int, default=None, help="default: deploy.grpc_port (8001)")
    serve.add_argument("--metrics-port", type=int, default=None, help="default: deploy.metrics_port (8002)")
    serve.add_argument("--model", action="append", default=None, metavar="NAME",
                       help="model to load (repeat; default: both p4d models)")
    serve.add_argument("--tritonserver", type=Path, default=None, help="tritonserver binary (default: the wheel's)")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: a temporary file)")
    _common(serve)
    serve.set_defaults(func=_serve)

    roll = sub.add_parser("rollout", help="the deploy stage: export, load on Triton, smoke test, roll back on failure",
                          description=__doc__.split("\n\n", 1)[1])
    roll.add_argument("--model", default=None, help="model to deploy (default: the registration's model_uri)")
    roll.add_argument("--repo", "--out", dest="repo", required=True,
                      help="model repository folder or s3://bucket/prefix")
    roll.add_argument("--triton", default=None, metavar="URL", help="live Triton HTTP endpoint (http://host:8000)")
    roll.add_argument("--registration", type=Path, default=None,
                      help=f"`p4d register` output (folder with {REGISTRATION_FILE}, or the file)")
    roll.add_argument("--assets", type=Path, default=None, help="asset folder (not needed for a package)")
    _common(roll)
    roll.set_defaults(func=_rollout)

    infer = subparsers.add_parser(
        "infer", help="client: animate a source with a driving video through a Triton endpoint",
        description="Send SOURCE and each frame of DRIVING to the Triton endpoint (stateless requests, or one "
        "video session with --session: the source is encoded once), write the frames as an MP4 and print "
        "frames/s and latency percentiles.",
    )
    infer.add_argument("--url", required=True, help="grpc://host:8001 (or host:8001) or http://host:8000")
    infer.add_argument("--source", required=True, type=Path, help="source portrait (image file)")
    infer.add_argument("--driving", required=True, type=Path, help="driving video, image, or folder of images")
    infer.add_argument("--out", required=True, type=Path, help="output video (.mp4)")
    infer.add_argument("--session", action="store_true", help="one video session (sequence batcher)")
    infer.add_argument("--session-id", type=int, default=None, help="correlation id (default: random)")
    infer.add_argument("--max-frames", type=int, default=10_000, help="at most this many driving frames")
    infer.add_argument("--fps", type=float, default=None, help="output frame rate (default: the driving video's, "
                       "else 25)")
    infer.add_argument("--model", default=None, help="Triton model name (default: from the config)")
    _common(infer)
    infer.set_defaults(func=_infer)


def _print(lines: list[str], prefix: str) -> None:
    sys.stdout.write("".join(f"{prefix}: {line}\n" for line in lines))


def _export(args: argparse.Namespace) -> int:
    from components.deploy.repository import export_model

    cfg, deploy = resolve_config(args.profile, args.params)
    result = export_model(args.model, args.out, deploy, assets=args.assets, config=cfg)
    _print(result.lines(), "deploy export")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from components.deploy.server import start_server, triton_repository

    _, deploy = resolve_config(args.profile, args.params)
    models = args.model or [deploy.model_name, deploy.session_model_name]
    server = start_server(
        triton_repository(args.repo), models,
        http_port=args.http_port or deploy.http_port, grpc_port=args.grpc_port or deploy.grpc_port,
        metrics_port=args.metrics_port or deploy.metrics_port, log_path=args.log,
        ready_timeout_s=deploy.ready_timeout_s, binary=args.tritonserver,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # a pod's SIGTERM stops Triton the same way Ctrl-C does
    _print([f"ready: {', '.join(models)} from {args.repo}", f"HTTP {server.http_url}  gRPC {server.grpc_url}  "
            f"metrics {server.metrics_url}", f"pid {server.pid}, log {server.log_path}"], "deploy serve")
    sys.stdout.flush()
    try:
        code = server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        _print(["stopped"], "deploy serve")
        return 0
    raise P4DError(f"tritonserver exited with status {code}; log {server.log_path}:\n{server.log_tail()}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def read_registration(path: Path) -> dict:
    """The `p4d register` record: a folder holding registration.json, or that file."""
    file = path / REGISTRATION_FILE if path.is_dir() else path
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        raise RegistrationError(f"{file}: no such registration file (written by `p4d register`)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise RegistrationError(f"{file}: unreadable registration ({err})") from None
    missing = [k for k in ("name", "version", "model_uri", "approved") if k not in record]
    if not isinstance(record, dict) or missing:
        raise RegistrationError(f"{file}: missing field(s) {', '.join(missing)}")
    return record


def _rollout(args: argparse.Namespace) -> int:
    from components.deploy.rollout import RolloutResult, now_utc, rollout_model, write_record
    from components.io.tracking import tracking_uri

    cfg, deploy = resolve_config(args.profile, args.params)
    model = args.model
    if args.registration is not None:
        record = read_registration(args.registration)
        if record["approved"] is not True:
            reason = (f"{record['name']} version {record['version']} is not approved (gate: "
                      f"{record.get('gate', 'unknown')}); approve it with `p4d review approve` to deploy it")
            write_record(args.repo, RolloutResult(False, None, args.triton, str(args.repo), record["model_uri"],
                                                  now_utc(), reason=reason))
            _print([f"nothing deployed: {reason}"], "deploy")
            return 0
        model = model or record["model_uri"]
    if model is None:
        raise RegistrationError("give --model or --registration (the model to deploy)")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg.tracking))
    if args.triton:
        result = rollout_model(model, args.repo, args.triton, deploy, assets=args.assets, config=cfg)
    elif deploy.local_smoke:
        result = _local_rollout(model, args, cfg, deploy)
    else:
        from components.deploy.repository import export_model

        exported = export_model(model, args.repo, deploy, assets=args.assets, config=cfg)
        result = RolloutResult(False, exported.version, None, str(args.repo), str(model), now_utc(),
                               reason="exported only: no --triton endpoint given and deploy.local_smoke is off")
        write_record(args.repo, result)
        _print(exported.lines(), "deploy")
    _print(result.lines(), "deploy")
    return 0


def _local_rollout(model: str, args: argparse.Namespace, cfg: P4DConfig, deploy: DeployConfig):
    """The local stage: a Triton server on the repository (no models loaded), then the real rollout."""
    from components.deploy.rollout import rollout_model
    from components.deploy.server import free_port, start_server, triton_repository
    from components.io.storage import open_store

    open_store(str(args.repo))  # validates the location before a server starts
    if not str(args.repo).startswith("s3://"):
        Path(args.repo).mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(3)]
    with start_server(triton_repository(args.repo), [], *ports, ready_timeout_s=deploy.ready_timeout_s) as server:
        return rollout_model(model, args.repo, server.http_url, deploy, assets=args.assets, config=cfg)


def _infer(args: argparse.Namespace) -> int:
    import random

    from components.animate.video import read_driving, write_video
    from components.deploy.client import Endpoint, Timings, encode_png, session_frames, stateless_frames

    _, deploy = resolve_config(args.profile, args.params)
    source = args.source.read_bytes() if args.source.is_file() else None
    if source is None:
        raise P4DError(f"--source {args.source}: no such file")
    driving = read_driving(args.driving, args.max_frames)
    encoded = [encode_png(f) for f in driving.frames]
    timings = Timings()
    with Endpoint.open(args.url) as endpoint:
        if args.session:
            sid = args.session_id if args.session_id is not None else random.randrange(1, 2**62)
            result = session_frames(endpoint, args.model or deploy.session_model_name, source, encoded, sid, timings)
            frames, note = result.frames, f"session {sid}: source encoded {result.encodings} time(s)"
        else:
            frames = list(stateless_frames(endpoint, args.model or deploy.model_name, source, encoded, timings))
            note = "stateless requests"
    write_video(args.out, frames, args.fps or driving.fps or 25.0)
    _print([f"{note} via {endpoint.protocol} {args.url}", timings.line(), f"wrote {args.out}"], "infer")
    return 0

"""`p4d demo`: the main job — run every stage that exists, on the embedded default, with real DVC.

The run directory is its own DVC project (``dvc init --no-scm``: a run directory is data, not source)
with a local DVC remote inside it, the same ``dvc.yaml`` layout as the repository root (generated from
pipelines/dag.py), a synthetic asset bundle unless real assets are given, and sample inputs
(public-domain scikit-image photos, one clip made from them, one unreadable file so the manifest
shows a failure row).

Why DVC and not a loop of our own: DVC's lock file is what makes the second run a no-op (content
hashes of every dep, param and out) and what lets a failed run resume at the failed stage; the
stages are reproduced one at a time in DAG order (``dvc repro --single-item``) so each stage's time
and outcome can be reported and pushed as metrics.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.config import PROFILES, load_params
from components.errors import P4DError
from components.io.atomic import atomic_write_text

REMOTE_DIR = "dvc-remote"


class DemoError(P4DError):
    """A stage of the demo failed or its inputs are unusable; the message says which and how to resume."""


@dataclass
class StageRun:
    name: str
    ran: bool
    seconds: float
    ok: int
    failed: int
    outputs: list[str]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: run every existing stage on the embedded default and write a report",
        description="Create the synthetic asset bundle (unless --assets is given) and sample inputs, run the DAG "
        "with DVC in OUT (a DVC project with a local remote), and write OUT/report.md. A second run with nothing "
        "changed re-runs nothing.",
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory (created; reused by later runs)")
    parser.add_argument("--assets", type=Path, default=None, help="real asset directory (default: synthetic in OUT/assets)")
    parser.add_argument("--profile", choices=PROFILES, default="tiny", help="config profile (default: tiny)")
    parser.set_defaults(func=_handle)


# --- inputs ------------------------------------------------------------------------------------------

def write_sample_inputs(images: Path, clips: Path, clips_test: Path) -> list[Path]:
    """Astronaut photo, a mirrored and a cropped variant, an unreadable file, a short training clip, and the
    held-out test clips (other motion; never the training clip). Idempotent."""
    from components.evaluate.samples import write_test_clips

    import numpy as np
    import skimage.data
    from PIL import Image

    photo = skimage.data.astronaut()  # public domain (NASA), ships inside scikit-image
    images.mkdir(parents=True, exist_ok=True)
    clips.mkdir(parents=True, exist_ok=True)
    written = []

    def save(path: Path, write) -> None:
        if not path.exists():  # never rewrite: an identical input keeps the DVC hash, a rewrite costs a re-hash
            write(path)
            written.append(path)

    save(images / "astronaut.png", lambda p: Image.fromarray(photo).save(p))
    save(images / "astronaut_mirrored.png", lambda p: Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(p))
    save(images / "astronaut_crop.jpg",
         lambda p: Image.fromarray(photo[10:330, 90:410]).resize((448, 448)).save(p, quality=92))
    save(images / "unreadable.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 truncated: not a JPEG"))
    save(clips / "astronaut_clip.mp4", lambda p: _write_clip(p, photo))
    written += write_test_clips(clips_test)
    return written


def _write_clip(path: Path, photo) -> None:
    """8 frames of a slow zoom on the photo (a stand-in for a VFHQ clip), H.264 via PyAV."""
    import av
    import numpy as np
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 320
        stream.pix_fmt = "yuv420p"
        for i in range(8):
            m = 4 * i  # zoom in a few pixels per frame
            frame = Image.fromarray(np.ascontiguousarray(photo[m : 512 - m, m : 512 - m])).resize((320, 320))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def prepare_assets(out: Path, assets: Path | None, profile: str) -> tuple[Path, bool]:
    """(asset dir, synthetic?). Real assets are checked before any work; a synthetic bundle is made once."""
    from components.assets.check import check_assets

    if assets is not None:
        bundle, results = check_assets(assets)
        bad = [r for r in results if r.spec.required and r.status != "ok"]
        if bad:
            raise DemoError(f"--assets {assets}: " + "; ".join(r.line() for r in bad) + " (see `p4d assets list`)")
        return assets.resolve(), bundle.synthetic
    target = out / "assets"
    if not (target / "bundle.json").exists():
        from components.assets.synth import synthesize_bundle

        print(f"p4d demo: writing a synthetic {profile} asset bundle to {target} (random weights)", flush=True)
        synthesize_bundle(target, profile=profile)
    return target, True


# --- DVC --------------------------------------------------------------------------------------------

def _dvc(out: Path, *args: str, env: dict | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=out, env=env, text=True, capture_output=capture)


def init_project(out: Path, profile: str) -> None:
    """A DVC project without git in OUT, a default local remote, and params.yaml for the profile."""
    if not (out / ".dvc").is_dir():
        for args in (("init", "--no-scm", "-q"), ("remote", "add", "-d", "local", REMOTE_DIR)):
            result = _dvc(out, *args, capture=True)
            if result.returncode:
                raise DemoError(f"dvc {' '.join(args)} in {out} failed: {result.stderr.strip()}")
        (out / REMOTE_DIR).mkdir(exist_ok=True)
    params = out / "params.yaml"
    if not params.exists():
        atomic_write_text(params, f"# Parameters of this run (validated by the typed config)\nprofile: {profile}\nseed: 0\n")
    cfg = load_params(params)
    if cfg.profile != profile:
        raise DemoError(f"{params} has profile {cfg.profile!r} but --profile {profile}; use another --out or edit it")


def _lock(out: Path) -> dict:
    lock = out / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}


def stage_env(out: Path) -> dict:
    env = dict(os.environ)
    # `p4d` of this interpreter first on PATH (the venv may not be activated); MLflow in the run dir
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    # register writes the model version and deploy reads it back: both through the same registry (MLflow's
    # default is the tracking store, unless MLFLOW_REGISTRY_URI names another one)
    env.setdefault("MLFLOW_REGISTRY_URI", env["MLFLOW_TRACKING_URI"])
    return env


def reproduce(out: Path, stages: list, env: dict) -> list[StageRun]:
    from pipelines.stage_exec import count_items

    runs = []
    for rs in stages:
        before = _lock(out).get(rs.name)
        started = time.monotonic()
        print(f"p4d demo: stage {rs.name}", flush=True)
        result = _dvc(out, "repro", "--single-item", rs.name, env=env)
        seconds = time.monotonic() - started
        if result.returncode:
            raise DemoError(
                f"stage {rs.name} failed (dvc exit {result.returncode}; its output is above). Outputs of the stages "
                f"before it are intact in {out}; fix the cause and run the same command again to resume at {rs.name}"
            )
        outs = [o["path"] for o in _lock(out).get(rs.name, {}).get("outs", [])]
        ok = failed = 0
        for o in outs:
            a, b = count_items(out / o)
            ok, failed = ok + a, failed + b
        runs.append(StageRun(rs.name, _lock(out).get(rs.name) != before, seconds, ok, failed, outs))
    return runs


# --- main -------------------------------------------------------------------------------------------

def run_demo(out: Path, assets: Path | None = None, profile: str = "tiny") -> tuple[list[StageRun], Path]:
    from pipelines.dag import resolve, select
    from pipelines.dvc_gen import write_dvc
    from pipelines.platform_config import build_platform

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = resolve(select(), build_platform(profile))
    if not stages:
        raise DemoError("no stage of the DAG is available in this checkout (see `p4d --help`)")
    asset_dir, synthetic = prepare_assets(out, assets, profile)
    write_sample_inputs(out / "data/raw/images", out / "data/raw/clips", out / "data/raw/clips_test")
    init_project(out, profile)
    rel_assets = os.path.relpath(asset_dir, out) if asset_dir.is_relative_to(out) else str(asset_dir)
    write_dvc(out, stages, paths={"assets": rel_assets})
    env = stage_env(out)
    runs = reproduce(out, stages, env)
    report = out / "report.md"
    if any(r.ran for r in runs) or not report.exists():
        from pipelines.demo_report import log_pipeline_run, write_report

        shown = showcase(out, asset_dir, {r.name for r in runs})

        if any(r.ran for r in runs):
            push = _dvc(out, "push", "-q", env=env, capture=True)
            if push.returncode:
                print(f"p4d demo: warning: dvc push to the local remote failed: {push.stderr.strip()}", file=sys.stderr)
        run_id = log_pipeline_run(out, runs, profile, env["MLFLOW_TRACKING_URI"])
        write_report(out, runs, profile, asset_dir, synthetic, run_id, env["MLFLOW_TRACKING_URI"], shown)
        if shown.endpoint_error:
            raise DemoError(f"the live endpoint check failed: {shown.endpoint_error} (server log: "
                            f"{out / 'report/tritonserver.log'}); every stage's output and {report} are written")
    return runs, report


def showcase(out: Path, asset_dir: Path, stages: set[str]):
    """The trained Ψ in use (reenactment + turntable) and the live endpoint (serve, one `p4d infer`, stop)."""
    from pipelines.dag import DATA
    from pipelines.demo_showcase import Showcase, live_endpoint, render_samples

    target = out / "report"
    source = out / "data/raw/images/astronaut.png"
    driving = sorted((out / DATA["raw_clips_test"].path).glob("*.mp4"))[0]
    shown = Showcase()
    if "train_psi" in stages:
        print("p4d demo: rendering a reenactment and a turntable with the trained Ψ", flush=True)
        from components.config import load_params

        shown = render_samples(out / DATA["psi"].path, asset_dir, source, driving, target,
                               load_params(out / "params.yaml"))
    repo = out / DATA["model_repository"].path
    if "deploy" in stages and any(repo.glob("*/config.pbtxt")):
        print("p4d demo: serving the model repository on 127.0.0.1 and sending one video session", flush=True)
        shown = live_endpoint(repo, source, driving, target, out / "params.yaml", shown)
    return shown


def _handle(args: argparse.Namespace) -> int:
    runs, report = run_demo(args.out, args.assets, args.profile)
    ran = [r.name for r in runs if r.ran]
    if ran:
        print(f"p4d demo: ran {', '.join(ran)}; report: {report}")
    else:
        print(f"p4d demo: nothing to do — every stage is up to date; report: {report}")
    return 0

"""What the main job shows a person after the DAG: the trained Ψ in use, and the endpoint answering.

- a short reenactment (a test clip drives the source photo) and a turntable, rendered by the Animator from
  the run's own tiny Ψ exactly as `p4d animate` renders (MP4 + GIF + a still strip for the report);
- the live endpoint: the Triton repository the deploy stage exported is served by the real `tritonserver`
  on 127.0.0.1, one video session goes through `p4d infer` (the client users run), and the returned frame and
  the measured latency go into the report; the server is stopped by PID afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STRIP_FRAMES = 6


@dataclass
class Showcase:
    reenactment: Path | None = None  # MP4
    reenactment_gif: Path | None = None
    reenactment_strip: Path | None = None  # PNG: source | driving | output rows
    turntable: Path | None = None
    turntable_gif: Path | None = None
    turntable_strip: Path | None = None
    endpoint_frame: Path | None = None  # PNG of a frame the endpoint returned
    endpoint_line: str | None = None  # what `p4d infer` printed about speed
    endpoint_seconds: float | None = None  # server start to ready
    endpoint_error: str | None = None


def _strip(rows: list[np.ndarray], path: Path) -> Path:
    from PIL import Image

    from components.io.atomic import atomic_path

    picks = np.linspace(0, len(rows[0]) - 1, min(STRIP_FRAMES, len(rows[0]))).round().astype(int)
    image = np.concatenate([np.concatenate([row[i] for i in picks], axis=1) for row in rows], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def render_samples(psi_dir: Path, assets: Path, source_photo: Path, driving_clip: Path, target: Path,
                   config) -> Showcase:
    """Reenactment of ``driving_clip`` and a turntable, from the trained Ψ in ``psi_dir``."""
    from components.animate import Animator
    from components.animate.video import read_driving, read_image, side_by_side, write_gif, write_video

    shown = Showcase()
    animator = Animator.load(psi_dir, assets, "cpu", config=config)
    try:
        source = animator.prepare_source(read_image(source_photo, "source"))
        driving = read_driving(driving_clip)
        motion = animator.driving_motion(driving.frames)
        frames = animator.render(source, motion)
        size = animator.image_size
        video = side_by_side(np.repeat(source.crop[None], len(frames), 0), motion.crops, frames, size=size)
        fps = driving.fps or animator.options.fps
        shown.reenactment = write_video(target / "reenactment.mp4", video, fps)
        shown.reenactment_gif = write_gif(target / "reenactment.gif", video, fps, max_side=3 * size)
        shown.reenactment_strip = _strip([motion.crops, frames], target / "reenactment_strip.png")
        orbit = animator.motion_from_vectors(np.repeat(source.motion[None], animator.options.orbit_frames, 0),
                                             source=source)
        turn = animator.render(source, orbit, camera="orbit", neck="none")
        shown.turntable = write_video(target / "turntable.mp4", turn, animator.options.fps)
        shown.turntable_gif = write_gif(target / "turntable.gif", turn, animator.options.fps, max_side=size)
        shown.turntable_strip = _strip([turn], target / "turntable_strip.png")
    finally:
        animator.close()
    return shown


def live_endpoint(repo: Path, source_photo: Path, driving_clip: Path, target: Path, params: Path,
                  shown: Showcase) -> Showcase:
    """Serve ``repo`` on 127.0.0.1, send one session through `p4d infer`, keep a returned frame, stop the server."""
    from components.animate.video import read_frames
    from components.config import load_params
    from components.deploy.server import free_port, start_server

    cfg = load_params(params).deploy
    ports = [free_port() for _ in range(3)]
    started = time.monotonic()
    try:
        server = start_server(repo, (cfg.model_name, cfg.session_model_name), *ports,
                              log_path=target / "tritonserver.log", ready_timeout_s=cfg.ready_timeout_s)
    except Exception as err:  # the report says why; the DAG's own outputs stand
        shown.endpoint_error = f"{type(err).__name__}: {err}"
        return shown
    shown.endpoint_seconds = time.monotonic() - started
    try:
        out = target / "endpoint.mp4"
        cmd = [str(Path(sys.executable).with_name("p4d")), "infer", "--url", f"grpc://127.0.0.1:{ports[1]}",
               "--source", str(source_photo), "--driving", str(driving_clip), "--out", str(out), "--session",
               "--params", str(params)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
        if result.returncode:
            shown.endpoint_error = (result.stderr or result.stdout).strip().splitlines()[-1]
            return shown
        shown.endpoint_line = next((line for line in result.stdout.splitlines() if "frames/s" in line), None)
        from PIL import Image

        Image.fromarray(read_frames(out)[0]).save(target / "endpoint_frame.png")
        shown.endpoint_frame = target / "endpoint_frame.png"
    finally:
        server.stop()
    return shown


def evaluation_table(evaluation: Path) -> list[str]:
    """Markdown rows of the evaluate stage's metrics.json (value, 95% interval, count)."""
    path = evaluation / "metrics.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    rows = ["| metric | value | 95% interval | n |", "|---|---|---|---|"]
    for name, value in sorted(data.get("metrics", {}).items()):
        lo, hi = data.get("intervals", {}).get(name, [None, None])
        interval = f"{lo:.4g} – {hi:.4g}" if lo is not None else ""
        rows.append(f"| `{name}` | {value:.4g} | {interval} | {data.get('counts', {}).get(name, '')} |")
    for name, reason in sorted(data.get("not_computed", {}).items()):
        rows.append(f"| `{name}` | not computed | {reason} | |")
    return rows


def registration_lines(registration: Path, tracking_uri: str) -> list[str]:
    path = registration / "registration.json"
    if not path.is_file():
        return []
    reg = json.loads(path.read_text())
    name, version = reg.get("name"), reg.get("version")
    uri = f"MLFLOW_TRACKING_URI={tracking_uri}"
    return [
        f"Model `{name}` version **{version}** (`{reg.get('model_uri')}`): gate **{reg.get('gate')}**, "
        f"approved: **{reg.get('approved')}**.",
        "",
        "Review it (or open the MLflow UI: `mlflow ui --backend-store-uri " + tracking_uri + "`):",
        "",
        "```bash",
        f"{uri} p4d review list",
        f"{uri} p4d review show {version}",
        f"{uri} p4d review approve {version} --note 'looks right'    # champion -> {version}",
        f"{uri} p4d review reject {version} --note 'why'",
        f"{uri} p4d review rollback                                  # champion back to the previous approved",
        "```",
    ]


def infer_latency(line: str | None) -> str:
    """The p50 latency from `p4d infer`'s summary line, for the report's headline."""
    match = re.search(r"p50 (\d+(?:\.\d+)?) ms", line or "")
    return f"{match.group(1)} ms" if match else "?"

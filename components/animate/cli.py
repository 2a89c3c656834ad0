"""`p4d animate`: one source portrait + a driving video (or frames, or one image) -> the reenacted video."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from components.animate.engine import CAMERA_MODES, NECK_MODES, AnimateError
from components.device import add_device_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "animate",
        help="reenact a source portrait with a driving video (the trained Ψ in use)",
        description="Render the person of --source with the expression and head pose of every --driving frame, "
        "from the driving camera (default), the source's, a turntable orbit or a fixed view. Writes an MP4 (the "
        "driving video's audio copied), OUT.frames.json (which driving frames had no usable face and were held "
        "over from the last good one) and optionally PNG frames.",
        epilog="examples:\n"
        "  p4d animate --model runs/demo/models/psi --assets runs/demo/assets --source me.jpg --driving talk.mp4 "
        "--out me_talking.mp4\n"
        "  p4d animate --model models:/portrait4d-v2@champion --source me.jpg --driving me.jpg --camera orbit "
        "--out turntable.mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="a `p4d train psi` output folder, a Ψ .safetensors (training or `p4d import-official`), "
                        "a model package folder, or an MLflow URI (models:/NAME@ALIAS)")
    p.add_argument("--source", required=True, type=Path, help="the portrait to animate (JPEG/PNG/WebP)")
    p.add_argument("--driving", required=True, type=Path, help="a video (.mp4/.mov), a folder of frames, or one image")
    p.add_argument("--out", required=True, type=Path, help="output .mp4")
    p.add_argument("--assets", type=Path, default=None,
                   help="asset folder (FLAME, embeddings, PD-FGC); not needed for a package / MLflow model")
    p.add_argument("--params", type=Path, default=None,
                   help="params.yaml of the run that trained the model (fitting / deformation settings); "
                        "default: the profile whose Ψ sizes the weights have")
    p.add_argument("--camera", choices=CAMERA_MODES, default="driving",
                   help="driving: head pose follows the driving frames (default); source: the source's pose, "
                        "expression only; orbit: a yaw sweep within the paper's camera range (turntable); "
                        "fixed: --yaw/--pitch")
    p.add_argument("--yaw", type=float, default=None, help="camera yaw in radians (with --camera fixed/orbit pitch)")
    p.add_argument("--pitch", type=float, default=None, help="camera pitch in radians (fixed / orbit)")
    p.add_argument("--neck", choices=NECK_MODES, default="driving",
                   help="where the neck rotation comes from (default: driving; none = rigid head)")
    p.add_argument("--no-smooth", action="store_true", help="no temporal smoothing of motion and pose")
    p.add_argument("--side-by-side", action="store_true", help="write source | driving | output")
    p.add_argument("--frames", type=Path, default=None, help="also write the output frames as PNGs into this folder")
    p.add_argument("--batch", type=int, default=None, help="frames per network call (default: animate.batch)")
    add_device_argument(p)
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the driving video's)")
    p.set_defaults(func=_handle)


def _config(args):
    if args.params is None:
        return None
    from components.config import load_params

    return load_params(args.params)


def _handle(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from components.animate.engine import Animator
    from components.animate.video import read_driving, read_image, side_by_side, write_video
    from components.io.atomic import atomic_dir, atomic_write_text

    if args.out.suffix.lower() != ".mp4":
        raise AnimateError(f"--out {args.out}: must end in .mp4")
    if args.frames is not None and args.frames.exists():
        raise AnimateError(f"--frames {args.frames}: already exists; choose a new folder")
    if args.batch is not None and args.batch < 1:
        raise AnimateError(f"--batch {args.batch}: must be at least 1")
    source_image = read_image(args.source, "source")
    config = _config(args)
    started = time.perf_counter()
    animator = Animator.load(args.model, args.assets, args.device, config=config)
    driving = read_driving(args.driving, animator.options.max_frames)
    frames = driving.frames
    if args.camera == "orbit" and len(frames) == 1:  # a turntable of one expression
        frames = frames * animator.options.orbit_frames
    try:
        source = animator.prepare_source(source_image)
        for note in source.notes:
            print(f"p4d animate: warning: source {args.source}: {note}", file=sys.stderr)
        t0 = time.perf_counter()
        motion = animator.driving_motion(frames, smooth=not args.no_smooth and len(frames) > 1)
        t_motion = time.perf_counter() - t0
        bad = [i for i, ok in enumerate(motion.valid) if not ok]
        if bad:
            print(f"p4d animate: warning: {len(bad)} of {len(frames)} driving frames had no usable face; the last "
                  f"good motion was held (see {args.out.with_suffix('.frames.json')})", file=sys.stderr)
        t0 = time.perf_counter()
        with tqdm(total=len(frames), unit="frame", desc="render", disable=not sys.stderr.isatty()) as bar:
            output = animator.render(source, motion, args.camera, args.neck, args.yaw, args.pitch, args.batch,
                                     progress=bar.update)
        t_render = time.perf_counter() - t0
    finally:
        animator.close()
    video = side_by_side(np.repeat(source.crop[None], len(output), 0), motion.crops, output,
                         size=animator.image_size) if args.side_by_side else output
    fps = args.fps or driving.fps or animator.options.fps
    record = {
        "model": str(args.model), "source": str(args.source), "driving": str(args.driving),
        "camera": args.camera, "neck": args.neck, "smoothed": not args.no_smooth, "fps": fps,
        "frames": len(output), "image_size": animator.image_size, "device": str(animator.device),
        "seconds": {"motion": round(t_motion, 3), "render": round(t_render, 3),
                    "total": round(time.perf_counter() - started, 3)},
        "per_frame": [{"frame": i, "face": bool(ok), "reason": r} for i, (ok, r) in
                      enumerate(zip(motion.valid, motion.reasons))],
    }
    if args.frames is not None:
        from PIL import Image

        with atomic_dir(args.frames) as tmp:
            for i, frame in enumerate(video):
                Image.fromarray(frame).save(tmp / f"{i:06d}.png")
    write_video(args.out, video, fps, driving.audio_from)
    atomic_write_text(args.out.with_suffix(".frames.json"), json.dumps(record, indent=2) + "\n")
    n = len(output)
    print(f"p4d animate: wrote {args.out} ({n} frames, {animator.image_size}², {fps:g} fps): motion "
          f"{n / max(t_motion, 1e-9):.1f} frames/s, render {n / max(t_render, 1e-9):.1f} frames/s on {animator.device}")
    return 0

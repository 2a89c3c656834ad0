"""`p4d fit-flame`: the thin command-line entry of the stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import PROFILES
from components.config import resolve_config as shared_resolve_config
from components.config.fit_flame import FitFlameConfig
from components.assets.policy import refuse_synthetic_outside_tiny
from components.device import add_device_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-flame",
        help="landmarks, 512 alignment, FLAME fitting and motion features for images or video clips",
        description="Turn a folder or S3 prefix of photos (or, with --video, of video clips) into aligned "
        "crops, 437-float FLAME labels, PD-FGC motion features and a Parquet manifest with one row per "
        "item. Re-running skips inputs whose content and configuration are unchanged.",
    )
    parser.add_argument("--input", required=True, metavar="PATH_OR_S3_URI", help="folder, file or s3://bucket/prefix")
    parser.add_argument("--assets", required=True, type=Path, metavar="DIR",
                        help="asset folder (FLAME, landmark embedding, optional PD-FGC)")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--video", action="store_true", help="inputs are video clips (mp4/mov)")
    add_device_argument(parser)
    parser.add_argument("--batch", type=int, default=16, help="items fitted together (default: 16; thousands on a GPU)")
    parser.add_argument("--workers", type=int, default=0,
                        help="CPU processes preparing inputs (default: 0, in-process)")  # fmt: skip
    parser.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: tiny)")
    parser.add_argument("--params", type=Path, default=None,
                        help="params.yaml whose fit_flame section overrides the profile")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_handle)


def resolve_config(profile: str | None, params: Path | None) -> FitFlameConfig:
    """The profile's defaults with the ``fit_flame`` section of ``params`` on top, validated."""
    return shared_resolve_config(profile, params).fit_flame


def _handle(args: argparse.Namespace) -> int:
    from components.fit_flame.stage import run  # heavy imports (torch, av) only when the command runs

    full = shared_resolve_config(args.profile, args.params)
    refuse_synthetic_outside_tiny(args.assets, full.profile)  # run() sees only the fit_flame section
    result = run(full.fit_flame, args.input, args.assets, args.out, args.video, args.device, args.batch,
                 progress=not args.no_progress, workers=args.workers, run_config=full)  # fmt: skip
    sys.stdout.write(
        f"fit-flame: {result.n_ok} ok, {result.n_failed} failed of {result.n_items} items "
        f"({result.n_reused_inputs} inputs reused); manifest: {result.manifest_path}\n"
    )
    return 0

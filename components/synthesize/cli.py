"""`p4d synthesize`: the thin command-line entry of the stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import PROFILES, P4DConfig
from components.config import resolve_config as shared_resolve_config
from components.config.synthesize import SynthesizeConfig
from components.device import add_device_argument

SECTION = "synthesize"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="render GenHead pseudo multi-view shards from fitted FLAME labels",
        description="Render K views per identity with GenHead, conditioned on FLAME parameters and cameras "
        "drawn from fit_flame labels and the paper's camera distribution, into WebDataset-style tar shards "
        "plus index.json in a folder or an s3:// prefix. Deterministic for a seed; an interrupted run "
        "resumes at the first missing shard.",
    )
    parser.add_argument("--labels", required=True, action="append", type=Path, metavar="DIR",
                        help="fit_flame output folder (or labels.npy); repeat to pool several (e.g. FFHQ + VFHQ)")
    parser.add_argument("--assets", required=True, type=Path, metavar="DIR", help="asset folder (GenHead, FLAME)")
    parser.add_argument("--out", required=True, metavar="DIR_OR_S3_URI", help="output folder or s3://bucket/prefix")
    parser.add_argument("--identities", type=int, help="identities to render (default: profile)")
    parser.add_argument("--views", type=int, help="views per identity (default: profile)")
    parser.add_argument("--shard-size", type=int, help="identities per shard (default: profile)")
    parser.add_argument("--seed", type=int, help="root seed (default: profile)")
    parser.add_argument("--batch", type=int, help="views per GenHead forward (default: profile)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="GenHead autocast dtype")
    add_device_argument(parser)
    parser.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: params or tiny)")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (profile + section overrides)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_handle)


def resolve_config(profile: str | None, params: Path | None, overrides: dict) -> tuple[P4DConfig, SynthesizeConfig]:
    """P4DConfig from the profile + params, and its synthesize section with the command-line overrides on top."""
    cfg = shared_resolve_config(profile, params, SECTION, overrides)
    return cfg, cfg.synthesize


def _handle(args: argparse.Namespace) -> int:
    from components.synthesize.stage import run  # torch and the networks load only when the command runs

    flags = {"identities": args.identities, "views": args.views, "shard_size": args.shard_size,
             "seed": args.seed, "batch": args.batch, "dtype": args.dtype}
    cfg, synth = resolve_config(args.profile, args.params, {k: v for k, v in flags.items() if v is not None})
    summary = run(cfg, args.labels, args.out, args.assets, synth=synth, device=args.device,
                  progress=not args.no_progress)
    sys.stdout.write("".join(f"synthesize: {line}\n" for line in summary.lines()))
    return 0

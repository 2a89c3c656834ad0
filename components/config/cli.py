"""`p4d config show`: print the resolved configuration of a profile (or of a params file)."""

from __future__ import annotations

import argparse
import sys

from components.config import PROFILES, build_config, dump_config, load_params


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show the resolved typed configuration of a profile")
    sub = parser.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = sub.add_parser(
        "show",
        help="print the resolved config",
        description="Print the fully resolved configuration: the profile's values plus the overrides "
        "of --params, validated. This is exactly what every stage runs with.",
    )
    source = show.add_mutually_exclusive_group()
    source.add_argument("--profile", choices=PROFILES, default=None, help="named profile (default: tiny)")
    source.add_argument("--params", default=None, help="a params.yaml to resolve instead of a bare profile")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format")
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    cfg = load_params(args.params) if args.params else build_config(args.profile or "tiny")
    sys.stdout.write(dump_config(cfg, args.format).rstrip("\n") + "\n")
    return 0

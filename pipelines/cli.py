"""The `p4d` command: one sub-command per pipeline stage and tool.

Each sub-command lives next to the code it runs (``<package>/cli.py`` with ``add_parser``); this
module only assembles them, so ``p4d --help`` lists every command with one line each.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from components.errors import P4DError

# (module with add_parser) in the order `p4d --help` lists them.
COMMAND_MODULES = [
    "components.config_cli",
    "components.assets.cli",
    "components.import_official.cli",
    "components.fit_flame.cli",
    "components.synthesize.cli",
    "components.train.cli",
    "components.animate.cli",
    "components.evaluate.cli",
    "components.register.cli",
    "components.deploy.cli",
    "pipelines.pipeline_cli",
    "pipelines.main_job",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p4d",
        description="Portrait4D-v2 MLOps: fit FLAME, synthesize multi-view data with GenHead, train Ψ_3d and Ψ "
        "with DeepSpeed, and run it all as one DAG (DVC locally, Kubeflow on the cluster).",
        epilog="Run `p4d COMMAND --help` for a command's options. Set P4D_DEBUG=1 for tracebacks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # command not built yet in this checkout
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except P4DError as err:
        if os.environ.get("P4D_DEBUG"):
            raise
        print(f"p4d {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"p4d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `p4d` command: one sub-command per pipeline stage and tool.

Each sub-command lives next to the code it runs (``<package>/cli.py`` with ``add_parser``); this
module only assembles them, so ``p4d --help`` lists every command with one line each. A module listed
here that cannot be found is an error, not a command that silently disappears (the DAG's stages and
``p4d pipeline compile`` rely on every command being there).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from components.errors import P4DError


class CommandModuleError(P4DError):
    """A command module listed in COMMAND_MODULES is missing from this installation."""


# (module with add_parser) in the order `p4d --help` lists them.
COMMAND_MODULES = [
    "components.config.cli",
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
            if err.name and name.startswith(err.name):  # the command's own module, not one it imports
                raise CommandModuleError(f"command module {name} is missing ({err}); the p4d installation "
                                         "is incomplete or pipelines/cli.py lists a module that was moved") from None
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CommandModuleError as err:
        print(f"p4d: error: {err}", file=sys.stderr)
        return err.exit_code
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

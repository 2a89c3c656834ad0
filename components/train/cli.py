"""`p4d train psi3d` / `p4d train psi`: thin command-line entries of the two training stages.

Launch with ``torchrun --nproc-per-node N [--nnodes ...] --no-python p4d train ...`` for N processes
per node; without torchrun it runs as one process. The exit status is 143 when SIGTERM stopped the
run after its checkpoint (the orchestrator restarts it with ``--resume``), 0 when it finished.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import PROFILES
from components.device import add_device_argument


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--assets", required=True, type=Path, metavar="DIR", help="asset folder (`p4d assets check`)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="run folder: checkpoints/, model/, metrics.jsonl, deepspeed_config.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last complete checkpoint in --out (a fresh start if there is none)")
    add_device_argument(parser)
    parser.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: params or tiny)")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (profile + section overrides)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--checkpoint-uri", default=None, metavar="DIR_OR_S3_URI",
                        help="durable checkpoint store: every checkpoint is uploaded there as it is written, and a "
                        "start resumes from the newest complete one found there (default: env P4D_CHECKPOINT_URI; "
                        "`p4d pipeline exec` sets it per pipeline run and stage)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train Ψ_3d or Ψ with DeepSpeed (torchrun for several processes)",
        description="Train the static 3D synthesizer Ψ_3d on GenHead pseudo multi-view data, or the 4D "
        "synthesizer Ψ from Ψ_3d on real clip pairs, with DeepSpeed (ZeRO, bf16 autocast and gradient "
        "accumulation from the config). Schedules count images seen, so any process count gives the same run.",
    )
    sub = parser.add_subparsers(dest="train_command", required=True, metavar="STAGE")

    psi3d = sub.add_parser("psi3d", help="train Ψ_3d on synthesized multi-view shards and/or online GenHead data",
                           description="Train Ψ_3d (paper schedule: adversarial off, renderer frozen and depth / "
                           "triplane terms on for the first images; neural resolution ramp).")
    psi3d.add_argument("--data", metavar="DIR_OR_S3_URI", default=None, help="`p4d synthesize` output (shards)")
    psi3d.add_argument("--online", action="store_true",
                       help="also draw fresh identities with GenHead during training (needs --labels)")
    psi3d.add_argument("--labels", action="append", type=Path, default=None, metavar="DIR",
                       help="fit_flame output(s) whose labels condition the online sampler; repeatable")
    _common(psi3d)
    psi3d.set_defaults(func=_psi3d)

    psi = sub.add_parser("psi", help="train Ψ from a Ψ_3d run on fit_flame video clips",
                         description="Train Ψ: init from Ψ_3d except the motion cross-attention layers; "
                         "frozen Ψ_3d supplies pseudo multi-view targets and re-extracted driving motion.")
    psi.add_argument("--data", required=True, type=Path, metavar="DIR", help="`p4d fit-flame --video` output")
    psi.add_argument("--psi3d", required=True, type=Path, metavar="DIR_OR_FILE",
                     help="`p4d train psi3d` output folder (or a Ψ_3d weights file)")
    _common(psi)
    psi.set_defaults(func=_psi)


def _config(args: argparse.Namespace):
    from components.config import resolve_config

    return resolve_config(args.profile, args.params)


def _report(stage: str, result) -> int:
    import os

    from components.train.loop import exit_code

    if os.environ.get("RANK", "0") == "0":
        state = "stopped by SIGTERM after checkpointing" if result.preempted else "finished"
        sys.stdout.write(
            f"train {stage}: {state}: {result.iterations} iterations, {result.images_seen} images in "
            f"{result.seconds:.1f} s; checkpoint {result.checkpoint}; MLflow run {result.mlflow_run_id}\n"
        )
    return exit_code(result)


def _psi3d(args: argparse.Namespace) -> int:
    from components.train.data import TrainingDataError
    from components.train.durable import checkpoint_uri
    from components.train.psi3d import run

    if args.online and not args.labels:
        raise TrainingDataError("--online needs --labels (fit_flame output) to condition GenHead")
    result = run(_config(args), args.data, args.out, args.assets, online_labels=args.labels if args.online else None,
                 resume=args.resume, device=args.device, progress=not args.no_progress,
                 checkpoint_store=checkpoint_uri(args.checkpoint_uri))
    return _report("psi3d", result)


def _psi(args: argparse.Namespace) -> int:
    from components.train.durable import checkpoint_uri
    from components.train.psi import run

    result = run(_config(args), args.data, args.psi3d, args.out, args.assets, resume=args.resume,
                 device=args.device, progress=not args.no_progress, checkpoint_store=checkpoint_uri(args.checkpoint_uri))
    return _report("psi", result)


def main(argv: list[str] | None = None) -> int:
    """``python -m components.train.cli train psi3d ...``: the same command without the rest of ``p4d``
    (what a training pod runs under torchrun when the full CLI is not needed)."""
    from components.errors import P4DError

    parser = argparse.ArgumentParser(prog="p4d")
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except P4DError as err:
        print(f"p4d train {args.train_command}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())

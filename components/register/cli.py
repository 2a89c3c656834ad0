"""`p4d register` (the pipeline stage) and `p4d review` (reviewers and scripts): thin command-line entries."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from components.config import PROFILES
from components.device import add_device_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add_register(subparsers)
    _add_review(subparsers)


# ---------------------------------------------------------------------------------------------- register
def _add_register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register a trained Ψ + its evaluation as a new MLflow model version (gate, card, lineage)",
        description="Log Ψ as an MLflow pyfunc (the Animator model package), attach the evaluation metrics, apply "
        "the gate against the current champion with MLflow's metric-threshold validation, write the model card "
        "and the lineage tags (git commit, DVC hashes from dvc.lock, config digest, runs), and register a new "
        "version of the model named in the config. A passing version gets the alias `challenger` (and "
        "`champion` when register.auto_approve is on); a failing one is registered but never aliased.",
    )
    parser.add_argument("--psi", required=True, type=Path, metavar="DIR", help="`p4d train psi` output (or a package)")
    parser.add_argument("--evaluation", required=True, type=Path, metavar="DIR",
                        help="`p4d evaluate` output (metrics.json, gate.json, samples/)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="writes package/ and registration.json here")
    parser.add_argument("--assets", type=Path, default=None, metavar="DIR",
                        help="asset folder Ψ was trained with (not needed when --psi is a model package)")
    parser.add_argument("--pipeline-run-id", default=None,
                        help="pipeline run to link (default: env P4D_PIPELINE_RUN_ID)")
    parser.add_argument("--dvc-lock", type=Path, default=None, metavar="FILE",
                        help="dvc.lock with the data hashes (default: ./dvc.lock when present)")
    add_device_argument(parser)
    parser.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: params or tiny)")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (profile + section overrides)")
    parser.set_defaults(func=_register)


def _register(args: argparse.Namespace) -> int:
    from components.config import resolve_config
    from components.register.stage import run

    cfg = resolve_config(args.profile, args.params)
    result = run(cfg, args.psi, args.evaluation, args.out, assets=args.assets, pipeline_run_id=args.pipeline_run_id,
                 dvc_lock=args.dvc_lock, device=args.device)
    sys.stdout.write("".join(f"register: {line}\n" for line in result.lines()))
    return 0


# ------------------------------------------------------------------------------------------------ review
def _add_review(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "review",
        help="list, inspect, approve, reject or roll back registered model versions",
        description="Review registered Ψ versions on any tracking server (--tracking-uri or MLFLOW_TRACKING_URI). "
        "State lives in the registry (aliases `champion` / `challenger`, tags `gate`, `approval`, audit.*), so "
        "setting an alias or tag in the MLflow UI is the same as using this command. Who acts: env "
        "P4D_REVIEWER, else the OS user.",
    )
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow server (default: MLFLOW_TRACKING_URI, then config)")
    parser.add_argument("--model", default=None, help="registered model name (default: tracking.registered_model)")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="policy profile (default: each version's own profile, or --params)")
    parser.add_argument("--params", type=Path, default=None, help="params.yaml whose register section is the policy")
    sub = parser.add_subparsers(dest="review_command", required=True, metavar="ACTION")

    sub.add_parser("list", help="table of versions: created, gate, key metrics, aliases, approval").set_defaults(
        func=_list)
    show = sub.add_parser("show", help="a version's card, metrics, lineage, artifact links and audit trail")
    show.add_argument("version")
    show.set_defaults(func=_show)

    approve = sub.add_parser("approve", help="move `champion` to a version (records the previous one)")
    approve.add_argument("version")
    approve.add_argument("--note", required=True, help="why (kept in the audit trail)")
    approve.add_argument("--force", action="store_true", help="approve a version that failed the gate (recorded)")
    _deploy_flags(approve)
    approve.set_defaults(func=_approve)

    reject = sub.add_parser("reject", help="mark a version rejected and remove `challenger` from it")
    reject.add_argument("version")
    reject.add_argument("--note", required=True, help="why (kept in the audit trail)")
    reject.set_defaults(func=_reject)

    rollback = sub.add_parser("rollback", help="point `champion` back to the previous approved version")
    rollback.add_argument("--note", default="", help="why (kept in the audit trail)")
    _deploy_flags(rollback)
    rollback.set_defaults(func=_rollback)


def _deploy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deploy", action="store_true",
                        help="then roll the new champion out to Triton (needs --repo and --triton)")
    parser.add_argument("--repo", default=None, metavar="DIR_OR_S3", help="Triton model repository (with --deploy)")
    parser.add_argument("--triton", default=None, metavar="URL", help="Triton HTTP endpoint (with --deploy)")


def _policy_for(args: argparse.Namespace):
    """The review policy: --params / --profile when given, else the config of each version's own profile."""
    from components.config import build_config, resolve_config

    if args.params is not None or args.profile is not None:
        fixed = resolve_config(args.profile, args.params).register
        return lambda _profile: fixed
    return lambda profile: build_config(profile if profile in PROFILES else "paper").register


def _registry(args: argparse.Namespace):
    from components.config import resolve_config
    from components.io.tracking import tracking_uri
    from components.register.registry import Registry, connect

    cfg = resolve_config(args.profile, args.params)
    uri = args.tracking_uri or tracking_uri(cfg.tracking)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # model downloads (deploy) read the same server
    return Registry(connect(uri, cfg.register), args.model or cfg.tracking.registered_model, cfg.register)


def _list(args: argparse.Namespace) -> int:
    from components.register.review import list_table

    sys.stdout.write(list_table(_registry(args)))
    return 0


def _show(args: argparse.Namespace) -> int:
    from components.register.review import show_text

    sys.stdout.write(show_text(_registry(args), args.version))
    return 0


def _check_deploy(args: argparse.Namespace) -> None:
    from components.register.registry import RegistryError

    if args.deploy and not (args.repo and args.triton):
        raise RegistryError("--deploy needs --repo DIR_OR_S3 and --triton URL")


def _deploy(args: argparse.Namespace, registry, version: str) -> None:
    """Approval drives deployment (issue #15): roll the new champion out to Triton right away."""
    if not args.deploy:
        return
    from components.config import resolve_config
    from components.register.review import deploy_champion

    version_profile = (registry.get(version).tags or {}).get("profile")
    config = resolve_config(args.profile or (version_profile if version_profile in PROFILES else None), args.params)
    from components.errors import P4DError
    from components.register.registry import RegistryError

    sys.stdout.write(f"review: deploying {registry.name} version {version} to {args.triton}\n")
    try:
        lines = deploy_champion(registry, version, args.repo, args.triton, config)
    except P4DError as err:
        raise RegistryError(f"version {version} is {registry.policy.champion_alias} in the registry, but the deploy "
                            f"failed and the endpoint still serves the previous version: {err}; retry with `p4d "
                            f"deploy rollout --model models:/{registry.name}/{version} ...`") from None
    sys.stdout.write("".join(f"review: {line}\n" for line in lines))


def _approve(args: argparse.Namespace) -> int:
    _check_deploy(args)
    registry = _registry(args)
    previous = registry.approve(args.version, args.note, force=args.force, policy_for=_policy_for(args))
    champion = registry.policy.champion_alias
    sys.stdout.write(f"review: {registry.name} version {args.version} is now {champion}"
                     f" (was: {previous or 'none'})\n")
    _deploy(args, registry, str(args.version))
    return 0


def _reject(args: argparse.Namespace) -> int:
    registry = _registry(args)
    registry.reject(args.version, args.note)
    sys.stdout.write(f"review: {registry.name} version {args.version} rejected\n")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    _check_deploy(args)
    registry = _registry(args)
    old, new = registry.rollback(args.note)
    sys.stdout.write(f"review: {registry.name} {registry.policy.champion_alias} rolled back from version {old} "
                     f"to version {new}\n")
    _deploy(args, registry, new)
    return 0

"""`p4d pipeline ...`: compile / submit / schedule the Kubeflow pipeline, regenerate dvc.yaml, and the
small commands the pipeline's own pods run (prepare, exec, mark, nothing-to-do, pytorchjob).

The in-pod commands are not listed in `p4d pipeline --help` (a user never types them; the compiled spec and
the PyTorchJob pods do); they run as before and each keeps its own `--help`."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
from pathlib import Path

from components.config import PROFILES, ConfigError, P4DConfig, load_params, resolve_config

SNAPSHOT_DIR = Path(__file__).parent / "compiled"
IN_POD_COMMANDS = ("prepare", "exec", "mark", "nothing-to-do", "pytorchjob")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="compile, submit or schedule the Kubeflow pipeline; regenerate dvc.yaml",
        description="Compile, submit or schedule the Kubeflow pipeline; regenerate dvc.yaml. The commands the "
        f"pipeline's own pods run ({', '.join(IN_POD_COMMANDS)}) are not listed; each has --help.")
    sub = parser.add_subparsers(dest="pipeline_command", required=True, metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group()
        src.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: params or tiny)")
        src.add_argument("--params", type=Path, default=None, help="params.yaml (profile + overrides) as the run's params")

    def endpoint_args(p: argparse.ArgumentParser) -> None:
        config_args(p)
        p.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
        p.add_argument("--experiment", default=None, help="experiment name (default: tracking.experiment)")
        p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="pipeline argument (repeatable)")

    c = sub.add_parser("compile", help="compile the pipeline spec (YAML) for a profile",
                       description="Compile the Kubeflow pipeline of every DAG stage (pipelines/dag.py); a stage "
                       "whose p4d command is missing is an error. The committed snapshot is the paper profile: "
                       "--profile paper --out pipelines/compiled/portrait4d-paper.yaml.")
    config_args(c)
    c.add_argument("--out", type=Path, default=Path("pipeline.yaml"), help="output file (default: pipeline.yaml)")
    c.add_argument("--nodes", type=int, default=None, help="training nodes (>1 runs PyTorchJobs); default: platform config")
    c.set_defaults(func=_compile)

    s = sub.add_parser("submit", help="submit one run to a Kubeflow Pipelines endpoint")
    endpoint_args(s)
    s.add_argument("--run-name", default=None)
    s.add_argument("--force", action="store_true", help="run even if the input data and params are unchanged")
    s.set_defaults(func=_submit)

    r = sub.add_parser("schedule", help="create a recurring run (scheduled retraining)",
                       description="A recurring run: each run first compares the input data version and params with "
                       "the last successful run and ends with 'nothing to do' when both are unchanged.")
    endpoint_args(r)
    r.add_argument("--cron", required=True, help="5-field crontab ('0 3 * * 0') or 6-field KFP cron (seconds first)")
    r.add_argument("--name", default=None, help="recurring run name (default: p4d-retraining-PROFILE)")
    r.set_defaults(func=_schedule)

    d = sub.add_parser("dvc", help="regenerate dvc.yaml from the DAG (and add tracked keys to params.yaml)")
    d.add_argument("--root", type=Path, default=Path("."), help="directory holding dvc.yaml and params.yaml")
    d.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is not what the DAG generates")
    d.set_defaults(func=_dvc)

    # --- run inside the pipeline's pods: no `help=`, so argparse leaves them out of the listing --------
    # (help=argparse.SUPPRESS would print "==SUPPRESS==" there on Python 3.11)
    p = sub.add_parser("prepare", description="(in-pod) version the inputs, list shards, decide whether to run")
    p.add_argument("--sharded", action="append", default=[], metavar="NODE=URI")
    p.add_argument("--shards-out", action="append", default=[], metavar="NODE=PATH")
    p.add_argument("--source", action="append", default=[], metavar="NODE=URI")
    p.add_argument("--marker", required=True)
    p.add_argument("--params-text", required=True)
    p.add_argument("--force", default="false")
    p.add_argument("--data-version-out", type=Path, required=True)
    p.add_argument("--changed-out", type=Path, required=True)
    p.add_argument("--reason-out", type=Path, required=True)
    p.set_defaults(func=_prepare)

    e = sub.add_parser("exec", description="(in-pod) run one stage: params file, S3 sync, torchrun, metrics")
    e.add_argument("--stage", required=True)
    e.add_argument("--params-text", required=True)
    e.add_argument("--data-version", required=True)
    e.add_argument("--nproc-per-node", type=int, default=1)
    e.add_argument("--pipeline-run", default="", help="KFP run id (tag of the stage's MLflow run)")
    e.add_argument("--sync-in", action="append", default=[], metavar="PATH=URI")
    e.add_argument("--sync-out", action="append", default=[], metavar="PATH=URI")
    e.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the stage's p4d argv")
    e.set_defaults(func=_exec)

    m = sub.add_parser("mark", description="(in-pod) record the data version of a successful run")
    m.add_argument("--marker", required=True)
    m.add_argument("--data-version", required=True)
    m.add_argument("--params-text", required=True)
    m.add_argument("--run-id", required=True)
    m.set_defaults(func=_mark)

    n = sub.add_parser("nothing-to-do", description="(in-pod) end a run whose inputs are unchanged")
    n.add_argument("--reason", required=True)
    n.set_defaults(func=_nothing_to_do)

    j = sub.add_parser("pytorchjob", description="(in-pod) run a training stage as a multi-node PyTorchJob and wait")
    j.add_argument("--stage", required=True)
    j.add_argument("--params-text", required=True)
    j.add_argument("--data-version", required=True)
    j.add_argument("--run-id", required=True)
    j.add_argument("--platform-json", required=True)
    j.add_argument("--input", action="append", default=[], metavar="NODE=URI")
    j.add_argument("--output", action="append", default=[], metavar="NODE=URI")
    j.add_argument("--output-path", action="append", default=[], metavar="NODE=PATH")
    j.add_argument("--dry-run", action="store_true", help="print the manifest instead of creating the job")
    j.set_defaults(func=_pytorchjob)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def _config(args: argparse.Namespace) -> tuple[P4DConfig, str]:
    """The run's config and its params text (what the pipeline's pods receive)."""
    from pipelines.kubeflow.pipeline import one_line_params

    if args.params is not None:
        cfg = load_params(args.params)
        return cfg, one_line_params(args.params.read_text())
    cfg = resolve_config(args.profile)  # the same default profile as every other command
    return cfg, one_line_params(f"profile: {cfg.profile}")


def params_config(text: str) -> P4DConfig:
    """Validate a params text with the typed config (same rules as params.yaml)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        try:
            return load_params(path)
        except ConfigError as err:
            raise ConfigError(str(err).replace(str(path), "params")) from None


def _platform(cfg: P4DConfig, nodes: int | None):
    from pipelines.dag import STAGES
    from components.config.platform import PlatformConfig

    platform = cfg.platform
    if nodes is None:
        return platform
    data = platform.model_dump()
    for s in STAGES:
        if s.distributed:
            data["stages"][s.name]["nodes"] = nodes
    return PlatformConfig.model_validate(data)


def compile_to(cfg: P4DConfig, params_text: str, out: Path, nodes: int | None = None) -> Path:
    """Every DAG stage (``select`` fails on a stage whose command is missing)."""
    from pipelines.dag import select
    from pipelines.kubeflow.pipeline import compile_pipeline

    return compile_pipeline(cfg, out, select(), _platform(cfg, nodes), params_text=params_text)


def _compile(args: argparse.Namespace) -> int:
    cfg, text = _config(args)
    out = compile_to(cfg, text, args.out, args.nodes)
    print(f"compiled the {cfg.profile} pipeline to {out}")
    return 0


def _arguments(args: argparse.Namespace, params_text: str) -> dict:
    arguments: dict = {"params_yaml": params_text}
    if getattr(args, "force", False):
        arguments["force"] = True
    arguments.update(_pairs(args.arg, "--arg"))
    return arguments


def _submit(args: argparse.Namespace) -> int:
    from pipelines.kubeflow.client import check_reachable, submit

    cfg, text = _config(args)
    check_reachable(args.host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(cfg, text, Path(tmp) / "pipeline.yaml")
        name = args.run_name or f"p4d-{cfg.profile}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        run_id = submit(args.host, package, _arguments(args, text), args.experiment or cfg.tracking.experiment, name,
                        cfg.platform.pytorchjob.service_account)
    print(f"submitted run {run_id} ({name}) to {args.host}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines.kubeflow.client import check_reachable, kfp_cron, schedule

    cron = kfp_cron(args.cron)
    cfg, text = _config(args)
    check_reachable(args.host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(cfg, text, Path(tmp) / "pipeline.yaml")
        name = args.name or f"p4d-retraining-{cfg.profile}"
        job_id = schedule(args.host, package, _arguments(args, text), args.experiment or cfg.tracking.experiment,
                          name, cron, cfg.platform.pytorchjob.service_account)
    print(f"scheduled {name} ({job_id}) on {args.host} at cron '{cron}'")
    return 0


def _dvc(args: argparse.Namespace) -> int:
    from pipelines.dag import resolve, select
    from pipelines.dvc_gen import dvc_yaml_text, render_dvc, write_dvc

    cfg = load_params(args.root / "params.yaml")
    stages = resolve(select(), cfg.platform)
    target = args.root / "dvc.yaml"
    if args.check:
        expected = dvc_yaml_text(render_dvc(stages))
        if not target.exists() or target.read_text() != expected:
            print(f"{target} is out of date with pipelines/dag.py; run `p4d pipeline dvc`", file=sys.stderr)
            return 1
        print(f"{target} is up to date ({', '.join(rs.name for rs in stages)})")
        return 0
    write_dvc(args.root, stages)
    print(f"wrote {target}: {', '.join(rs.name for rs in stages)}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pipelines.data_version import plan_run, shards_as_items

    params_config(args.params_text)  # an invalid profile / value fails here, before any work
    sharded, outs = _pairs(args.sharded, "--sharded"), _pairs(args.shards_out, "--shards-out")
    plan = plan_run(sharded, _pairs(args.source, "--source"), args.marker, args.params_text,
                    force=args.force.lower() == "true")
    for path, text in [
        (args.data_version_out, plan.data_version),
        (args.changed_out, json.dumps(plan.decision.changed)),
        (args.reason_out, plan.decision.reason),
        *[(Path(outs[node]), json.dumps(shards_as_items(plan.shards[node]))) for node in sharded],
    ]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(f"data version {plan.data_version}: {plan.decision.reason}")
    for node, shards in plan.shards.items():
        print(f"  {node}: {len(shards)} shard(s)")
    return 0


def _exec(args: argparse.Namespace) -> int:
    from pipelines.stage_exec import run_stage

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    sync_in = [(Path(p), u) for p, u in _pairs(args.sync_in, "--sync-in").items()]
    sync_out = [(Path(p), u) for p, u in _pairs(args.sync_out, "--sync-out").items()]
    return run_stage(args.stage, argv, args.params_text, args.data_version, args.nproc_per_node, sync_in, sync_out,
                     args.pipeline_run)


def _mark(args: argparse.Namespace) -> int:
    from pipelines.data_version import params_digest, write_marker

    record = write_marker(args.marker, args.data_version, params_digest(args.params_text), args.run_id)
    print(f"marked {args.marker}: data version {record['data_version']} (run {record['run_id']})")
    return 0


def _nothing_to_do(args: argparse.Namespace) -> int:
    print(args.reason if args.reason.startswith("nothing to do") else f"nothing to do: {args.reason}")
    return 0


def _pytorchjob(args: argparse.Namespace) -> int:
    from pipelines.dag import STAGE_BY_NAME, resolve
    from pipelines.kubeflow.pytorchjob import job_name, launch_and_wait, pod_args, render_pytorchjob
    from components.config.platform import PlatformConfig

    platform = PlatformConfig.model_validate_json(args.platform_json)
    [rs] = resolve([STAGE_BY_NAME[args.stage]], platform)
    inputs, outputs = _pairs(args.input, "--input"), _pairs(args.output, "--output")
    name = job_name(args.stage, args.run_id)
    manifest = render_pytorchjob(
        rs, platform, name, pod_args(rs, args.params_text, args.data_version, inputs, outputs, args.run_id))
    if args.dry_run:
        print(json.dumps(manifest, indent=2))
        return 0
    launch_and_wait(manifest, platform.pytorchjob.poll_s, rs.resources.timeout_s)
    for node, path in _pairs(args.output_path, "--output-path").items():
        # the job wrote the artifact at its URI; leave a record where the KFP launcher expects local output
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "pytorchjob.json").write_text(json.dumps({"job": name, "uri": outputs.get(node)}))
    return 0

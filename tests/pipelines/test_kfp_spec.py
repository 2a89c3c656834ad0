"""The compiled Kubeflow spec: reviewed snapshot, and the platform settings on exactly the right tasks."""

from __future__ import annotations

import json
import re

import pytest

from components.config import build_config
from pipelines import dag
from pipelines.kubeflow.pipeline import compile_pipeline
from pipelines.pipeline_cli import SNAPSHOT_DIR, compile_to, _platform
from pipelines.platform_config import build_platform
from tests.pipelines.spec_graph import SpecGraph

PAPER = build_platform("paper")
CONTROL_TASKS = ("prepare", "mark-success", "nothing-to-do")


@pytest.fixture(scope="module")
def paper_all(tmp_path_factory) -> SpecGraph:
    """Every stage of the DAG (planned ones too), paper profile: GPU training on the A100 pool."""
    out = tmp_path_factory.mktemp("kfp") / "paper.yaml"
    return SpecGraph.load(compile_pipeline(build_config("paper"), out, list(dag.STAGES)))


def test_snapshot_is_what_the_dag_compiles_to(tmp_path):
    snapshot = SNAPSHOT_DIR / "portrait4d-paper.yaml"
    fresh = compile_to(build_config("paper"), '{"profile": "paper"}', tmp_path / "fresh.yaml")
    assert fresh.read_text() == snapshot.read_text(), (
        "the compiled spec changed: review and run `p4d pipeline compile --profile paper "
        "--out pipelines/compiled/portrait4d-paper.yaml`")


def _stage_tasks(graph: SpecGraph):
    names = {dag.kfp_task_name(s.name): s.name for s in dag.STAGES}
    return [(t, names[t.name]) for t in graph.leaf_tasks() if t.name in names]


def test_gpu_stages_get_pool_gpus_shm_secrets_and_retries(paper_all):
    pool = PAPER.gpu_pool
    tasks = _stage_tasks(paper_all)
    assert {name for _, name in tasks} == {s.name for s in dag.STAGES}
    for task, name in tasks:
        res, stage = PAPER.resources(name), dag.STAGE_BY_NAME[name]
        accel = task.executor.get("resources", {}).get("accelerator")
        if stage.gpu and res.gpus:
            assert task.platform["nodeSelector"]["labels"] == {pool.label_key: pool.label_value}, name
            assert task.platform["tolerations"] == [
                {"key": pool.taint_key, "operator": "Equal", "value": pool.taint_value, "effect": pool.taint_effect}]
            assert accel["type"] == "nvidia.com/gpu" and int(accel["count"]) == res.gpus
            assert task.executor["image"] == PAPER.images.gpu
        else:  # register / deploy: CPU stages
            assert "nodeSelector" not in task.platform and "tolerations" not in task.platform and accel is None, name
            assert task.executor["image"] == PAPER.images.cpu
        shm = task.platform.get("emptyDirMounts", [])
        assert shm == ([{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": res.shm, "volumeName": "dshm"}]
                       if res.shm else []), name
        secrets = {s["secretName"] for s in task.platform.get("secretAsEnv", [])}
        expected = {PAPER.secrets.s3 if k == "s3" else PAPER.secrets.mlflow for k in stage.secrets}
        assert secrets == expected, name
        assert task.spec["retryPolicy"]["maxRetryCount"] == res.retries, name
        assert task.spec["cachingOptions"]["enableCache"] is True
        assert task.executor["command"] == ["p4d", "pipeline", "exec"]
        argv = task.executor["args"][task.executor["args"].index("--") + 1 :]
        assert argv[: len(stage.command)] == list(stage.command)


def test_training_in_pod_runs_torchrun_over_all_gpus_of_the_node(paper_all):
    args = paper_all.task("train-psi3d").executor["args"]
    assert args[args.index("--nproc-per-node") + 1] == "8"


def test_control_steps_stay_off_the_gpu_pool(paper_all):
    control = [t for t in paper_all.leaf_tasks() if t.name in CONTROL_TASKS or t.name.startswith("gather-")]
    assert {t.name for t in control} >= {"prepare", "mark-success", "nothing-to-do", "gather-multiview"}
    for t in control:
        assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(t.platform), t.name
        assert "accelerator" not in t.executor.get("resources", {}) and "retryPolicy" not in t.spec, t.name
        assert t.executor["image"] == PAPER.images.cpu
    # the steps that read/write S3 get its credentials, nothing else
    for t in control:
        names = {s["secretName"] for s in t.platform.get("secretAsEnv", [])}
        assert names == ({PAPER.secrets.s3} if t.name in ("prepare", "mark-success") else set()), t.name
    # the decision and the marker are never served from cache
    for name in CONTROL_TASKS:
        assert paper_all.task(name).spec["cachingOptions"].get("enableCache", False) is False


def test_fan_out_over_shards_and_nothing_to_do_branch(paper_all):
    def loop_of(name):
        return [b for b in paper_all.enclosing(paper_all.task(name)) if "parameterIterator" in b]

    for name, source in [("fit-flame", "raw_images"), ("synthesize", "raw_images"), ("fit-flame-video", "raw_clips")]:
        [loop] = loop_of(name)
        assert loop["parameterIterator"]["items"]["inputParameter"].endswith(f"prepare-{source}_shards")
        assert loop["iteratorPolicy"]["parallelismLimit"] == PAPER.shard_parallelism
    for name in ("train-psi3d", "train-psi"):
        assert loop_of(name) == []
    # synthesize gets the shard's seed and share of identities
    args = paper_all.task("synthesize").executor["args"]
    assert "--identities" in args and "--seed" in args
    run_branch = [b["triggerPolicy"]["condition"] for b in paper_all.enclosing(paper_all.task("train-psi"))
                  if "triggerPolicy" in b]
    skip_branch = [b["triggerPolicy"]["condition"] for b in paper_all.enclosing(paper_all.task("nothing-to-do"))
                   if "triggerPolicy" in b]
    assert run_branch == ["inputs.parameter_values['pipelinechannel--prepare-changed'] == true"]
    assert skip_branch == ["!(inputs.parameter_values['pipelinechannel--prepare-changed'] == true)"]
    assert paper_all.task("mark-success").spec["dependentTasks"]  # waits for the stages


def test_multi_node_training_is_a_pytorchjob_launcher(tmp_path):
    cfg = build_config("paper")
    platform = _platform(cfg, 2)
    graph = SpecGraph.load(compile_pipeline(cfg, tmp_path / "p.yaml", list(dag.STAGES), platform))
    names = {t.name for t in graph.leaf_tasks()}
    assert {"launch-train-psi3d", "launch-train-psi"} <= names and "train-psi3d" not in names
    launcher = graph.task("launch-train-psi3d")
    assert launcher.executor["command"] == ["p4d", "pipeline", "pytorchjob"]
    assert "accelerator" not in launcher.executor.get("resources", {}) and "nodeSelector" not in launcher.platform
    args = launcher.executor["args"]
    rendered = json.loads(args[args.index("--platform-json") + 1])
    assert rendered["stages"]["train_psi3d"]["nodes"] == 2 and rendered["gpu_pool"]["gpus_per_node"] == 8
    assert any(a.startswith("multiview=") and "multiview'].uri" in a for a in args)  # the job reads the artifact URI


def test_tiny_profile_compiles_cpu_only(tmp_path):
    graph = SpecGraph.load(compile_pipeline(build_config("tiny"), tmp_path / "t.yaml", list(dag.STAGES)))
    for t in graph.leaf_tasks():
        assert "nodeSelector" not in t.platform and "tolerations" not in t.platform
        if t.executor:
            assert "accelerator" not in t.executor.get("resources", {})
            assert t.executor["image"] == build_platform("tiny").images.cpu


def test_compile_command_writes_the_spec(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "--profile", "paper", "--out", str(out)]) == 0
    assert out.read_text() == (SNAPSHOT_DIR / "portrait4d-paper.yaml").read_text()
    with pytest.raises(SystemExit):  # argparse names the allowed profiles
        main(["pipeline", "compile", "--profile", "nope", "--out", str(out)])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def _p4d_argv(container: dict) -> list[str]:
    """The pod's `p4d` argv; KFP fills the per-shard integers at run time, a number stands in for them here."""
    argv = [*container["command"][1:], *container["args"]]
    return [re.sub(r"\{\{\$\.inputs\.parameters\['(identities|seed)'\]\}\}", "1", a) for a in argv]


def test_every_pod_command_line_is_one_our_cli_accepts(tmp_path, capsys):
    """What each pod of the compiled spec (and of a multi-node PyTorchJob) runs parses with our `p4d` parser,
    down to the stage argv after `--`: a renamed or removed flag fails here, not in the cluster. (kfp.local cannot
    run these: its SubprocessRunner only runs lightweight Python components, and it rejects ParallelFor / If.)"""
    from pipelines.cli import build_parser, main
    from pipelines.kubeflow.pytorchjob import pod_args

    parser = build_parser()
    spec = SpecGraph.load(SNAPSHOT_DIR / "portrait4d-paper.yaml").spec
    containers = [e["container"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e]
    ours = [c for c in containers if c["command"][0] == "p4d"]
    stage_argv = {}
    for c in ours:
        args = parser.parse_args(_p4d_argv(c))  # argparse exits (fails the test) on an unknown flag
        if args.pipeline_command == "exec":
            stage_argv[args.stage] = args.argv[1:]
    [rs] = dag.resolve([dag.STAGE_BY_NAME["train_psi"]], PAPER)
    uris = {n: f"s3://b/{n}" for n in (*rs.stage.inputs, *rs.stage.outputs)}
    job_args = parser.parse_args(pod_args(rs, "{}", "v", uris, uris))
    assert job_args.pipeline_command == "exec" and job_args.argv[1:] == rs.stage.render(
        {**{n: f"/p4d/work/{n}" for n in uris}, "params": dag.PARAMS_TOKEN, "device": "cuda"})
    assert set(stage_argv) == {s.name for s in dag.STAGES}
    for name, argv in stage_argv.items():
        stage = dag.STAGE_BY_NAME[name]
        parsed = parser.parse_args(argv)
        assert tuple(argv[: len(stage.command)]) == stage.command and callable(parsed.func), name
        if "--device" in argv:  # GPU stages on the A100 pool are told cuda; the CLI keeps it
            assert parsed.device == ("cuda" if PAPER.resources(name).gpus else "cpu"), name
    # the skip branch's step runs for real once its placeholder is filled
    [skip] = [c for c in ours if c["command"][1:] == ["pipeline", "nothing-to-do"]]
    argv = [a.replace("{{$.inputs.parameters['reason']}}", "input data and params unchanged") for a in _p4d_argv(skip)]
    assert main(argv) == 0
    assert capsys.readouterr().out == "nothing to do: input data and params unchanged\n"

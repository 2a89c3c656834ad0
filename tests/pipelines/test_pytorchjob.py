"""Multi-node training: the PyTorchJob manifest the launcher renders from config, and its state machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import dag
from pipelines.kubeflow.pytorchjob import (
    TEMPLATE_HEADER, PyTorchJobError, job_name, job_state, pod_args, render_pytorchjob, template_manifest,
)
from pipelines.platform_config import build_platform

REPO = Path(__file__).resolve().parents[2]


def _resolved(stage: str, nodes: int, profile: str = "paper"):
    platform = build_platform(profile, {"stages": {stage: {"nodes": nodes}}})
    [rs] = dag.resolve([dag.STAGE_BY_NAME[stage]], platform)
    return rs, platform


def _manifest(stage="train_psi3d", nodes=3):
    rs, platform = _resolved(stage, nodes)
    uris = {n: f"s3://p4d/kfp/run/{n}" for n in (*rs.stage.inputs, *rs.stage.outputs)}
    args = pod_args(rs, '{"profile": "paper"}', "v1", uris, uris)
    return render_pytorchjob(rs, platform, job_name(stage, "run-1"), args), platform


def test_n_nodes_of_eight_a100_with_shm_and_secrets():
    job, platform = _manifest(nodes=3)
    pool = platform.gpu_pool
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "8"
    for role in ("Master", "Worker"):
        pod = specs[role]["template"]["spec"]
        assert pod["nodeSelector"] == {pool.label_key: pool.label_value}
        assert pod["tolerations"] == [{"key": pool.taint_key, "operator": "Equal", "value": pool.taint_value,
                                       "effect": pool.taint_effect}]
        [c] = pod["containers"]
        assert c["name"] == "pytorch" and c["image"] == platform.images.gpu
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" == c["resources"]["requests"]["nvidia.com/gpu"]
        shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
        assert refs == {platform.secrets.s3, platform.secrets.mlflow}
        assert all("value" not in e for e in c["env"] if "valueFrom" in e)
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["runPolicy"]["backoffLimit"] == platform.resources("train_psi3d").retries


def test_pods_run_the_stage_argv_under_exec_with_s3_sync():
    job, _ = _manifest()
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["pipeline", "exec"]
    tail = args[args.index("--") + 1 :]
    assert tail[:2] == ["train", "psi3d"] and tail[tail.index("--out") + 1] == "/p4d/work/psi3d"
    assert "/p4d/work/multiview=s3://p4d/kfp/run/multiview" in args
    assert args[args.index("--sync-out") + 1] == "/p4d/work/psi3d=s3://p4d/kfp/run/psi3d"


def test_job_name_is_stable_per_run_and_valid():
    assert job_name("train_psi3d", "abc") == job_name("train_psi3d", "abc") != job_name("train_psi3d", "abd")
    assert len(job_name("train_psi3d", "x" * 100)) <= 63


def test_only_training_stages_become_pytorchjobs():
    rs, platform = _resolved("fit_flame", 1)
    with pytest.raises(PyTorchJobError, match="not a distributed"):
        render_pytorchjob(rs, platform, "x", [])
    rs, _ = _resolved("train_psi", 2)
    with pytest.raises(PyTorchJobError, match="no URI"):
        pod_args(rs, "{}", "v", {}, {})


@pytest.mark.parametrize("conditions, state", [
    ([], "Pending"),
    ([{"type": "Created", "status": "True"}], "Created"),
    ([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}], "Running"),
    ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}], "Succeeded"),
    ([{"type": "Running", "status": "True"}, {"type": "Failed", "status": "True"}], "Failed"),
])
def test_job_state(conditions, state):
    assert job_state({"status": {"conditions": conditions}}) == state


def test_k8s_template_is_the_rendered_manifest():
    text = (REPO / "k8s/templates/pytorchjob-train-psi.yaml").read_text()
    assert text == TEMPLATE_HEADER + yaml.safe_dump(template_manifest(), sort_keys=False), (
        "run `python -m pipelines.kubeflow.pytorchjob > k8s/templates/pytorchjob-train-psi.yaml`")


def test_kfp_task_and_pytorchjob_pod_get_the_same_decoration(tmp_path):
    """One description (pipelines/kubeflow/pod.py) renders both: the same env, secret keys, pool and shm."""
    from components.config import build_config
    from pipelines.kubeflow.pipeline import compile_pipeline
    from tests.pipelines.spec_graph import SpecGraph

    minio = {"endpoints": {"s3_endpoint_url": "http://minio.p4d.svc:9000"}}
    one_node = build_platform("paper", minio)
    graph = SpecGraph.load(compile_pipeline(build_config("paper"), tmp_path / "p.yaml", list(dag.STAGES), one_node))
    task = graph.task("train-psi3d")
    platform = build_platform("paper", {**minio, "stages": {"train_psi3d": {"nodes": 2}}})
    [rs] = dag.resolve([dag.STAGE_BY_NAME["train_psi3d"]], platform)
    uris = {n: f"s3://p4d/kfp/run/{n}" for n in (*rs.stage.inputs, *rs.stage.outputs)}
    job = render_pytorchjob(rs, platform, "j", pod_args(rs, "{}", "v1", uris, uris))
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    [c] = pod["containers"]

    plain = [(e["name"], e["value"]) for e in c["env"] if "value" in e]
    assert [(e["name"], e["value"]) for e in task.executor["env"]] == plain[:3]
    assert plain[0] == ("AWS_ENDPOINT_URL", "http://minio.p4d.svc:9000")
    assert plain[3:] == [("P4D_METRICS_ADDR", "0.0.0.0"), ("HOME", "/tmp")]  # trainer pods only
    kfp_secrets = [(s["secretName"], k["secretKey"], k["envVar"])
                   for s in task.platform["secretAsEnv"] for k in s["keyToEnv"]]
    job_secrets = [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"], e["name"])
                   for e in c["env"] if "valueFrom" in e]
    assert kfp_secrets == job_secrets and len(job_secrets) == 4
    assert task.platform["nodeSelector"]["labels"] == pod["nodeSelector"]
    assert task.platform["tolerations"] == pod["tolerations"]
    accel = task.executor["resources"]["accelerator"]
    assert (accel["type"], str(accel["count"])) == ("nvidia.com/gpu", c["resources"]["limits"]["nvidia.com/gpu"])
    [kfp_shm] = task.platform["emptyDirMounts"]
    [job_shm] = [v for v in pod["volumes"] if v["name"] == kfp_shm["volumeName"]]
    assert job_shm["emptyDir"] == {"medium": kfp_shm["medium"], "sizeLimit": kfp_shm["sizeLimit"]}
    assert {"name": kfp_shm["volumeName"], "mountPath": kfp_shm["mountPath"]} in c["volumeMounts"]

"""Multi-node training: render a Kubeflow PyTorchJob for a DAG stage, create it, wait for it.

Used by the ``launch_<stage>`` component when the platform asks for ``nodes > 1``: N pods (1 Master +
N-1 Workers) x ``gpus_per_node`` GPUs on the A100 pool, each running ``p4d pipeline exec``, which
syncs the inputs from S3, starts ``torchrun`` (rendezvous from the operator's PET_* env) with the
stage's ``p4d train ...`` argv (DeepSpeed inside), and uploads the outputs from node 0.
"""

from __future__ import annotations

import copy
import hashlib
import time
from typing import Any

from components.config.platform import PlatformConfig
from components.errors import P4DError
from pipelines.dag import PARAMS_TOKEN, ResolvedStage, kfp_task_name
from pipelines.kubeflow.pod import SHM_PATH, SHM_VOLUME, PodDecoration, stage_pod

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
WORKDIR = "/p4d/work"
APP_LABELS = {"app.kubernetes.io/part-of": "portrait4d", "app.kubernetes.io/component": "training"}
SERVICE_ACCOUNT = "p4d-training"  # k8s/base/rbac/workloads.yaml: no API rights, no token
# The "restricted" Pod Security Standard (the p4d namespace enforces it): non-root, seccomp RuntimeDefault, no
# privilege escalation, every capability dropped, read-only root (HOME and caches on the /tmp emptyDir).
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}


class PyTorchJobError(P4DError):
    """The training job failed or could not be created; the message names the job and the reason."""


def job_name(stage: str, run_id: str) -> str:
    """Stable per (run, stage): a retried launcher finds and waits on the same job instead of a duplicate."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return f"p4d-{kfp_task_name(stage)}-{digest}"


def pod_args(
    rs: ResolvedStage, params_text: str, data_version: str, inputs: dict[str, str], outputs: dict[str, str],
    pipeline_run: str = "",
) -> list[str]:
    """``p4d`` argv of every pod: exec syncs ``inputs``/``outputs`` (node -> URI) around the stage."""
    s = rs.stage
    local = {node: f"{WORKDIR}/{node}" for node in (*s.inputs, *s.outputs)}
    missing = [n for n in (*s.inputs, *s.outputs) if n not in {**inputs, **outputs}]
    if missing:
        raise PyTorchJobError(f"stage {s.name}: no URI for {missing}")
    args = ["pipeline", "exec", "--stage", s.name, "--params-text", params_text, "--data-version", data_version,
            "--pipeline-run", pipeline_run, "--nproc-per-node", str(rs.resources.gpus or 1)]
    for node in s.inputs:
        args += ["--sync-in", f"{local[node]}={inputs[node]}"]
    for node in s.outputs:
        # resume: a retried job first pulls what the previous attempt uploaded (checkpoints)
        args += ["--sync-in", f"{local[node]}={outputs[node]}", "--sync-out", f"{local[node]}={outputs[node]}"]
    values = {**local, "params": PARAMS_TOKEN, "device": rs.device}
    return [*args, "--", *s.render(values)]


# Only a PyTorchJob pod has these: rank 0 serves /metrics to the PodMonitor, and the read-only root sends
# torch/DeepSpeed/Triton kernel caches to the /tmp emptyDir.
TRAINER_ENV = (("P4D_METRICS_ADDR", "0.0.0.0"), ("HOME", "/tmp"))


def _env(pod: PodDecoration) -> list[dict]:
    env = [{"name": name, "value": value} for name, value in (*pod.env, *TRAINER_ENV)]
    for s in pod.secrets:
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": key}}} for key, var in s.key_to_env]
    return env


def pod_template(rs: ResolvedStage, platform: PlatformConfig, args: list[str]) -> dict:
    pod = stage_pod(rs, platform)
    limits = {"cpu": pod.cpu, "memory": pod.memory}
    spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [
            {
                "name": "pytorch",  # the training operator looks for this container name
                "image": rs.image,
                "command": ["p4d"],
                "args": args,
                "env": _env(pod),
                "resources": {"requests": dict(limits), "limits": limits},
                "ports": [{"name": "metrics", "containerPort": platform.pytorchjob.metrics_port}],
                "volumeMounts": [{"name": "work", "mountPath": WORKDIR}, {"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": copy.deepcopy(CONTAINER_SECURITY),
            }
        ],
        "volumes": [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    container = spec["containers"][0]
    if pod.gpu is not None:
        for quantities in container["resources"].values():
            quantities[pod.gpu.resource] = str(pod.gpu.count)
        spec["nodeSelector"] = dict([pod.gpu.node_selector])
        key, operator, value, effect = pod.gpu.toleration
        spec["tolerations"] = [{"key": key, "operator": operator, "value": value, "effect": effect}]
    if pod.shm:
        spec["volumes"].append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": pod.shm}})
        container["volumeMounts"].append({"name": SHM_VOLUME, "mountPath": SHM_PATH})
    return {"metadata": {"labels": {**APP_LABELS, "p4d/stage": kfp_task_name(rs.name)}}, "spec": spec}


def render_pytorchjob(rs: ResolvedStage, platform: PlatformConfig, name: str, args: list[str]) -> dict:
    if not rs.stage.distributed:
        raise PyTorchJobError(f"stage {rs.name} is not a distributed training stage")
    res = rs.resources
    template = pod_template(rs, platform, args)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if res.nodes > 1:
        replicas["Worker"] = {"replicas": res.nodes - 1, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)}
    run_policy: dict[str, Any] = {"cleanPodPolicy": "None", "backoffLimit": res.retries}
    if res.timeout_s:
        run_policy["activeDeadlineSeconds"] = res.timeout_s
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": platform.pytorchjob.namespace, "labels": dict(template["metadata"]["labels"])},
        "spec": {"nprocPerNode": str(res.gpus or 1), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
    }


def job_state(job: dict) -> str:
    """'Succeeded' / 'Failed' / the latest true condition (Created, Running, Restarting) / 'Pending'."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) if c.get("status") == "True"]
    types = [c.get("type") for c in conditions]
    for final in ("Succeeded", "Failed"):
        if final in types:
            return final
    return types[-1] if types else "Pending"


def _failure_message(job: dict) -> str:
    for c in job.get("status", {}).get("conditions", []):
        if c.get("type") == "Failed":
            return c.get("message") or c.get("reason") or "no reason given"
    return "no reason given"


def launch_and_wait(manifest: dict, poll_s: int = 30, timeout_s: int = 0) -> str:
    """Create the job (or adopt one of the same name) and block until it ends; returns 'Succeeded'."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
        print(f"created PyTorchJob {ns}/{name}", flush=True)
    except ApiException as err:
        if err.status != 409:
            raise PyTorchJobError(f"PyTorchJob {ns}/{name}: create failed ({err.status} {err.reason})") from None
        print(f"PyTorchJob {ns}/{name} exists (retry): waiting on it", flush=True)
    started = time.monotonic()
    last = None
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        state = job_state(job)
        if state != last:
            print(f"PyTorchJob {ns}/{name}: {state}", flush=True)
            last = state
        if state == "Succeeded":
            return state
        if state == "Failed":
            raise PyTorchJobError(f"PyTorchJob {ns}/{name} failed: {_failure_message(job)}")
        if timeout_s and time.monotonic() - started > timeout_s:
            raise PyTorchJobError(f"PyTorchJob {ns}/{name}: still {state} after {timeout_s}s")
        time.sleep(poll_s)



def template_manifest(stage: str = "train_psi", nodes: int = 2) -> dict:
    """The reviewed example in k8s/templates/ (paper profile, ``nodes`` x 8 A100, placeholder URIs)."""
    from pipelines.dag import STAGE_BY_NAME, resolve
    from pipelines.platform_config import build_platform

    platform = build_platform("paper", {"stages": {stage: {"nodes": nodes}}})
    [rs] = resolve([STAGE_BY_NAME[stage]], platform)
    uri = "s3://p4d/kfp/<run>/{}"
    args = pod_args(
        rs, "profile: paper\n", "<data-version>",
        {n: uri.format(n) for n in rs.stage.inputs}, {n: uri.format(n) for n in rs.stage.outputs}, "<run-id>",
    )
    return render_pytorchjob(rs, platform, job_name(stage, "<run-id>"), args)


TEMPLATE_HEADER = (
    "# A multi-node training job as the pipeline's launcher renders it (paper profile, 2 nodes x 8 A100).\n"
    "# GENERATED by `python -m pipelines.kubeflow.pytorchjob` from pipelines/platform_config.py; a test keeps it\n"
    "# in sync. Not applied by kustomize: the launcher creates one per run with the real artifact URIs.\n"
)

if __name__ == "__main__":
    import yaml

    print(TEMPLATE_HEADER + yaml.safe_dump(template_manifest(), sort_keys=False), end="")

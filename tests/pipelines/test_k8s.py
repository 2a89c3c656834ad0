"""k8s/: manifests parse, kustomizations are complete and build, no secret values, Triton and GPU pods as required."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from components.config.platform import IMAGE_VERSION, PlatformConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
PLATFORM = PlatformConfig()
SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", re.I)
QUEUE_METRIC = "nv_inference_queue_us_per_request"  # prometheus-adapter's name for the HPA's metric
LEAKS = [re.compile(p) for p in (r"AKIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                                 r"(?i)(password|secret|secret_access_key)[ \t]*[:=][ \t]*[\"']?[A-Za-z0-9+/]{8,}")]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[dict]:
    return [d for p in sorted(K8S.rglob("*.yaml")) for d in _docs(p)]


def _build(overlay: str) -> list[dict]:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with built-in kustomize) not installed")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_every_yaml_parses_and_kustomizations_list_existing_files():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        _docs(path)
    for kust in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kust.read_text())
        for entry in [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []))]:
            assert (kust.parent / entry).exists(), f"{kust}: {entry} does not exist"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlays_build(overlay):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _build(overlay)}
    assert {("Deployment", "triton"), ("Deployment", "mlflow"), ("StatefulSet", "p4d-postgres"),
            ("Deployment", "pushgateway"), ("HorizontalPodAutoscaler", "triton"), ("ServiceAccount", "p4d-pipeline-runner"),
            ("NetworkPolicy", "default-deny-ingress"), ("ServiceMonitor", "triton"), ("PodMonitor", "training")} <= kinds
    assert (("Deployment", "minio") in kinds) == (overlay == "dev")
    assert (("ExternalSecret", "p4d-s3-credentials") in kinds) == (overlay == "prod")


def test_no_secret_values_anywhere():
    assert not [d for d in _all_docs() if d.get("kind") == "Secret"], "Secrets come from the overlay's source, not YAML"
    for path in [*K8S.rglob("*"), *(REPO / "docker").iterdir(), REPO / "pipelines/compiled/portrait4d-paper.yaml",
                 REPO / ".dvc/config"]:
        if path.is_file():
            text = path.read_text()
            for leak in LEAKS:
                assert not leak.search(text), f"{path}: looks like a secret value ({leak.pattern})"

    def env_entries(node):
        if isinstance(node, dict):
            if "name" in node and ("value" in node or "valueFrom" in node) and len(node) <= 3:
                yield node
            for v in node.values():
                yield from env_entries(v)
        elif isinstance(node, list):
            for v in node:
                yield from env_entries(v)

    for doc in _all_docs():
        for env in env_entries(doc):
            if SECRET_ENV.search(str(env["name"])):
                assert "valueFrom" in env and "value" not in env, f"{env['name']} must come from a Secret"


def test_prod_secret_sources_cover_every_secret_the_platform_uses():
    referenced = {m for p in K8S.rglob("*.yaml") for m in re.findall(r"secretKeyRef: \{name: ([\w-]+)", p.read_text())}
    referenced |= {PLATFORM.secrets.s3, PLATFORM.secrets.mlflow, "p4d-mlflow-auth"}
    external = {d["spec"]["target"]["name"] for d in _docs(K8S / "overlays/prod/external-secrets.yaml")}
    assert referenced <= external
    dev_doc = (K8S / "overlays/dev/README.md").read_text()
    assert all(f"create secret generic {name}" in dev_doc for name in referenced)


def test_deploy_task_account_has_no_kubernetes_rights_of_its_own():
    """`p4d deploy rollout` talks HTTP only (S3, Triton, MLflow): its account is bound to nothing but the
    Role every KFP step pod needs, which grants no write to any workload and reads only named objects."""
    docs = _build("prod")
    [deployer] = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "p4d-deployer"]
    bound = [b for b in docs if b["kind"] == "RoleBinding"
             and any(s["name"] == deployer["metadata"]["name"] for s in b["subjects"])]
    assert [b["roleRef"]["name"] for b in bound] == ["p4d-kfp-step"]
    [step] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "p4d-kfp-step"]
    for rule in step["rules"]:
        assert set(rule["verbs"]) <= {"get", "create", "patch"}
        if rule["apiGroups"] == [""]:
            assert rule["verbs"] == ["get"] and rule["resourceNames"], rule
        else:
            assert rule["resources"] == ["workflowtaskresults"]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def _triton(docs):
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"]
    return dep["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_triton_ports_probes_user_and_autoscaling(overlay):
    docs = _build(overlay)
    pod = _triton(docs)
    [c] = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    [hpa] = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == QUEUE_METRIC
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "triton"]
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [8000, 8001, 8002]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_triton_serves_the_s3_repository_in_explicit_mode_from_the_project_image(overlay):
    docs = _build(overlay)
    pod = _triton(docs)
    [c] = pod["containers"]
    assert c["image"] == f"ghcr.io/portrait4d-mlops/p4d-triton:{IMAGE_VERSION}"
    args = c["args"]
    assert {"--model-control-mode=explicit", "--load-model=portrait4d", "--load-model=portrait4d_session",
            "--strict-readiness=true", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(args)
    assert not any(a.startswith("--model-control-mode=") and a.endswith("poll") for a in args)
    env = {e["name"]: e for e in c["env"]}
    assert "--model-repository=$(P4D_MODEL_REPOSITORY)" in args
    repository = env["P4D_MODEL_REPOSITORY"]["value"]
    expected = {"dev": "s3://http://minio.p4d.svc.cluster.local:9000/p4d/triton/model_repository",
                "prod": "s3://p4d/triton/model_repository"}
    assert repository == expected[overlay]
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == PLATFORM.secrets.s3
    # read-only root: Triton's local copy of the loaded versions and the backend's caches live on emptyDirs
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"] and mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    gpus = c["resources"]["limits"].get(PLATFORM.gpu_pool.gpu_resource)
    assert gpus == ("1" if overlay == "prod" else None)
    # every replica is reachable by DNS (ready or not) for the rollout's per-replica load
    [replicas] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "triton-replicas"]
    assert replicas["spec"]["clusterIP"] == "None" and replicas["spec"]["publishNotReadyAddresses"] is True
    assert replicas["spec"]["selector"] == {"app.kubernetes.io/name": "triton"}


def test_prometheus_adapter_serves_queue_microseconds_per_request():
    """The adapter rule, with its template filled in as prometheus-adapter does, is valid PromQL computing
    rate(queue µs) / rate(successful requests) per pod, and is published under the name the HPA reads."""
    [cm] = _docs(K8S / "base/monitoring/prometheus-adapter-rules.yaml")
    [rule] = yaml.safe_load(cm["data"]["rules.yaml"])["rules"]
    assert rule["name"]["as"] == QUEUE_METRIC
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'namespace="p4d",pod=~"triton-a|triton-b"')
    query = query.replace("<<.GroupBy>>", "pod")
    expr = promql_parser.parse(query)
    assert str(expr.op) == "/"

    def rate_sum(node) -> str:
        assert str(node.op) == "sum" and node.modifier.labels == ["pod"]
        assert node.expr.func.name == "rate"
        [window] = node.expr.args
        assert window.range.total_seconds() == 60
        return window.vector_selector.name

    assert rate_sum(expr.lhs) == "nv_inference_queue_duration_us"
    assert expr.rhs.func.name == "clamp_min"  # an idle pod reads 0, not NaN
    denominator, floor = expr.rhs.args
    assert rate_sum(denominator) == "nv_inference_request_success" and 0 < floor.val < 1e-3


def _pod_specs(doc):
    if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["spec"]
    if doc.get("kind") == "PyTorchJob":
        for replica in doc["spec"]["pytorchReplicaSpecs"].values():
            yield replica["template"]["spec"]


def test_gpu_pods_select_the_a100_pool_and_tolerate_its_taint():
    pool = PLATFORM.gpu_pool
    docs = [*_build("prod"), *_build("dev"), *_docs(K8S / "templates/pytorchjob-train-psi.yaml")]
    gpu_pods = 0
    for doc in docs:
        for pod in _pod_specs(doc):
            wants_gpu = any(pool.gpu_resource in c.get("resources", {}).get("limits", {}) for c in pod["containers"])
            on_pool = pod.get("nodeSelector", {}).get(pool.label_key) == pool.label_value
            assert wants_gpu == on_pool, doc["metadata"]["name"]
            if wants_gpu:
                gpu_pods += 1
                assert {"key": pool.taint_key, "operator": "Equal", "value": pool.taint_value,
                        "effect": pool.taint_effect} in pod["tolerations"]
    assert gpu_pods >= 3  # prod Triton + PyTorchJob Master and Worker


def test_pipeline_runner_may_create_pytorchjobs_and_training_pods_are_scraped():
    docs = _docs(K8S / "base/rbac/pipeline-runner.yaml")
    [sa] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == PLATFORM.pytorchjob.service_account
    [role] = [d for d in docs if d["kind"] == "Role"]
    # exactly what the launcher calls (pipelines/kubeflow/pytorchjob.py: create, then get to poll)
    assert role["rules"] == [{"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get"]}]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    [podmon] = [d for d in _docs(K8S / "base/monitoring/servicemonitors.yaml") if d["kind"] == "PodMonitor"]
    [job] = _docs(K8S / "templates/pytorchjob-train-psi.yaml")
    labels = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    assert podmon["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": PLATFORM.pytorchjob.metrics_port} in ports

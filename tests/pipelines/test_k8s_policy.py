"""k8s/ against maintained checkers: Kubernetes schemas (kubernetes-validate) and pod-security / RBAC /
NetworkPolicy rules (checkov), on what `kubectl kustomize` renders for each overlay and on the PyTorchJob pods.

checkov runs from its own virtual environment (.venv/checkov, pinned in k8s/policy/checkov-requirements.txt):
its pins cannot coexist with the project's (see that file). It runs offline: no platform API key, no policy
download (--skip-download, BC_SKIP_MAPPING), no update check, and a proxy that refuses every connection, so a
network call fails the run instead of hanging it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.pipelines.test_k8s import K8S, PLATFORM, REPO, _build, _docs

CHECKOV = REPO / ".venv" / "checkov" / "bin" / "checkov"
KUBERNETES_VERSION = "1.32"  # the version the namespace's enforce label pins (k8s/base/namespace.yaml)
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "ExternalSecret"}  # no upstream schema ships for these
OVERLAYS = ["dev", "prod"]

# The checks that must pass, and what each means. The restricted Pod Security Standard:
PSS_CHECKS = {
    "CKV_K8S_16": "no privileged container",
    "CKV_K8S_17": "no host PID namespace",
    "CKV_K8S_18": "no host IPC namespace",
    "CKV_K8S_19": "no host network",
    "CKV_K8S_20": "allowPrivilegeEscalation: false",
    "CKV_K8S_23": "runAsNonRoot (no root container)",
    "CKV_K8S_25": "no added capability",
    "CKV_K8S_26": "no hostPort",
    "CKV_K8S_27": "no docker socket hostPath",
    "CKV_K8S_28": "NET_RAW dropped",
    "CKV_K8S_31": "seccomp profile RuntimeDefault",
    "CKV_K8S_37": "capabilities: drop ALL",
    "CKV_K8S_39": "no CAP_SYS_ADMIN",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_29": "pod security context set",
    "CKV_K8S_30": "container security context set",
}
# Service accounts, RBAC and network isolation:
ACCESS_CHECKS = {
    "CKV_K8S_38": "no service-account token where none is needed",
    "CKV_K8S_41": "the default service account is not used",
    "CKV_K8S_42": "nothing is bound to the default service account",
    "CKV_K8S_49": "no wildcard in Roles",
    "CKV_K8S_155": "no control over admission webhooks",
    "CKV_K8S_156": "no approving of CertificateSigningRequests",
    "CKV_K8S_157": "no bind of (Cluster)RoleBindings",
    "CKV_K8S_158": "no escalate on (Cluster)Roles",
    "CKV2_K8S_1": "a RoleBinding cannot escalate to another ServiceAccount or Node",
    "CKV2_K8S_2": "no create on pods/exec or nodes/proxy",
    "CKV2_K8S_3": "no impersonate",
    "CKV2_K8S_4": "no write to services/status (CVE-2020-8554)",
    "CKV2_K8S_5": "no read of all Secrets",
    "CKV2_K8S_6": "every pod is selected by a NetworkPolicy",
    "CKV_K8S_21": "nothing in the default namespace",
}
# Operability:
HYGIENE_CHECKS = {
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
    "CKV_K8S_10": "CPU request",
    "CKV_K8S_11": "CPU limit",
    "CKV_K8S_12": "memory request",
    "CKV_K8S_13": "memory limit",
    "CKV_K8S_14": "image tag fixed (not latest / blank)",
}
CHECKS = {**PSS_CHECKS, **ACCESS_CHECKS, **HYGIENE_CHECKS}
# Not run, on purpose: CKV_K8S_15 (imagePullPolicy Always: the tags are immutable versions), CKV_K8S_43 (image
# digests: tags are pinned; digests are for the release pipeline to add), CKV_K8S_35 (Secrets as files rather
# than env: MLflow, Triton and boto3 read credentials from the environment), CKV_K8S_40 (UID >= 10000: not a
# Pod Security Standard rule; Postgres' alpine image must run as its own uid 70, the others as their image user).
# Checks of the pod spec every workload must have been evaluated on (a check that silently did not apply
# to a pod would otherwise look like a pass):
PER_POD = ["CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37",
           "CKV_K8S_38"]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "Pod")


def _checkov(manifest: Path, checks: list[str]) -> dict:
    """checkov's JSON report on one multi-document manifest, offline."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: create it with `python3 -m venv .venv/checkov && "
                    f".venv/checkov/bin/pip install -r k8s/policy/checkov-requirements.txt` (scripts/env.sh)")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
           "LOG_LEVEL": "WARNING"}
    env.pop("BC_API_KEY", None)
    out = subprocess.run(
        [str(CHECKOV), "--file", str(manifest), "--framework", "kubernetes", "--skip-download", "--compact",
         "--output", "json", "--check", ",".join(checks)],
        capture_output=True, text=True, timeout=300, env=env, cwd=manifest.parent,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1 = some check failed; anything else is a crash
    report = json.loads(out.stdout)
    assert isinstance(report, dict) and "results" in report, f"checkov found nothing to check in {manifest}"
    return report


def _failures(report: dict) -> list[str]:
    return [f"{r['check_id']} ({r['check_name']}) on {r['resource']}" for r in report["results"]["failed_checks"]]


def _passed(report: dict) -> set[tuple[str, str]]:
    return {(r["check_id"], r["resource"]) for r in report["results"]["passed_checks"]}


def _write(tmp_path: Path, name: str, docs: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _pytorchjob_pods() -> list[dict]:
    """Each replica of the reviewed PyTorchJob as the Pod the training operator creates from it."""
    [job] = _docs(K8S / "templates/pytorchjob-train-psi.yaml")
    pods = []
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        meta = {**replica["template"]["metadata"], "name": f"{job['metadata']['name']}-{role.lower()}-0",
                "namespace": job["metadata"]["namespace"]}
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": replica["template"]["spec"]})
    return pods


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_matches_the_kubernetes_schema(overlay):
    """Strict schema validation: unknown fields (a misspelt securityContext key) fail, not just wrong types."""
    unchecked = set()
    for doc in _build(overlay):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add(doc["kind"])
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} at {'.'.join(map(str, err.path))}: "
                        f"{err.message}")
    assert unchecked <= CRD_KINDS, f"kinds nothing validated: {unchecked - CRD_KINDS}"


def test_pytorchjob_pods_match_the_kubernetes_schema():
    for pod in _pytorchjob_pods():
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_schema_validation_is_strict():
    """The validator really rejects an unknown field (here a classic camel-case slip), or the test above is empty."""
    [dep] = [d for d in _build("dev") if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"]
    broken = copy.deepcopy(dep)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_pod_security_rbac_and_network_checks(overlay, tmp_path):
    docs = _build(overlay)
    report = _checkov(_write(tmp_path, f"{overlay}.yaml", docs), sorted(CHECKS))
    assert _failures(report) == []
    passed = _passed(report)
    workloads = [f"{d['kind']}.{d['metadata']['namespace']}.{d['metadata']['name']}" for d in docs
                 if d["kind"] in WORKLOAD_KINDS]
    assert len(workloads) >= (6 if overlay == "dev" else 4)
    missing = [(check, w) for w in workloads for check in PER_POD if (check, w) not in passed]
    assert missing == [], f"checks that did not evaluate a workload: {missing}"
    roles = [f"Role.p4d.{d['metadata']['name']}" for d in docs if d["kind"] == "Role"]
    bindings = [f"RoleBinding.p4d.{d['metadata']['name']}" for d in docs if d["kind"] == "RoleBinding"]
    assert len(roles) == len(bindings) == 2
    assert all(("CKV_K8S_49", r) in passed for r in roles)
    assert all({("CKV2_K8S_1", b), ("CKV2_K8S_5", b), ("CKV_K8S_42", b)} <= passed for b in bindings)
    # the graph check reports the pods it found covered by a NetworkPolicy as Pod.<ns>.<workload>.<labels>
    covered = {resource for check, resource in passed if check == "CKV2_K8S_6"}
    assert all(any(c.startswith(f"Pod.{w.split('.', 1)[1]}.") for c in covered) for w in workloads)


def test_pytorchjob_pods_pass_pod_security_checks(tmp_path):
    report = _checkov(_write(tmp_path, "pytorchjob-pods.yaml", _pytorchjob_pods()), sorted(PSS_CHECKS) + ["CKV_K8S_38"])
    assert _failures(report) == []


def test_checkov_flags_a_pod_that_breaks_the_restricted_profile(tmp_path):
    """The checker and its wiring catch each violation we fixed (seccomp, capabilities, escalation, root,
    writable root filesystem, default service account with a token): a control run on a broken Triton pod."""
    [dep] = [d for d in _build("dev") if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"]
    broken = copy.deepcopy(dep)
    pod = broken["spec"]["template"]["spec"]
    for key in ("seccompProfile", "runAsNonRoot", "runAsUser"):
        pod["securityContext"].pop(key)
    for key in ("serviceAccountName", "automountServiceAccountToken"):
        pod.pop(key)
    pod["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": True}
    report = _checkov(_write(tmp_path, "broken.yaml", [broken]), sorted(PSS_CHECKS) + ["CKV_K8S_38"])
    failed = {r["check_id"] for r in report["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37",
            "CKV_K8S_38"} <= failed


def test_namespace_enforces_the_restricted_standard():
    [ns] = [d for d in _build("prod") if d["kind"] == "Namespace"]
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == f"v{KUBERNETES_VERSION}"


def _pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_workload_has_its_own_service_account_without_a_token(overlay):
    docs = _build(overlay)
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    owners: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec, name = _pod_spec(doc), doc["metadata"]["name"]
        account = spec["serviceAccountName"]
        assert account in accounts, f"{name}: ServiceAccount {account} is not defined"
        assert owners.setdefault(account, name) == name, f"{account} is shared by {owners[account]} and {name}"
        assert spec["automountServiceAccountToken"] is False
        assert accounts[account]["automountServiceAccountToken"] is False
    assert PLATFORM.pytorchjob.service_account in accounts and "p4d-training" in accounts


def test_mlflow_gets_the_database_password_from_the_environment_not_its_command_line():
    [dep] = [d for d in _build("prod") if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    [c] = _pod_spec(dep)["containers"]
    argv = " ".join([*c.get("command", []), *c.get("args", [])])
    assert "$(" not in argv and "PASSWORD" not in argv.upper()
    [uri] = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--backend-store-uri=")]
    assert uri == "postgresql://p4d-postgres:5432/mlflow"  # no user:password@ part
    env = {e["name"]: e for e in c["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "p4d-postgres-credentials",
                                                               "key": "POSTGRES_PASSWORD"}
    assert env["PGUSER"]["valueFrom"]["secretKeyRef"]["name"] == "p4d-postgres-credentials"


def _policies(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}


def _peers(rules: list[dict]) -> list[dict]:
    return [peer for rule in rules for peer in rule.get("from", rule.get("to", []))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_only_the_platform_flows(overlay):
    policies = _policies(_build(overlay))
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert policies["default-deny-egress"] == {"podSelector": {}, "policyTypes": ["Egress"]}
    # egress open to every pod: DNS only
    open_to_all = [n for n, p in policies.items() if p["podSelector"] == {} and p.get("egress")]
    assert open_to_all == ["allow-dns"]
    assert {port["port"] for rule in policies["allow-dns"]["egress"] for port in rule["ports"]} == {53}
    # Postgres: only MLflow may connect, and only to 5432
    [rule] = policies["postgres"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    # MLflow reaches Postgres and nothing else in-cluster (its S3 egress is the overlay's object-store policy)
    assert _peers(policies["mlflow"]["egress"]) == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}}}]
    # Triton: inference ports from client namespaces, HTTP from the deploy step, metrics from Prometheus only
    triton = {tuple(sorted(p["port"] for p in r["ports"])): r["from"] for r in policies["triton"]["ingress"]}
    assert set(triton) == {(8000, 8001), (8000,), (8002,)}
    assert triton[(8000, 8001)] == [{"namespaceSelector": {"matchLabels": {"p4d.io/triton-client": "true"}}}]
    assert triton[(8002,)] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # nothing may connect to a pipeline step pod
    assert policies["pipeline-steps"]["ingress"] == []
    # object store: MinIO in dev, S3 over HTTPS (never the metadata endpoint) in prod
    if overlay == "dev":
        assert {"minio", "object-store-clients-to-minio", "pipeline-steps-to-minio", "training-to-minio"} <= set(policies)
    else:
        blocks = [peer["ipBlock"] for peer in _peers(policies["object-store-clients-to-s3"]["egress"])]
        assert blocks == [{"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}]
        assert not any("minio" in name for name in policies)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_store_client_is_labelled_for_the_object_store_policy(overlay):
    """The workloads that read or write S3 carry the label the object-store egress policy selects."""
    docs = _build(overlay)
    s3_users = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Job")
                and any(e.get("name") == "AWS_ACCESS_KEY_ID" for c in _pod_spec(d)["containers"]
                        for e in c.get("env", []))} - {"minio"}
    labelled = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Job")
                and d["spec"]["template"]["metadata"]["labels"].get("p4d.io/object-store-client") == "true"}
    assert s3_users == labelled and {"mlflow", "triton"} <= labelled

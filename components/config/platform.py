"""The ``platform`` section: where and how the stages run on the cluster: images, the A100 node pool,
per-stage resources, secrets.

The Kubeflow pipeline,
the PyTorchJob manifests, ``dvc.yaml`` and the k8s overlays all read these names, so a node-pool
label, a secret name or an image tag is written once.

Profiles: ``paper`` = A100-80GB pool, 8 GPUs per training node; ``tiny`` = CPU only (no GPU, no
node pool), small requests, so the same pipeline compiles for a laptop-sized kind/minikube cluster
(its values: ``components/config/profiles.py``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import Strict
from components.errors import ConfigError

# Kubernetes quantities ("4", "500m", "16Gi"): checked so a typo fails at compile time, not in the cluster.
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
IMAGE_VERSION = "0.1.0"  # the project version; images are tagged with it (never `latest`)


class Images(Strict):
    gpu: str = Field(
        f"ghcr.io/portrait4d-mlops/p4d-gpu:{IMAGE_VERSION}", description="CUDA image for GPU stages (docker/Dockerfile.gpu)"
    )
    cpu: str = Field(
        f"ghcr.io/portrait4d-mlops/p4d-cpu:{IMAGE_VERSION}", description="slim image for CPU stages (docker/Dockerfile.cpu)"
    )

    @field_validator("gpu", "cpu")
    @classmethod
    def _pinned(cls, ref: str) -> str:
        name, _, tag = ref.rpartition(":")
        if not name or "/" in tag or not tag or tag == "latest":
            raise ValueError(f"image {ref!r} must carry an explicit version tag (not 'latest')")
        return ref


class GpuNodePool(Strict):
    """The A100 pool: GPU pods select it by label and tolerate its taint (nothing else lands there)."""

    label_key: str = Field("nvidia.com/gpu.product", description="node label (set by NVIDIA GPU feature discovery)")
    label_value: str = Field("NVIDIA-A100-SXM4-80GB", description="value selecting A100-80GB nodes")
    taint_key: str = Field("nvidia.com/gpu", description="taint on the pool's nodes")
    taint_value: str = Field("present")
    taint_effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    gpus_per_node: int = Field(8, gt=0, description="GPUs per node (PyTorchJob: nodes x this many)")
    gpu_resource: str = Field("nvidia.com/gpu", description="extended resource name of a GPU")


class SecretRefs(Strict):
    """Kubernetes Secret NAMES and key -> env mappings. Values never appear in this repository."""

    s3: str = Field("p4d-s3-credentials", description="Secret with the object-store credentials")
    s3_env: dict[str, str] = Field(
        {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        description="secret key -> environment variable",
    )
    mlflow: str = Field("p4d-mlflow-credentials", description="Secret with the MLflow server credentials")
    mlflow_env: dict[str, str] = Field(
        {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
    )


class Endpoints(Strict):
    """In-cluster service addresses (plain config; credentials come from SecretRefs)."""

    s3_endpoint_url: str = Field("", description="AWS_ENDPOINT_URL inside pods ('' = AWS S3; dev: in-cluster MinIO)")
    mlflow_tracking_uri: str = Field("http://mlflow.p4d.svc.cluster.local:5000")
    pushgateway_url: str = Field("http://pushgateway.p4d.svc.cluster.local:9091")


class StageResources(Strict):
    cpu: str = Field("2", description="CPU request = limit")
    memory: str = Field("8Gi", description="memory request = limit")
    gpus: int = Field(0, ge=0, description="GPUs per pod (0 = CPU stage, no GPU pool)")
    shm: str | None = Field(None, description="size of the in-memory /dev/shm emptyDir (data-loader workers)")
    retries: int = Field(0, ge=0, le=10, description="KFP retry count (preemption / transient faults)")
    nodes: int = Field(1, ge=1, description="training nodes; >1 runs as a PyTorchJob of nodes x gpus")
    timeout_s: int = Field(0, ge=0, description="pod active deadline (0 = none)")

    @field_validator("cpu", "memory", "shm")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '4', '500m', '16Gi')")
        return value


class PyTorchJobSection(Strict):
    namespace: str = Field("p4d", description="namespace of training jobs (kubeflow training-operator)")
    service_account: str = Field("p4d-pipeline-runner", description="SA allowed to create PyTorchJobs")
    poll_s: int = Field(30, gt=0, description="status poll interval of the launcher")
    metrics_port: int = Field(9400, gt=0, le=65535, description="Prometheus port of rank 0 (the PodMonitor scrapes it)")


class PlatformConfig(Strict):
    images: Images = Images()
    gpu_pool: GpuNodePool = GpuNodePool()
    secrets: SecretRefs = SecretRefs()
    endpoints: Endpoints = Endpoints()
    pytorchjob: PyTorchJobSection = PyTorchJobSection()
    shard_parallelism: int = Field(16, gt=0, description="ParallelFor: shards processed at once")
    pipeline_root_prefix: str = Field("kfp/", description="KFP artifact root under the storage bucket/prefix")
    # the prefixes below are under s3://{storage.bucket}/{storage.prefix}
    raw_images_prefix: str = Field("raw/images/", description="new photos land here (sub-prefixes = shards)")
    raw_clips_prefix: str = Field("raw/clips/", description="new video clips land here (sub-prefixes = shards)")
    raw_clips_test_prefix: str = Field("raw/clips_test/", description="held-out test clips (evaluate; never trained on)")
    assets_prefix: str = Field("assets/", description="the licensed asset bundle")
    marker_key: str = Field(
        "pipeline/last-success.json", description="data version of the last successful run (scheduled runs)"
    )
    stages: dict[str, StageResources] = Field(
        default_factory=lambda: {
            "fit_flame": StageResources(cpu="8", memory="32Gi", gpus=1, shm="8Gi", retries=2),
            "fit_flame_video": StageResources(cpu="8", memory="32Gi", gpus=1, shm="8Gi", retries=2),
            "fit_flame_test": StageResources(cpu="8", memory="32Gi", gpus=1, shm="8Gi", retries=2),
            "synthesize": StageResources(cpu="8", memory="64Gi", gpus=1, shm="16Gi", retries=2),
            # one full 8x A100-80GB node, as in the paper (8 days each); nodes > 1 -> PyTorchJob
            "train_psi3d": StageResources(cpu="64", memory="480Gi", gpus=8, shm="64Gi", retries=3),
            "train_psi": StageResources(cpu="64", memory="480Gi", gpus=8, shm="64Gi", retries=3),
            "evaluate": StageResources(cpu="8", memory="64Gi", gpus=1, shm="8Gi", retries=2),
            "register": StageResources(cpu="1", memory="2Gi", retries=2),
            "deploy": StageResources(cpu="2", memory="8Gi", retries=2),
        },
        description="resources per DAG stage (keys = stage names in pipelines/dag.py)",
    )
    control: StageResources = Field(
        StageResources(cpu="1", memory="2Gi"), description="the small CPU steps (data version, gather, launcher)"
    )

    @model_validator(mode="after")
    def _gpu_stages_fit_a_node(self) -> "PlatformConfig":
        for name, res in self.stages.items():
            if res.gpus > self.gpu_pool.gpus_per_node:
                raise ValueError(
                    f"stages.{name}.gpus={res.gpus} exceeds gpu_pool.gpus_per_node={self.gpu_pool.gpus_per_node}"
                )
        return self

    def resources(self, stage: str) -> StageResources:
        try:
            return self.stages[stage]
        except KeyError:
            raise ConfigError(
                f"platform.stages: no resources for stage {stage!r} (have: {', '.join(sorted(self.stages))})"
            ) from None

    def image_for(self, res: StageResources) -> str:
        return self.images.gpu if res.gpus else self.images.cpu

"""What a stage pod gets besides its command, as data: resources, env, secrets as env, GPU pool, /dev/shm.

A stage runs either as one KFP task (``task_config.py`` turns this description into kfp-kubernetes calls)
or as the pods of a PyTorchJob (``pytorchjob.py`` turns it into the pod template's fields). Both render from
:func:`stage_pod` / :func:`control_pod`, so which env a pod sees, which secret keys it maps and how it lands
on the A100 pool are decided once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.config.platform import GpuNodePool, PlatformConfig, StageResources
from pipelines.dag import ResolvedStage

SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"


@dataclass(frozen=True)
class SecretEnv:
    """One Kubernetes Secret (by NAME; its values live only in the cluster) exposed as env variables."""

    secret: str
    key_to_env: tuple[tuple[str, str], ...]  # (secret key, env variable), in the config's order


@dataclass(frozen=True)
class GpuPlacement:
    """``count`` GPUs of the pool's resource, the pool's node selector and the toleration of its taint."""

    resource: str
    count: int
    node_selector: tuple[str, str]  # (label key, label value)
    toleration: tuple[str, str, str, str]  # (key, operator, value, effect)


@dataclass(frozen=True)
class PodDecoration:
    cpu: str  # request = limit
    memory: str  # request = limit
    env: tuple[tuple[str, str], ...]  # plain (name, value) pairs, in the order the pod lists them
    secrets: tuple[SecretEnv, ...]
    gpu: GpuPlacement | None  # None: a CPU pod, off the GPU pool
    shm: str | None  # size of the in-memory /dev/shm emptyDir; None: the container default (64 MiB)


def endpoint_env(platform: PlatformConfig) -> tuple[tuple[str, str], ...]:
    """The in-cluster endpoints every pod talks to (unset AWS_ENDPOINT_URL = AWS S3)."""
    e = platform.endpoints
    s3 = (("AWS_ENDPOINT_URL", e.s3_endpoint_url),) if e.s3_endpoint_url else ()
    return (*s3, ("MLFLOW_TRACKING_URI", e.mlflow_tracking_uri), ("PUSHGATEWAY_URL", e.pushgateway_url))


def secret_env(platform: PlatformConfig, which: tuple[str, ...]) -> tuple[SecretEnv, ...]:
    """The secrets named by a stage's ``secrets`` ("s3" / "mlflow"), each with its key -> env map."""
    refs = platform.secrets
    by_kind = {"s3": (refs.s3, refs.s3_env), "mlflow": (refs.mlflow, refs.mlflow_env)}
    return tuple(SecretEnv(by_kind[kind][0], tuple(by_kind[kind][1].items())) for kind in which)


def gpu_placement(pool: GpuNodePool, count: int) -> GpuPlacement:
    return GpuPlacement(pool.gpu_resource, count, (pool.label_key, pool.label_value),
                        (pool.taint_key, "Equal", pool.taint_value, pool.taint_effect))


def stage_pod(rs: ResolvedStage, platform: PlatformConfig) -> PodDecoration:
    """A DAG stage's pod: its resources, the GPU pool when it has GPUs, shm when configured."""
    res: StageResources = rs.resources
    gpu = gpu_placement(platform.gpu_pool, res.gpus) if rs.uses_gpu_pool else None
    return PodDecoration(res.cpu, res.memory, endpoint_env(platform), secret_env(platform, rs.stage.secrets), gpu,
                         res.shm)


def control_pod(platform: PlatformConfig, secrets: tuple[str, ...] = ()) -> PodDecoration:
    """A small CPU step of the pipeline itself (prepare, gather, mark): no GPU pool, no shm."""
    res = platform.control
    return PodDecoration(res.cpu, res.memory, endpoint_env(platform), secret_env(platform, secrets), None, None)

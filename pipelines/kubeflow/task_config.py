"""Platform settings applied to a Kubeflow task, one pure function per feature (kfp-kubernetes style).

GPU stages get the A100 pool (node selector + toleration of its taint), ``nvidia.com/gpu`` limits and an
in-memory ``/dev/shm``; every stage gets CPU/memory requests = limits, the secrets it needs as env (by
Secret NAME; values live only in the cluster), the in-cluster endpoints, its retry policy and caching.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from pipelines.dag import ResolvedStage
from components.platform import Endpoints, GpuNodePool, PlatformConfig, SecretRefs, StageResources

SHM_VOLUME = "dshm"


def set_resources(task: PipelineTask, res: StageResources) -> PipelineTask:
    return task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu).set_memory_request(res.memory).set_memory_limit(res.memory)


def use_gpu_pool(task: PipelineTask, gpus: int, pool: GpuNodePool) -> PipelineTask:
    task.set_accelerator_type(pool.gpu_resource).set_accelerator_limit(gpus)
    kubernetes.add_node_selector(task, label_key=pool.label_key, label_value=pool.label_value)
    kubernetes.add_toleration(
        task, key=pool.taint_key, operator="Equal", value=pool.taint_value, effect=pool.taint_effect
    )
    return task


def mount_shm(task: PipelineTask, size: str) -> PipelineTask:
    """PyTorch data-loader workers share tensors through /dev/shm; the container default is 64 MiB."""
    return kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit=size)


def use_secrets(task: PipelineTask, which: tuple[str, ...], secrets: SecretRefs) -> PipelineTask:
    for kind in which:
        name, env = {"s3": (secrets.s3, secrets.s3_env), "mlflow": (secrets.mlflow, secrets.mlflow_env)}[kind]
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=env)
    return task


def set_endpoints(task: PipelineTask, endpoints: Endpoints) -> PipelineTask:
    if endpoints.s3_endpoint_url:  # unset = AWS S3
        task.set_env_variable("AWS_ENDPOINT_URL", endpoints.s3_endpoint_url)
    task.set_env_variable("MLFLOW_TRACKING_URI", endpoints.mlflow_tracking_uri)
    return task.set_env_variable("PUSHGATEWAY_URL", endpoints.pushgateway_url)


def set_retry(task: PipelineTask, retries: int) -> PipelineTask:
    """Exponential backoff from 1 min: long enough for a preempted node to be replaced."""
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
    return task


def configure_stage(task: PipelineTask, rs: ResolvedStage, platform: PlatformConfig) -> PipelineTask:
    """Everything a stage pod needs; caching stays on (the cache key is every input of the task)."""
    res = rs.resources
    task.set_display_name(rs.name)
    set_resources(task, res)
    if rs.uses_gpu_pool:
        use_gpu_pool(task, res.gpus, platform.gpu_pool)
    if res.shm:
        mount_shm(task, res.shm)
    use_secrets(task, rs.stage.secrets, platform.secrets)
    set_endpoints(task, platform.endpoints)
    set_retry(task, res.retries)
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)
    return task.set_caching_options(True)


def configure_control(
    task: PipelineTask, platform: PlatformConfig, secrets: tuple[str, ...] = (), cache: bool = True
) -> PipelineTask:
    """A small CPU step: no GPU pool, no shm, no retries."""
    set_resources(task, platform.control)
    use_secrets(task, secrets, platform.secrets)
    set_endpoints(task, platform.endpoints)
    return task.set_caching_options(cache)

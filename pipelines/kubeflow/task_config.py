"""Platform settings applied to a Kubeflow task, one pure function per feature (kfp-kubernetes style).

What a pod gets (resources, env, secrets by NAME, GPU pool, /dev/shm) is decided in ``pod.py``; this module
only renders that description as kfp-kubernetes calls, plus what only a KFP task has: its retry policy,
timeout and caching.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components.config.platform import PlatformConfig
from pipelines.dag import ResolvedStage
from pipelines.kubeflow.pod import SHM_PATH, SHM_VOLUME, GpuPlacement, PodDecoration, SecretEnv, control_pod, stage_pod


def set_resources(task: PipelineTask, pod: PodDecoration) -> PipelineTask:
    return task.set_cpu_request(pod.cpu).set_cpu_limit(pod.cpu).set_memory_request(pod.memory).set_memory_limit(pod.memory)


def use_gpu_pool(task: PipelineTask, gpu: GpuPlacement) -> PipelineTask:
    task.set_accelerator_type(gpu.resource).set_accelerator_limit(gpu.count)
    kubernetes.add_node_selector(task, label_key=gpu.node_selector[0], label_value=gpu.node_selector[1])
    key, operator, value, effect = gpu.toleration
    kubernetes.add_toleration(task, key=key, operator=operator, value=value, effect=effect)
    return task


def mount_shm(task: PipelineTask, size: str) -> PipelineTask:
    """PyTorch data-loader workers share tensors through /dev/shm; the container default is 64 MiB."""
    return kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path=SHM_PATH, medium="Memory", size_limit=size)


def use_secrets(task: PipelineTask, secrets: tuple[SecretEnv, ...]) -> PipelineTask:
    for s in secrets:
        kubernetes.use_secret_as_env(task, secret_name=s.secret, secret_key_to_env=dict(s.key_to_env))
    return task


def set_env(task: PipelineTask, env: tuple[tuple[str, str], ...]) -> PipelineTask:
    for name, value in env:
        task.set_env_variable(name, value)
    return task


def decorate(task: PipelineTask, pod: PodDecoration) -> PipelineTask:
    set_resources(task, pod)
    if pod.gpu is not None:
        use_gpu_pool(task, pod.gpu)
    if pod.shm:
        mount_shm(task, pod.shm)
    use_secrets(task, pod.secrets)
    return set_env(task, pod.env)


def set_retry(task: PipelineTask, retries: int) -> PipelineTask:
    """Exponential backoff from 1 min: long enough for a preempted node to be replaced."""
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
    return task


def configure_stage(task: PipelineTask, rs: ResolvedStage, platform: PlatformConfig) -> PipelineTask:
    """Everything a stage pod needs; caching stays on (the cache key is every input of the task)."""
    res = rs.resources
    task.set_display_name(rs.name)
    decorate(task, stage_pod(rs, platform))
    set_retry(task, res.retries)
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)
    return task.set_caching_options(True)


def configure_control(
    task: PipelineTask, platform: PlatformConfig, secrets: tuple[str, ...] = (), cache: bool = True
) -> PipelineTask:
    """A small CPU step: no GPU pool, no shm, no retries."""
    decorate(task, control_pod(platform, secrets))
    return task.set_caching_options(cache)

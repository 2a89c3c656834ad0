"""Kubeflow components, all running the project image with a ``p4d`` entrypoint.

Stage components are generated from the DAG: their inputs are the stage's data nodes (artifacts,
downloaded by the KFP launcher to local paths), the params text and the data version (both plain
parameters, so KFP's cache key covers every input), and, for fanned-out stages, the shard's values.
They run ``p4d pipeline exec``, which writes the params file, runs the stage's own ``p4d`` argv
(visible in the compiled spec), and pushes the stage's metrics.

Control components (CPU): ``prepare`` (data version, shards, the "nothing to do" decision),
``gather_<node>`` (collects a fanned-out output), ``launch_<stage>`` (PyTorchJob for nodes > 1),
``mark_success`` and ``nothing_to_do``.
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects of component functions

import inspect
import json
from collections.abc import Callable
from typing import Any, List

from kfp import dsl

from pipelines.dag import DATA, PARAMS_TOKEN, ResolvedStage


def _container_component(
    name: str, signature: list[tuple[str, Any]], build: Callable[[dict[str, Any]], dsl.ContainerSpec]
) -> Any:
    """A container component with a signature computed at compile time (KFP reads ``__signature__``)."""
    names = [n for n, _ in signature]

    def component(*placeholders: Any) -> dsl.ContainerSpec:
        return build(dict(zip(names, placeholders)))

    component.__name__ = name
    component.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t) for n, t in signature]
    )
    return dsl.container_component(component)


def stage_signature(rs: ResolvedStage) -> list[tuple[str, Any]]:
    """Inputs then outputs of a stage component (names = data nodes / run values)."""
    s = rs.stage
    sig: list[tuple[str, Any]] = [("params_yaml", str), ("data_version", str)]
    for node in s.inputs:
        if node == s.fan_out:
            sig.append(("shard_uri", str))
        else:
            sig.append((node, dsl.Input[dsl.Artifact] if DATA[node].source else dsl.Input[dsl.Dataset]))
    sig += [(v, int) for v in ("seed", "identities") if v in s.placeholders(per_shard=s.fan_out is not None)]
    sig += [(node, dsl.Output[dsl.Dataset]) for node in s.outputs]
    return sig


def _exec_args(rs: ResolvedStage, kw: dict[str, Any], argv: list[str]) -> list:
    """`p4d pipeline exec` options, then the stage's argv; several GPUs in the pod -> torchrun over all."""
    nproc = ["--nproc-per-node", str(rs.resources.gpus)] if rs.resources.gpus > 1 else []
    return ["--stage", rs.name, "--params-text", kw["params_yaml"], "--data-version", kw["data_version"],
            "--pipeline-run", dsl.PIPELINE_JOB_ID_PLACEHOLDER, *nproc, "--", *argv]


def stage_component(rs: ResolvedStage) -> Any:
    """The stage in a pod: ``p4d pipeline exec ... -- <the stage's p4d argv>``."""
    s = rs.stage

    def build(kw: dict[str, Any]) -> dsl.ContainerSpec:
        values = {v: kw[v] for v in ("seed", "identities") if v in kw}
        values.update(params=PARAMS_TOKEN, device=rs.device)
        for node in (*s.inputs, *s.outputs):
            values[node] = kw["shard_uri"] if node == s.fan_out else kw[node].path
        argv = s.render(values, per_shard=s.fan_out is not None)
        return dsl.ContainerSpec(image=rs.image, command=["p4d", "pipeline", "exec"], args=_exec_args(rs, kw, argv))

    return _container_component(s.name, stage_signature(rs), build)


def launcher_component(rs: ResolvedStage, image: str, platform_json: str) -> Any:
    """Nodes > 1: render a PyTorchJob for the stage, create it, wait; the job reads/writes the artifacts' URIs."""
    s = rs.stage

    def build(kw: dict[str, Any]) -> dsl.ContainerSpec:
        io = []
        for node in s.inputs:
            io += ["--input", f"{node}={kw['shard_uri'] if node == s.fan_out else kw[node].uri}"]
        for node in s.outputs:
            io += ["--output", f"{node}={kw[node].uri}", "--output-path", f"{node}={kw[node].path}"]
        return dsl.ContainerSpec(
            image=image,
            command=["p4d", "pipeline", "pytorchjob"],
            args=[
                "--stage", s.name, "--params-text", kw["params_yaml"], "--data-version", kw["data_version"],
                "--run-id", dsl.PIPELINE_JOB_ID_PLACEHOLDER, "--platform-json", platform_json, *io,
            ],
        )

    return _container_component(f"launch_{s.name}", stage_signature(rs), build)


def prepare_component(image: str, sharded_sources: list[str], other_sources: list[str]) -> Any:
    """Data version of every input, one shard list per sharded source, and the run/skip decision."""
    sig: list[tuple[str, Any]] = [(f"{n}_uri", str) for n in (*sharded_sources, *other_sources)]
    sig += [("marker_uri", str), ("params_yaml", str), ("force", bool)]
    sig += [("data_version", dsl.OutputPath(str)), ("changed", dsl.OutputPath(bool)), ("reason", dsl.OutputPath(str))]
    sig += [(f"{n}_shards", dsl.OutputPath(list)) for n in sharded_sources]

    def build(kw: dict[str, Any]) -> dsl.ContainerSpec:
        args: list = []
        for n in sharded_sources:
            args += ["--sharded", f"{n}={kw[f'{n}_uri']}", "--shards-out", f"{n}={kw[f'{n}_shards']}"]
        for n in other_sources:
            args += ["--source", f"{n}={kw[f'{n}_uri']}"]
        args += ["--marker", kw["marker_uri"], "--params-text", kw["params_yaml"], "--force", kw["force"],
                 "--data-version-out", kw["data_version"], "--changed-out", kw["changed"], "--reason-out", kw["reason"]]
        return dsl.ContainerSpec(image=image, command=["p4d", "pipeline", "prepare"], args=args)

    return _container_component("prepare", sig, build)


def mark_success_component(image: str) -> Any:
    @dsl.container_component
    def mark_success(marker_uri: str, data_version: str, params_yaml: str):
        return dsl.ContainerSpec(
            image=image,
            command=["p4d", "pipeline", "mark"],
            args=["--marker", marker_uri, "--data-version", data_version, "--params-text", params_yaml,
                  "--run-id", dsl.PIPELINE_JOB_ID_PLACEHOLDER],
        )

    return mark_success


def nothing_to_do_component(image: str) -> Any:
    @dsl.container_component
    def nothing_to_do(reason: str):
        return dsl.ContainerSpec(image=image, command=["p4d", "pipeline", "nothing-to-do"], args=["--reason", reason])

    return nothing_to_do


def gather_shards(parts: dsl.Input[List[dsl.Dataset]], gathered: dsl.Output[dsl.Dataset]):
    # Runs inside the project image (lightweight component): the copy logic lives in the package.
    from pipelines.gather import gather_parts

    gather_parts([p.path for p in parts], gathered.path)


def gather_component(image: str, node: str) -> Any:
    """Collect the per-shard outputs of ``node`` into one artifact (``part-NNNNN/`` per shard)."""
    component = dsl.component(base_image=image, install_kfp_package=False)(gather_shards)
    component.component_spec.name = f"gather-{node.replace('_', '-')}"
    return component


def platform_json(platform: Any) -> str:
    """The resolved platform config, frozen into the launcher's args at compile time (reviewed in the spec)."""
    return json.dumps(platform.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


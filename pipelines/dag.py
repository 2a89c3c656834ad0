"""THE description of the pipeline DAG. ``dvc.yaml`` (pipelines/dvc_gen.py) and the Kubeflow pipeline
(pipelines/kubeflow/) are both generated from it, so the two cannot drift.

A stage is a ``p4d`` sub-command with an argv template whose ``{placeholders}`` name data nodes
(paths locally, artifacts on Kubeflow) or run values (``{params}``, ``{device}``, and per data shard
``{seed}``, ``{identities}``). Edges are not written down: stage B follows stage A when B reads
a data node A writes. Resources come from the platform config, by stage name.

Every stage goes into ``dvc.yaml`` and the compiled pipeline. A stage whose command is not registered in
``p4d`` (its CLI module missing or renamed) is an error naming the stage, never a stage that silently drops out.
"""

from __future__ import annotations

import argparse
import functools
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from components.errors import P4DError
from components.config.platform import PlatformConfig, StageResources

RUN_VALUES = ("params", "device", "seed", "identities")
PARAMS_TOKEN = "{params}"  # on Kubeflow, `p4d pipeline exec` replaces this argv element with the params file


@dataclass(frozen=True)
class Data:
    """A data node: a directory locally (path relative to the run/repo root), an artifact on Kubeflow."""

    name: str
    path: str
    description: str
    source: bool = False  # supplied from outside the DAG (raw footage, assets), not written by a stage
    sharded: bool = False  # Kubeflow fans out over its sub-prefixes (one task per data shard)


@dataclass(frozen=True)
class Stage:
    name: str
    command: tuple[str, ...]  # the p4d sub-command path, e.g. ("train", "psi3d")
    args: tuple[str, ...]  # argv after the command, with {placeholders}
    inputs: tuple[str, ...]  # data nodes read
    outputs: tuple[str, ...]  # data nodes written
    params: tuple[str, ...]  # config sections whose values change the outputs (DVC params, cache key)
    description: str
    gpu: bool = False  # wants the GPU pool when the platform gives it GPUs
    distributed: bool = False  # torchrun + DeepSpeed; a PyTorchJob when the platform asks for nodes > 1
    fan_out: str | None = None  # sharded source node whose shards this stage runs per (Kubeflow ParallelFor)
    shard_args: tuple[str, ...] = ()  # argv added when run per shard: the shard's seed / share of the work
    secrets: tuple[str, ...] = ()  # "s3" / "mlflow" (every stage logs its metrics there): credentials as env

    def placeholders(self, per_shard: bool = False) -> set[str]:
        args = (*self.args, *self.shard_args) if per_shard else self.args
        return {f for a in args for _, f, _, _ in string.Formatter().parse(a) if f}

    def render(self, values: Mapping[str, str], per_shard: bool = False) -> list[str]:
        """The full argv (``p4d`` excluded) with every placeholder replaced."""
        missing = self.placeholders(per_shard) - set(values)
        if missing:
            raise KeyError(f"stage {self.name}: no value for {sorted(missing)}")
        args = (*self.args, *self.shard_args) if per_shard else self.args
        return [*self.command, *(a.format_map(values) for a in args)]


DATA: dict[str, Data] = {
    d.name: d
    for d in (
        Data("raw_images", "data/raw/images", "real photos (FFHQ-like); on S3 one sub-prefix per shard", True, True),
        Data("raw_clips", "data/raw/clips", "real video clips (VFHQ-like); on S3 one sub-prefix per shard", True, True),
        Data("assets", "assets", "the asset bundle (FLAME, embeddings, weights); `p4d assets list`", True),
        Data("labels_images", "data/fit_flame/images", "aligned crops, 437-float labels, motion, manifest"),
        Data("raw_clips_test", "data/raw/clips_test", "held-out test clips, never trained on (evaluate)", True),
        Data("labels_clips", "data/fit_flame/clips", "per-frame crops, labels and motion of the clips"),
        Data("labels_clips_test", "data/fit_flame/clips_test", "per-frame crops, labels and motion of the test clips"),
        Data("multiview", "data/synthesize", "GenHead pseudo multi-view shards + index"),
        Data("psi3d", "models/psi3d", "Ψ_3d checkpoints"),
        Data("psi", "models/psi", "Ψ checkpoints"),
        Data("evaluation", "reports/evaluation", "reenactment metrics + sample renders"),
        Data("registration", "reports/registration", "the MLflow model version proposed for review"),
        Data("model_repository", "models/triton", "Triton model repository"),
    )
}

_COMMON = ("profile", "seed")
# Training reads these plus its own networks (the stage's CONFIG_KEYS in components/train; tests hold them equal).
_TRAIN = (*_COMMON, "cameras", "losses", "deepspeed", "checkpoints", "train")

STAGES: tuple[Stage, ...] = (
    Stage(
        "fit_flame",
        ("fit-flame",),
        ("--input", "{raw_images}", "--assets", "{assets}", "--out", "{labels_images}",
         "--device", "{device}", "--params", "{params}"),
        inputs=("raw_images", "assets"),
        outputs=("labels_images",),
        params=("profile", "fit_flame"),
        description="landmarks, 512 alignment, FLAME + camera fit, motion features of the photos",
        gpu=True,
        fan_out="raw_images",
        secrets=("s3", "mlflow"),
    ),
    Stage(
        "fit_flame_video",
        ("fit-flame",),
        ("--input", "{raw_clips}", "--video", "--assets", "{assets}", "--out", "{labels_clips}",
         "--device", "{device}", "--params", "{params}"),
        inputs=("raw_clips", "assets"),
        outputs=("labels_clips",),
        params=("profile", "fit_flame"),
        description="the same for video clips (frames sampled per clip, one shape per clip)",
        gpu=True,
        fan_out="raw_clips",
        secrets=("s3", "mlflow"),
    ),
    Stage(
        "fit_flame_test",
        ("fit-flame",),
        ("--input", "{raw_clips_test}", "--video", "--assets", "{assets}", "--out", "{labels_clips_test}",
         "--device", "{device}", "--params", "{params}"),
        inputs=("raw_clips_test", "assets"),
        outputs=("labels_clips_test",),
        params=("profile", "fit_flame"),
        description="the same for the held-out test clips (their own data node: training never reads it)",
        gpu=True,
        secrets=("s3", "mlflow"),
    ),
    Stage(
        "synthesize",
        ("synthesize",),
        ("--labels", "{labels_images}", "--assets", "{assets}", "--out", "{multiview}",
         "--device", "{device}", "--params", "{params}"),
        inputs=("labels_images", "assets"),
        outputs=("multiview",),
        params=(*_COMMON, "networks.genhead", "networks.deformation", "cameras", "camera_mix_fitted_prob",
                "synthesize"),
        description="GenHead renders K views per identity from fitted FLAME conditions and sampled cameras",
        gpu=True,
        fan_out="raw_images",
        shard_args=("--identities", "{identities}", "--seed", "{seed}"),
        secrets=("s3", "mlflow"),
    ),
    # Training passes --resume: a fresh start when --out holds no checkpoint (DVC removes outs before a run),
    # the last complete checkpoint when a restarted pod finds one (same config digest only).
    Stage(
        "train_psi3d",
        ("train", "psi3d"),
        ("--data", "{multiview}", "--assets", "{assets}", "--out", "{psi3d}", "--params", "{params}", "--resume"),
        inputs=("multiview", "assets"),
        outputs=("psi3d",),
        params=(*_TRAIN, "psi3d", "networks.psi3d", "networks.genhead", "networks.discriminator", "networks.lpips",
                "networks.arcface", "networks.deformation"),
        description="static 3D synthesizer Ψ_3d on the pseudo multi-view data (DeepSpeed)",
        gpu=True,
        distributed=True,
        secrets=("s3", "mlflow"),
    ),
    Stage(
        "train_psi",
        ("train", "psi"),
        ("--data", "{labels_clips}", "--psi3d", "{psi3d}", "--assets", "{assets}", "--out", "{psi}",
         "--params", "{params}", "--resume"),
        inputs=("labels_clips", "psi3d", "assets"),
        outputs=("psi",),
        params=(*_TRAIN, "psi", "networks.psi", "networks.psi3d", "networks.discriminator", "networks.pdfgc",
                "networks.lpips", "networks.arcface", "networks.deformation"),
        description="4D synthesizer Ψ from Ψ_3d on real clip pairs + frozen-Ψ_3d pseudo multi-view (DeepSpeed)",
        gpu=True,
        distributed=True,
        secrets=("s3", "mlflow"),
    ),
    Stage(
        "evaluate",
        ("evaluate",),
        ("--psi", "{psi}", "--data", "{labels_clips_test}", "--train-data", "{labels_clips}", "--assets", "{assets}",
         "--out", "{evaluation}", "--device", "{device}", "--params", "{params}"),
        inputs=("psi", "labels_clips_test", "labels_clips", "assets"),  # labels_clips: the leakage check
        outputs=("evaluation",),
        # the Animator's settings (fitting, neck field, cameras, rendering resolution) and the metric networks
        params=(*_COMMON, "networks.psi", "networks.lpips", "networks.arcface", "networks.deformation", "fit_flame",
                "cameras", "psi", "animate", "evaluate"),
        description="reenactment metrics on held-out clips, sample renders, gate thresholds",
        gpu=True,
        secrets=("s3", "mlflow"),
    ),
    Stage(
        "register",
        ("register",),
        ("--psi", "{psi}", "--evaluation", "{evaluation}", "--assets", "{assets}", "--out", "{registration}",
         "--params", "{params}"),
        inputs=("psi", "evaluation", "assets"),  # assets: the model package carries the ones the Animator needs
        outputs=("registration",),
        params=(*_COMMON, "tracking", "register"),
        description="log Ψ to the MLflow registry as a candidate for review",
        secrets=("s3", "mlflow"),
    ),
    # Without --triton (DVC locally) it exports the repository and, with deploy.local_smoke (tiny), loads and
    # smoke-tests it on a local tritonserver it starts and stops; an unapproved registration deploys nothing.
    Stage(
        "deploy",
        ("deploy", "rollout"),
        ("--registration", "{registration}", "--out", "{model_repository}", "--params", "{params}"),
        inputs=("registration",),
        outputs=("model_repository",),
        params=(*_COMMON, "deploy"),
        description="export the Triton model repository and roll the endpoint (smoke test, rollback)",
        gpu=True,  # the smoke reference renders on the device kind the server uses (GPU bf16 in paper)
        secrets=("s3", "mlflow"),
    ),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


class DagError(P4DError, ValueError):
    """The DAG description is inconsistent (a bug in this file, caught by the tests)."""


def validate(stages: Iterable[Stage] = STAGES, data: Mapping[str, Data] = DATA) -> None:
    """Every placeholder is a data node or a run value; every node has at most one writer; no cycles."""
    writers: dict[str, str] = {}
    for s in stages:
        for node in (*s.inputs, *s.outputs):
            if node not in data:
                raise DagError(f"stage {s.name}: unknown data node {node!r}")
        declared = set(s.inputs) | set(s.outputs)
        used = s.placeholders(per_shard=True) - set(RUN_VALUES)
        if s.shard_args and s.fan_out is None:
            raise DagError(f"stage {s.name}: shard_args without fan_out")
        if used != declared:
            raise DagError(f"stage {s.name}: argv uses {sorted(used)} but inputs+outputs are {sorted(declared)}")
        for node in s.outputs:
            if data[node].source:
                raise DagError(f"stage {s.name} writes source node {node!r}")
            if node in writers:
                raise DagError(f"data node {node!r} written by {writers[node]} and {s.name}")
            writers[node] = s.name
        if s.fan_out is not None and not data[s.fan_out].sharded:
            raise DagError(f"stage {s.name}: fan_out over {s.fan_out!r}, which is not a sharded source")
    topological_order(stages)


def producers(stages: Iterable[Stage]) -> dict[str, str]:
    return {node: s.name for s in stages for node in s.outputs}


def edges(stages: Iterable[Stage]) -> set[tuple[str, str]]:
    """(upstream, downstream) stage pairs: downstream reads a node upstream writes."""
    stages = list(stages)
    made_by = producers(stages)
    return {(made_by[n], s.name) for s in stages for n in s.inputs if n in made_by}


def topological_order(stages: Iterable[Stage]) -> list[Stage]:
    """Stages in an order where every stage follows the stages it reads from (stable: file order)."""
    stages = list(stages)
    pending = {s.name: {u for u, d in edges(stages) if d == s.name} for s in stages}
    order: list[Stage] = []
    while pending:
        ready = [s for s in stages if s.name in pending and not pending[s.name]]
        if not ready:
            raise DagError(f"cycle among stages {sorted(pending)}")
        for s in ready:
            order.append(s)
            del pending[s.name]
            for deps in pending.values():
                deps.discard(s.name)
    return order


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = set()
    for action in parser._actions:  # argparse keeps sub-parsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.add((*prefix, name))
                paths |= _command_paths(sub, (*prefix, name))
    return paths


@functools.lru_cache(maxsize=1)
def registered_commands() -> frozenset[tuple[str, ...]]:
    """Every ``p4d`` command path, e.g. ``("fit-flame",)``, ``("train", "psi3d")``."""
    from pipelines.cli import build_parser  # the CLI root imports this package's commands: import late

    return frozenset(_command_paths(build_parser()))


def check_commands(stages: Iterable[Stage], commands: Iterable[tuple[str, ...]] | None = None) -> None:
    """Every stage's command is a registered ``p4d`` command, else one error naming each stage without one."""
    commands = set(registered_commands() if commands is None else commands)
    missing = [f"{s.name} (`p4d {' '.join(s.command)}`)" for s in stages if s.command not in commands]
    if missing:
        raise DagError(f"DAG stage(s) whose command is not a registered p4d command: {', '.join(missing)}; "
                       "add its CLI module to pipelines/cli.py COMMAND_MODULES or fix the stage's command")


def select(names: Iterable[str] | None = None, commands: Iterable[tuple[str, ...]] | None = None) -> list[Stage]:
    """The stages to run, in DAG order: all of them, or exactly ``names``; each must have its command."""
    if names is None:
        chosen = topological_order(STAGES)
    else:
        names = list(names)
        unknown = [n for n in names if n not in STAGE_BY_NAME]
        if unknown:
            raise DagError(f"unknown stage(s) {unknown}; the DAG has {', '.join(STAGE_BY_NAME)}")
        chosen = [s for s in topological_order(STAGES) if s.name in names]
        made_by = producers(STAGES)
        for s in chosen:
            missing = [made_by[n] for n in s.inputs if n in made_by and made_by[n] not in names]
            if missing:
                raise DagError(f"stage {s.name} needs {sorted(set(missing))}, which is not selected")
    check_commands(chosen, commands)
    return chosen


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with its resources on one platform (what both generators consume)."""

    stage: Stage
    resources: StageResources
    image: str
    device: str = field(default="cpu")

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def uses_gpu_pool(self) -> bool:
        return self.stage.gpu and self.resources.gpus > 0

    @property
    def pytorchjob(self) -> bool:
        return self.stage.distributed and self.resources.nodes > 1


def resolve(stages: Iterable[Stage], platform: PlatformConfig) -> list[ResolvedStage]:
    out = []
    for s in stages:
        res = platform.resources(s.name)
        if res.gpus and not s.gpu:
            raise DagError(f"platform.stages.{s.name}.gpus={res.gpus} but stage {s.name} is a CPU stage")
        out.append(ResolvedStage(s, res, platform.image_for(res), "cuda" if res.gpus else "cpu"))
    return out


def kfp_task_name(stage_name: str) -> str:
    """Kubeflow's task name for a stage (it turns underscores into dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", stage_name.lower()).strip("-")


validate()

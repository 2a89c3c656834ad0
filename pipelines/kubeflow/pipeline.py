"""Build and compile the Kubeflow pipeline from the DAG description.

Shape of a run::

    prepare ── changed? ─ yes ─▶ importer(assets)
       │                         ParallelFor(shards of raw_images): fit_flame ─▶ synthesize
       │                         ParallelFor(shards of raw_clips):  fit_flame_video
       │                         gather-<node> (per fanned-out output) ─▶ train_psi3d ─▶ train_psi ─▶ …
       │                         mark_success  (after every stage: the next scheduled run compares to it)
       └─────────────── no ──▶ nothing_to_do

Only the available stages of the DAG appear; the loops, gathers and inputs follow from their data nodes.
"""

# no `from __future__ import annotations`: KFP reads the real annotations of the pipeline function

import json
from pathlib import Path

import yaml
from kfp import compiler, dsl

from components.config import P4DConfig
from pipelines.dag import DATA, DagError, ResolvedStage, Stage, producers, resolve, select, topological_order
from pipelines.kubeflow import components as comps
from pipelines.kubeflow.task_config import configure_control, configure_stage
from components.config.platform import PlatformConfig

PIPELINE_NAME = "portrait4d-v2-retraining"


def one_line_params(text: str) -> str:
    """Params as one-line JSON (valid YAML): a multi-line default would break the spec's header comment
    (KFP writes defaults into it verbatim), and one canonical form keeps the params digest stable."""
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ValueError("params must be a mapping")
    return json.dumps(raw, sort_keys=True, separators=(", ", ": "))


def storage_root(cfg: P4DConfig) -> str:
    """``s3://BUCKET/[PREFIX/]``: every default URI of the pipeline lives under it."""
    prefix = cfg.storage.prefix.strip("/")
    return f"s3://{cfg.storage.bucket}/" + (f"{prefix}/" if prefix else "")


def default_arguments(
    cfg: P4DConfig, platform: PlatformConfig, stages: list[Stage], params_text: str | None = None
) -> dict[str, object]:
    root = storage_root(cfg)
    prefixes = {"raw_images": platform.raw_images_prefix, "raw_clips": platform.raw_clips_prefix,
                "raw_clips_test": platform.raw_clips_test_prefix, "assets": platform.assets_prefix}
    args: dict[str, object] = {f"{n}_uri": root + prefixes[n] for n in _sources(stages)}
    args.update(
        marker_uri=root + platform.marker_key,
        params_yaml=one_line_params(params_text or f"profile: {cfg.profile}"),
        force=False,
    )
    return args


def _sources(stages: list[Stage]) -> list[str]:
    seen: list[str] = []
    for s in stages:
        seen += [n for n in s.inputs if DATA[n].source and n not in seen]
    return seen


def build_pipeline(
    cfg: P4DConfig, stages: list[Stage] | None = None, platform: PlatformConfig | None = None,
    params_text: str | None = None,
):
    """The pipeline function (a KFP GraphComponent) for ``cfg``'s profile and the given/available stages."""
    platform = platform or cfg.platform
    stages = topological_order(select() if stages is None else stages)
    resolved = {rs.name: rs for rs in resolve(stages, platform)}
    sources = _sources(stages)
    sharded = [n for n in sources if DATA[n].sharded]
    plain = [n for n in sources if not DATA[n].sharded]
    cpu_image = platform.images.cpu
    prepare = comps.prepare_component(cpu_image, sharded, plain)
    mark_success = comps.mark_success_component(cpu_image)
    nothing_to_do = comps.nothing_to_do_component(cpu_image)
    platform_json = comps.platform_json(platform)
    defaults = default_arguments(cfg, platform, stages, params_text)
    made_by = producers(stages)

    def add_stage(rs: ResolvedStage, channels: dict, common: dict, shard=None, data_version=None):
        s = rs.stage
        factory = comps.launcher_component(rs, cpu_image, platform_json) if rs.pytorchjob else comps.stage_component(rs)
        kwargs = {"params_yaml": common["params_yaml"], "data_version": shard.version if shard is not None else data_version}
        for node in s.inputs:
            if node == s.fan_out:
                kwargs["shard_uri"] = shard.uri
            else:
                kwargs[node] = channels[node]
        if shard is not None:  # per-shard values: the shard's seed and share of the identities
            for value in ("seed", "identities"):
                if value in s.placeholders(per_shard=True):
                    kwargs[value] = getattr(shard, value)
        task = factory(**kwargs)
        if rs.pytorchjob:  # the launcher is a CPU step; the PyTorchJob's pods get the GPU pool
            configure_control(task, platform).set_display_name(rs.name)
        else:
            configure_stage(task, rs, platform)
        for node in s.outputs:
            channels[node] = task.outputs[node]
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"Portrait4D-v2 scheduled retraining ({cfg.profile} profile): "
        + " -> ".join(s.name for s in stages),
        pipeline_root=storage_root(cfg) + platform.pipeline_root_prefix,
    )
    def pipeline(
        params_yaml: str = defaults["params_yaml"],
        marker_uri: str = defaults["marker_uri"],
        force: bool = False,
        raw_images_uri: str = defaults.get("raw_images_uri", ""),
        raw_clips_uri: str = defaults.get("raw_clips_uri", ""),
        raw_clips_test_uri: str = defaults.get("raw_clips_test_uri", ""),
        assets_uri: str = defaults.get("assets_uri", ""),
    ):
        uris = {"raw_images": raw_images_uri, "raw_clips": raw_clips_uri, "raw_clips_test": raw_clips_test_uri,
                "assets": assets_uri}
        prep = prepare(
            **{f"{n}_uri": uris[n] for n in sources},
            marker_uri=marker_uri, params_yaml=params_yaml, force=force,
        )
        configure_control(prep, platform, secrets=("s3",), cache=False).set_display_name("prepare")
        common = {"params_yaml": params_yaml}
        with dsl.If(prep.outputs["changed"] == True, "data-or-params-changed"):  # noqa: E712 (KFP expression)
            channels: dict = {}
            for n in plain:
                channels[n] = dsl.importer(artifact_uri=uris[n], artifact_class=dsl.Artifact, reimport=False).output
            finals = []
            done: set[str] = set()
            for s in stages:
                if s.name in done:
                    continue
                if s.fan_out is None:
                    finals.append(add_stage(resolved[s.name], channels, common, data_version=prep.outputs["data_version"]))
                    done.add(s.name)
                    continue
                # one ParallelFor per sharded source, holding every stage that runs per shard of it
                group = [g for g in stages if g.fan_out == s.fan_out]
                outside = {made_by[n] for g in group for n in g.inputs if n in made_by} - {g.name for g in group}
                if not outside <= done:
                    raise DagError(f"shard loop over {s.fan_out} needs {sorted(outside - done)} first")
                local = dict(channels)
                with dsl.ParallelFor(
                    prep.outputs[f"{s.fan_out}_shards"], parallelism=platform.shard_parallelism
                ) as shard:
                    loop_tasks = [add_stage(resolved[g.name], local, common, shard=shard) for g in group]
                for g, task in zip(group, loop_tasks):
                    for node in g.outputs:
                        gather = comps.gather_component(cpu_image, node)(parts=dsl.Collected(task.outputs[node]))
                        configure_control(gather, platform)
                        channels[node] = gather.outputs["gathered"]
                        finals.append(gather)
                done |= {g.name for g in group}
            mark = mark_success(marker_uri=marker_uri, data_version=prep.outputs["data_version"], params_yaml=params_yaml)
            configure_control(mark, platform, secrets=("s3",), cache=False).after(*finals)
        with dsl.Else("nothing-changed"):
            skip = nothing_to_do(reason=prep.outputs["reason"])
            configure_control(skip, platform, cache=False)

    return pipeline


def compile_pipeline(
    cfg: P4DConfig, out: str | Path, stages: list[Stage] | None = None, platform: PlatformConfig | None = None,
    params_text: str | None = None,
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg, stages, platform, params_text), str(out))
    return out

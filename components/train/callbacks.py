"""What the training loop reports to, at fixed points: the per-iteration record, progress, sample grids,
loss curves, Prometheus, MLflow, the checkpoint store.

The loop (components.train.loop) calls every callback at the same named points:

- ``on_start(RunStart)``    after the resume decision, before the first iteration;
- ``after_iteration(IterationEnd)``  after each iteration's update and EMA step;
- ``on_checkpoint(path)``   after a checkpoint folder is complete on disk;
- ``on_stop(RunEnd)``       after the last iteration (or a SIGTERM) and the model export;
- ``on_failure()``          when anything above raised (the exception is re-raised afterwards).

Callbacks run on rank 0 only (the loop gives the other ranks none), in list order: the MLflow tracker
comes last, so that when it ends the run the files the others wrote (curves, the record) are there to
log. A new tracker or sample kind is a new ``TrainingCallback`` subclass; images go to every
``ImageSink`` (today MLflow) and into the run folder, where people and the demo report read them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.io.atomic import atomic_path, atomic_write_text
from components.train.checkpoint import TrainerState
from components.train.durable import CheckpointMirror
from components.train.resume import METRICS_FILE, read_run_record, upload_quietly, write_run_record
from components.train.schedule import StepSchedule, iterations

DEEPSPEED_FILE = "deepspeed_config.json"  # written by the loop, logged by the tracker on a fresh start
SAMPLES_FILE = Path("samples") / "latest.png"
LOSS_CURVE_FILE = Path("plots") / "losses.png"


def crossed(before: int, after: int, every: int) -> bool:
    """Whether the images seen went past a multiple of ``every`` during the iteration."""
    return after // every > before // every


@dataclass(frozen=True)
class RunStart:
    state: TrainerState  # where the run starts (a resumed one: the checkpoint's)
    resumed_from: Path | None


@dataclass(frozen=True)
class IterationEnd:
    state: TrainerState  # after the iteration: images_seen, iteration
    images_before: int  # images seen when the iteration started
    sched: StepSchedule  # what the iteration ran with
    losses: dict[str, float]  # loss terms, mean over ranks
    stopping: bool  # SIGTERM / SIGINT on some rank: this is the last iteration

    def crossed(self, every: int) -> bool:
        return crossed(self.images_before, self.state.images_seen, every)


@dataclass(frozen=True)
class RunEnd:
    state: TrainerState
    preempted: bool  # stopped by a signal before the last iteration: nothing final was exported
    checkpoint: Path | None  # the last complete checkpoint
    model_dir: Path | None  # the exported EMA generator + discriminator (None when preempted)


class TrainingCallback:
    """Base of every hook: override the points you need; the others do nothing."""

    def on_start(self, start: RunStart) -> None: ...

    def after_iteration(self, it: IterationEnd) -> None: ...

    def on_checkpoint(self, checkpoint: Path) -> None: ...

    def on_stop(self, end: RunEnd) -> None: ...

    def on_failure(self) -> None: ...


class Callbacks(TrainingCallback):
    """A list of callbacks called in order at each point."""

    def __init__(self, callbacks: Sequence[TrainingCallback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, point: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, point)(*args)

    def on_start(self, start: RunStart) -> None:
        self._each("on_start", start)

    def after_iteration(self, it: IterationEnd) -> None:
        self._each("after_iteration", it)

    def on_checkpoint(self, checkpoint: Path) -> None:
        self._each("on_checkpoint", checkpoint)

    def on_stop(self, end: RunEnd) -> None:
        self._each("on_stop", end)

    def on_failure(self) -> None:
        self._each("on_failure")


class SampledStage(Protocol):
    """What the hooks read of a stage (components.train.loop.StageTask provides it)."""

    name: str
    batch: int
    total_images: int

    def fixed_batch(self, rows: int) -> Any: ...

    def sample_rows(self, ema: nn.Module, batch: Any, sched: StepSchedule, views: int) -> list[list[np.ndarray]]: ...


class ImageSink(Protocol):
    """Somewhere a picture of the run is published (MLflow artifacts today)."""

    def log_image(self, image: np.ndarray, artifact_file: str) -> None: ...


def save_png(image: np.ndarray, path: Path) -> None:
    """The latest picture in the run folder too, for people reading it (and the demo report)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def accelerator_memory(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


class MetricsRecord(TrainingCallback):
    """``OUT/metrics.jsonl``: one row per iteration (schedule in force + loss terms); also the loss history.

    On start the rows past the resumed checkpoint (a killed run may have written more) are dropped, so
    the record and the curves span restarts without repeating an iteration.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / METRICS_FILE
        self.history: dict[str, list[tuple[int, float]]] = {}

    def on_start(self, start: RunStart) -> None:
        rows = []
        if self.path.exists():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
            rows = [row for row in rows if row["iteration"] <= start.state.iteration]
            atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows))
        for row in rows:
            for k, v in row["losses"].items():
                self.history.setdefault(k, []).append((row["images_seen_after"], v))

    def after_iteration(self, it: IterationEnd) -> None:
        row = {"iteration": it.state.iteration, **it.sched.as_metrics(), "images_seen_after": it.state.images_seen,
               "losses": it.losses}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        for k, v in it.losses.items():
            self.history.setdefault(k, []).append((it.state.images_seen, v))


class ProgressBar(TrainingCallback):
    """tqdm over images seen, with the latest total loss."""

    def __init__(self, stage: str, total_images: int, enabled: bool) -> None:
        self.stage, self.total_images, self.enabled = stage, total_images, enabled
        self.bar: tqdm | None = None

    def on_start(self, start: RunStart) -> None:
        self.bar = tqdm(total=self.total_images, initial=start.state.images_seen, unit="img",
                        desc=f"train {self.stage}", disable=not self.enabled, dynamic_ncols=True, smoothing=0.1)

    def after_iteration(self, it: IterationEnd) -> None:
        self.bar.update(it.state.images_seen - it.images_before)
        self.bar.set_postfix(loss=f"{it.losses.get('G/total', float('nan')):.4f}", refresh=False)

    def on_stop(self, end: RunEnd) -> None:
        self.close()

    def on_failure(self) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Throughput:
    """Images per second since the previous report: the window restarts at every report."""

    def __init__(self) -> None:
        self.window = (time.perf_counter(), 0)

    def restart(self, images_seen: int) -> None:
        self.window = (time.perf_counter(), images_seen)

    def report(self, images_seen: int) -> float:
        now = time.perf_counter()
        rate = (images_seen - self.window[1]) / max(now - self.window[0], 1e-9)
        self.window = (now, images_seen)
        return rate


class PeriodicReporter(TrainingCallback):
    """Reports every ``every`` images (and on the last iteration of a stopped run), with the throughput."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.throughput = Throughput()

    def on_start(self, start: RunStart) -> None:
        self.throughput.restart(start.state.images_seen)

    def after_iteration(self, it: IterationEnd) -> None:
        if it.crossed(self.every) or it.stopping:
            self.report(it, self.throughput.report(it.state.images_seen))

    def report(self, it: IterationEnd, images_per_second: float) -> None:
        raise NotImplementedError


class PrometheusMetrics(PeriodicReporter):
    """The trainer's Prometheus series (components.train.monitor): served on rank 0, pushed at checkpoints."""

    def __init__(self, stage: str, section, every: int, device: torch.device) -> None:
        super().__init__(every)
        self.stage, self.section, self.device = stage, section, device
        self.monitor = None

    def on_start(self, start: RunStart) -> None:
        from components.train.monitor import TrainingMonitor

        super().on_start(start)
        self.monitor = TrainingMonitor(f"train_{self.stage}", self.section.port,
                                       os.environ.get("PUSHGATEWAY_URL") or self.section.pushgateway_url)

    def report(self, it: IterationEnd, images_per_second: float) -> None:
        s = it.sched
        self.monitor.update(it.state.iteration, it.state.images_seen, images_per_second, it.losses,
                            {"base": s.lr, "motion": s.lr_motion, "discriminator": s.d_lr},
                            accelerator_memory(self.device))

    def on_checkpoint(self, checkpoint: Path) -> None:
        self.monitor.checkpointed()  # the checkpoint-age gauge restarts
        self.monitor.push()

    def on_stop(self, end: RunEnd) -> None:
        self.monitor.push()


class MlflowTracker(PeriodicReporter):
    """The stage's MLflow run: started (or continued on resume) at start, metrics every ``every`` images,
    images from the other callbacks, and at the end the record, the model, the final checkpoint and the
    run's status. The run id goes into ``OUT/run.json`` before the first step and into every checkpoint."""

    def __init__(self, stage: str, cfg, every: int, out: Path, params: dict, data_version: str, world_size: int,
                 device: torch.device, mirror: CheckpointMirror | None) -> None:
        super().__init__(every)
        self.stage, self.cfg, self.out, self.params = stage, cfg, out, params
        self.data_version, self.world_size, self.device, self.mirror = data_version, world_size, device, mirror
        self.run = None

    def on_start(self, start: RunStart) -> None:
        from components.io.tracking import TrackingRun, dvc_dep_hashes, lineage_tags

        name = f"train_{self.stage}"
        earlier = read_run_record(self.out).get("run_id")
        self.run = TrackingRun.start(self.cfg.tracking, name, self.params, lineage_tags(name, self.data_version),
                                     resume_run_id=start.state.mlflow_run_id if start.resumed_from else None,
                                     previous_run_id=earlier)
        start.state.mlflow_run_id = self.run.run_id  # saved with every checkpoint: a resume continues this run
        # before the first step: a kill from here on leaves the run id for the next start to continue or retire
        write_run_record(self.out, {"run_id": self.run.run_id, "stage": self.stage, "tracking_uri": self.run.uri},
                         self.mirror)
        tags = {"world_size": str(self.world_size), "device": self.device.type,
                "resumed_from": start.resumed_from.name if start.resumed_from else "none",
                "checkpoint_store": self.mirror.uri if self.mirror else "none"}
        tags.update({f"dvc_dep.{path}": md5 for path, md5 in dvc_dep_hashes().items()})
        self.run.set_tags(tags)
        if start.resumed_from is None:
            self.run.log_artifact(self.out / DEEPSPEED_FILE)
        super().on_start(start)

    def report(self, it: IterationEnd, images_per_second: float) -> None:
        scalars = {f"loss/{k}": v for k, v in it.losses.items()}
        scalars.update({f"schedule/{k}": v for k, v in it.sched.as_metrics().items()},
                       images_per_second=images_per_second, accelerator_memory_bytes=accelerator_memory(self.device))
        self.run.log_metrics(scalars, step=it.state.images_seen)

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        self.run.log_image(image, artifact_file)

    def on_stop(self, end: RunEnd) -> None:
        from components.io.tracking import artifact_uri

        self.run.log_artifact(self.out / METRICS_FILE)
        if end.model_dir is not None:
            self.run.log_artifact(end.model_dir / f"{self.stage}.safetensors", "model")
            tags = {"model_uri": artifact_uri(self.run.run_id, f"model/{self.stage}.safetensors"),
                    "final_checkpoint": "none"}
            if end.checkpoint is not None:  # resumable as it is: engines, EMA, RNG and data position
                tags["final_checkpoint"] = self.run.log_artifacts(end.checkpoint, f"checkpoint/{end.checkpoint.name}")
            self.run.set_tags(tags)
        self.run.finish("KILLED" if end.preempted else "FINISHED")

    def on_failure(self) -> None:
        if self.run is not None:
            self.run.finish("FAILED")


class SampleGrid(TrainingCallback):
    """Every ``every`` images: the stage's sample rows from the EMA on one fixed batch, as one grid image."""

    def __init__(self, task: SampledStage, ema: nn.Module, every: int, rows: int, views: int, out: Path,
                 sinks: Sequence[ImageSink]) -> None:
        self.task, self.ema, self.every, self.rows, self.views = task, ema, every, rows, views
        self.out, self.sinks = out, sinks
        self.fixed = None

    def on_start(self, start: RunStart) -> None:
        self.fixed = self.task.fixed_batch(self.rows)

    def after_iteration(self, it: IterationEnd) -> None:
        from components.io.tracking import image_grid

        if not it.crossed(self.every):
            return
        grid = image_grid(self.task.sample_rows(self.ema, self.fixed, it.sched, self.views))
        for sink in self.sinks:
            sink.log_image(grid, f"samples/grid-{it.state.images_seen:012d}.png")
        save_png(grid, self.out / SAMPLES_FILE)


class LossCurve(TrainingCallback):
    """At the end: every loss term against images seen, over the whole run (restarts included)."""

    def __init__(self, stage: str, record: MetricsRecord, out: Path, sinks: Sequence[ImageSink]) -> None:
        self.stage, self.record, self.out, self.sinks = stage, record, out, sinks

    def on_stop(self, end: RunEnd) -> None:
        from components.io.tracking import loss_curve_png

        if not self.record.history:
            return
        curve = loss_curve_png(self.record.history, f"train_{self.stage}")
        for sink in self.sinks:
            sink.log_image(curve, f"curves/losses-{end.state.images_seen:012d}.png")
        save_png(curve, self.out / LOSS_CURVE_FILE)


class CheckpointUpload(TrainingCallback):
    """With a durable store: the per-iteration record, then the checkpoint (marker last), then prune the
    store like the folder. A store that stays unreachable costs durability, not the run."""

    def __init__(self, mirror: CheckpointMirror, out: Path, keep_last: int) -> None:
        self.mirror, self.out, self.keep_last = mirror, out, keep_last

    def on_checkpoint(self, checkpoint: Path) -> None:
        mirror = self.mirror
        upload_quietly(mirror, lambda: mirror.put_file(METRICS_FILE, self.out / METRICS_FILE), METRICS_FILE)
        if upload_quietly(mirror, lambda: mirror.upload(checkpoint), checkpoint.name):
            upload_quietly(mirror, lambda: mirror.prune(self.keep_last), f"pruning of {mirror.uri}")


def rank0_callbacks(task: SampledStage, ema: nn.Module, cfg, train_cfg, out: Path, record: MetricsRecord,
                    tracking_params: dict, data_version: str, world_size: int, device: torch.device,
                    mirror: CheckpointMirror | None, progress: bool) -> list[TrainingCallback]:
    """Rank 0's standard hooks, the MLflow tracker last (see the module docstring)."""
    tracker = MlflowTracker(task.name, cfg, train_cfg.log_every_images, out, tracking_params, data_version,
                            world_size, device, mirror)
    total = iterations(task.total_images, task.batch) * task.batch
    hooks: list[TrainingCallback] = [
        record,
        ProgressBar(task.name, total, progress),
        PrometheusMetrics(task.name, cfg.metrics, train_cfg.log_every_images, device),
        SampleGrid(task, ema, train_cfg.sample_every_images, train_cfg.sample_grid_rows, train_cfg.novel_views, out,
                   [tracker]),
        LossCurve(task.name, record, out, [tracker]),
    ]
    if mirror is not None:
        hooks.append(CheckpointUpload(mirror, out, cfg.checkpoints.keep_last))
    return [*hooks, tracker]

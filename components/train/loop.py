"""The training loop both stages share: engines, schedule, EMA, checkpoints, tracking, metrics, progress.

One iteration = one global batch (``batch`` images across all ranks and accumulation steps):
G phase (each micro-batch: forward, losses, ``engine.backward``, ``engine.step``; DeepSpeed applies
the update at the accumulation boundary), then, once adversarial training is on, the D phase on the
same micro-batches, then the EMA update. A stage (psi3d.py, psi.py) supplies a ``StageTask``: its
networks, data stream, schedule and the per-micro-batch generator losses.

Rank 0 records every iteration in ``OUT/metrics.jsonl`` (the schedule values in force and the loss
terms averaged over ranks), which is also what the tests read to check the schedule switches.

A start resumes from the newest good checkpoint, in ``OUT/checkpoints`` or in the durable checkpoint
store (components.train.resume, .durable), refusing one written with another configuration or on
other data; with a store, every checkpoint is uploaded as soon as it is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.io.atomic import atomic_write_text
from components.train.checkpoint import (
    CheckpointError,
    Checkpoints,
    TrainerState,
    read_state,
    rng_state,
    save_module_safetensors,
    set_rng_state,
)
from components.config.train import TrainConfig
from components.train.durable import CheckpointMirror
from components.train.engine import (
    DiscriminatorObjective,
    DistInfo,
    GeneratorModule,
    autocast,
    build_engine,
    deepspeed_config,
    set_learning_rates,
)
from components.train.models import MODEL_DIR, is_optimized, is_renderer_parameter
from components.train.resume import (
    METRICS_FILE,
    candidates,
    fetch_records,
    read_run_record,
    say,
    upload_quietly,
    write_run_record,
)
from components.train.schedule import StepSchedule, ema_beta, iterations, lazy_due

DEEPSPEED_FILE = "deepspeed_config.json"
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the orchestrator restarts the job, which resumes


@dataclass
class MicroResult:
    """One micro-batch of the G phase: the loss to back-propagate, its terms, and D's inputs."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    d_real: dict[str, torch.Tensor] | None = None  # image, image_raw, uv, seg
    d_fake: dict[str, torch.Tensor] | None = None
    d_c: torch.Tensor | None = None  # (B, 25) discriminator camera condition


class StageTask(ABC):
    """What a training stage provides to the shared loop."""

    name: str
    config_keys: tuple[str, ...]  # config keys (dotted) the stage reads: what a resumed run must share
    psi: nn.Module
    discriminator: nn.Module
    data: Any  # a stream with __next__, state_dict, load_state_dict
    batch: int
    total_images: int
    ema_rampup: float | None
    device: torch.device
    amp: Any = None  # () -> autocast context for work outside the engines; set by ``train``
    cfg: Any  # P4DConfig
    train_cfg: TrainConfig
    lpips: nn.Module
    arcface: nn.Module

    @abstractmethod
    def schedule(self, images_seen: int) -> StepSchedule: ...

    @abstractmethod
    def generator_micro_step(self, engine, critic: DiscriminatorObjective, batch, sched: StepSchedule,
                             iteration: int, generator: torch.Generator) -> MicroResult: ...

    @abstractmethod
    def fixed_batch(self, rows: int): ...

    @abstractmethod
    def sample_rows(self, ema: nn.Module, batch, sched: StepSchedule, views: int) -> list[list[np.ndarray]]: ...

    def generator_groups(self, sched: StepSchedule) -> list[dict]:
        """Adam groups: 'base' and (Ψ) 'motion' (lr x 2.5, official cross_lr_scale), BatchNorm excluded."""
        from model.networks.psi import is_motion_parameter

        groups = {"motion": [], "base": []}
        for name, p in self.psi.named_parameters():
            if not is_optimized(name):
                p.requires_grad_(False)
            elif p.requires_grad:
                groups["motion" if is_motion_parameter(name) else "base"].append(p)
        return [{"params": groups["motion"], "lr": sched.lr_motion, "name": "motion"},
                {"params": groups["base"], "lr": sched.lr, "name": "base"}]

    def set_renderer_frozen(self, frozen: bool) -> None:
        for name, p in self.psi.named_parameters():
            if is_renderer_parameter(name):
                p.requires_grad_(not frozen)

    def reconstruction_step(self, critic: DiscriminatorObjective, out: dict, targets, target_image: torch.Tensor,
                            cond, sched: StepSchedule, extra: dict[str, torch.Tensor]) -> MicroResult:
        """The terms both stages share (official loss_recon_v*.py) plus the stage's own.

        ``extra``: name -> (weight, value); each value is recorded as is and added x weight to the total.
        Returns the loss, its terms and D's inputs (the real target, the detached render).
        """
        from model import losses as L

        w, t = self.cfg.losses, self.train_cfg
        zero = out["image"].new_zeros(())
        with self.amp():
            pairs = L.image_pairs(out, targets)
            terms = {"G/l1": L.l1_term(pairs), "G/lpips": L.lpips_term(pairs, self.lpips),
                     "G/seg": L.segmentation_term(out["seg"], targets.seg), "G/identity": zero,
                     "G/adversarial": zero}
            if sched.identity and w.identity > 0:
                terms["G/identity"] = L.identity_term(self.arcface.identity_features(out["image"], cond.landmarks),
                                                      self.arcface.identity_features(target_image, cond.landmarks))
            fake = {"image": out["image"], "image_raw": out["image_raw"], "uv": cond.uv, "seg": out["seg"]}
            if sched.adversarial and w.adversarial > 0:
                terms["G/adversarial"] = L.generator_adversarial_term(critic.logits(fake, cond.c_compose))
        total = (w.l1 * terms["G/l1"] + w.lpips * terms["G/lpips"] + t.seg_weight * terms["G/seg"]
                 + w.identity * terms["G/identity"] + w.adversarial * terms["G/adversarial"])
        for name, (weight, value) in extra.items():
            terms[name] = value
            total = total + weight * value
        terms["G/total"] = total
        real = {"image": target_image, "image_raw": targets.image_raw, "uv": cond.uv, "seg": targets.seg}
        return MicroResult(total, terms, real, {k: v.detach() for k, v in fake.items()}, cond.c_compose)

    def export_metadata(self) -> dict[str, str]:
        return {"network": self.name, "config": json.dumps(self.psi.cfg.model_dump(mode="json"))}


@dataclass
class TrainResult:
    out_dir: Path
    iterations: int
    images_seen: int
    preempted: bool
    checkpoint: Path | None
    mlflow_run_id: str | None
    seconds: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and leaves at the end of the iteration."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# How a run is logged, stored, checkpointed and scheduled, not what it learns: free to change on resume.
RESUME_EXEMPT_SECTIONS = ("tracking", "metrics", "checkpoints", "storage", "platform")
BOOKKEEPING = {"log_every_images", "sample_every_images", "sample_grid_rows", "novel_views", "data_workers"}


def digest_config(cfg, train: TrainConfig, keys: tuple[str, ...]) -> dict:
    """The part of the config a resumed run must share with the interrupted one: the stage's ``keys``
    (dotted paths), without logging, storage or run length (``total_images`` may grow to train longer)."""
    data = cfg.model_dump(mode="json")
    data["train"] = {k: v for k, v in train.model_dump(mode="json").items() if k not in BOOKKEEPING}
    picked: dict = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] in RESUME_EXEMPT_SECTIONS:
            continue
        node, target = data, picked
        for part in parts[:-1]:
            node, target = node[part], target.setdefault(part, {})
        target[parts[-1]] = node[parts[-1]]
    for stage in ("psi3d", "psi"):
        if isinstance(picked.get(stage), dict):
            picked[stage] = {k: v for k, v in picked[stage].items() if k != "total_images"}
    return picked


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _broadcast(value, dist: DistInfo):
    """Rank 0's ``value`` on every rank (rank 0 alone picks and fetches the checkpoint to resume)."""
    if dist.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _resume(checkpoints: Checkpoints, mirror: CheckpointMirror | None, task: StageTask, g_engine, d_engine,
            ema: nn.Module, expect: TrainerState, dist: DistInfo, resume: bool,
            out: Path) -> tuple[TrainerState, Path | None]:
    """Load the newest good checkpoint (local or stored) into the engines, EMA, RNG and data stream.

    Rank 0 picks (components.train.resume.candidates: bad ones are skipped with the reason); every rank
    loads the pick. On one process a checkpoint that still fails to load is skipped as well; with several,
    a load error stops the run (the ranks cannot agree on a fallback part-way through a collective load).
    """
    if not resume:  # a fresh start touches nothing that is there
        refusal = None
        if dist.is_main:
            local = [p.name for p in checkpoints.complete()]
            stored = mirror.complete() if mirror is not None and not local else []
            if local or stored:
                refusal = (f"{out if local else mirror.uri} already holds checkpoints (latest {max(local or stored)}); "
                           "pass --resume to continue that run, or choose a new --out")
        refusal = _broadcast(refusal, dist)
        if refusal:
            raise CheckpointError(refusal)
        return expect, None
    skipped: list[str] = []
    found = candidates(checkpoints, mirror, skipped) if dist.is_main else None
    while True:
        path = next(found, None) if found is not None else None
        name = _broadcast(path.name if path is not None else None, dist)
        if name is None:
            break
        path = checkpoints.root / name
        checkpoints.check_fits(path, read_state(path), expect)
        try:
            state, rank_state = checkpoints.load(path, g_engine, d_engine, ema, expect)
        except CheckpointError:
            raise
        except Exception as err:  # torch / DeepSpeed / safetensors raise many types for a file that will not read
            if dist.world_size > 1:
                raise CheckpointError(f"{path} failed to load ({type(err).__name__}: {err}); remove it to resume "
                                      "from the previous checkpoint") from err
            say(f"skipped {name}: it failed to load ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "removed it")
            skipped.append(name)
            checkpoints.discard(path)
            if mirror is not None:
                mirror.remove(name)
            continue
        state.world_size = dist.world_size  # another process count is fine: checkpoints.load re-partitions
        state.data_version = state.data_version or expect.data_version
        set_rng_state(rank_state["rng"])
        task.data.load_state_dict(rank_state["data"])
        if dist.is_main:
            say(f"continuing from {name}: {state.images_seen} images seen, iteration {state.iteration}")
        return state, path
    if dist.is_main:
        where = f"{checkpoints.root}" + (f" or {mirror.uri}" if mirror is not None else "")
        say(f"no usable checkpoint in {where} (skipped {', '.join(skipped)}); starting from image 0" if skipped
            else f"no checkpoint in {where} yet; starting from image 0")
    return expect, None


def _upload(mirror: CheckpointMirror, checkpoint: Path, out: Path, keep_last: int) -> None:
    """The per-iteration record, then the checkpoint (marker last), then prune the store like the folder."""
    upload_quietly(mirror, lambda: mirror.put_file(METRICS_FILE, out / METRICS_FILE), METRICS_FILE)
    if upload_quietly(mirror, lambda: mirror.upload(checkpoint), checkpoint.name):
        upload_quietly(mirror, lambda: mirror.prune(keep_last), f"pruning of {mirror.uri}")


def _all_mean(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
    return values


def _any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _step_seed(seed: int, iteration: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, rank, 7]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


@dataclass
class Engines:
    generator: Any  # DeepSpeed engine around GeneratorModule(Ψ)
    discriminator: Any  # DeepSpeed engine around DiscriminatorObjective(D)
    critic: DiscriminatorObjective
    ds_config: dict
    accumulation: int


def build_engines(task: StageTask, cfg, train_cfg: TrainConfig, dist: DistInfo) -> Engines:
    """G and D engines from the generated DeepSpeed config; sets the task's autocast to the same precision."""
    sched0 = task.schedule(0)
    ds_config = deepspeed_config(cfg.deepspeed, task.batch, dist.world_size, dist.device.type)
    task.amp = lambda: autocast(ds_config, dist.device)  # losses, frozen networks: the engines' precision
    task.set_renderer_frozen(False)  # every trainable parameter must be in the optimizer when it is built
    g_engine = build_engine(GeneratorModule(task.psi), task.generator_groups(sched0), ds_config,
                            train_cfg.adam_betas, train_cfg.adam_eps)
    gammas = {"image": cfg.losses.r1_gamma, "image_raw": cfg.losses.r1_gamma, "uv": train_cfg.r1_gamma_uv,
              "seg": train_cfg.r1_gamma_seg}
    critic = DiscriminatorObjective(task.discriminator, gammas)
    d_params = [p for n, p in task.discriminator.named_parameters() if is_optimized(n)]
    d_engine = build_engine(critic, [{"params": d_params, "lr": sched0.d_lr, "name": "discriminator"}],
                            ds_config, train_cfg.adam_betas, train_cfg.adam_eps)
    task.discriminator.requires_grad_(False)
    return Engines(g_engine, d_engine, critic, ds_config, ds_config["gradient_accumulation_steps"])


def run_iteration(task: StageTask, engines: Engines, sched: StepSchedule, iteration: int,
                  generator: torch.Generator, r1_every: int) -> dict[str, torch.Tensor]:
    """One global batch: G phase over the micro-batches, then (adversarial on) the D phase on the same ones."""
    g_engine, d_engine, gas = engines.generator, engines.discriminator, engines.accumulation
    set_learning_rates(g_engine, {"base": sched.lr, "motion": sched.lr_motion})
    set_learning_rates(d_engine, {"discriminator": sched.d_lr})
    task.set_renderer_frozen(sched.renderer_frozen)
    terms: dict[str, torch.Tensor] = {}
    d_inputs = []
    for _ in range(gas):
        batch = next(task.data).to(task.device)
        result = task.generator_micro_step(g_engine, engines.critic, batch, sched, iteration, generator)
        g_engine.backward(result.loss)
        g_engine.step()  # DeepSpeed applies the update at the accumulation boundary
        for k, v in result.terms.items():
            terms[k] = terms.get(k, 0) + v.detach().float() / gas
        if sched.adversarial:
            # D sees the G step's renders (detached) rather than a second G forward after G's update
            d_inputs.append((result.d_real, result.d_fake, result.d_c))
    if sched.adversarial:
        r1_gain = float(r1_every) if lazy_due(iteration, r1_every) else 0.0  # lazy R1, folded into this step
        task.discriminator.requires_grad_(True)
        for real, fake, c in d_inputs:
            d_out = d_engine(real, fake, c, r1_gain)  # the engine applies the configured autocast
            d_engine.backward(d_out["loss"])
            d_engine.step()
            for k in ("loss", "r1", "real_score", "fake_score"):
                terms[f"D/{k}"] = terms.get(f"D/{k}", 0) + d_out[k].detach().float() / gas
        task.discriminator.requires_grad_(False)
    return terms


def train(task: StageTask, cfg, train_cfg: TrainConfig, out_dir: str | Path, dist: DistInfo, resume: bool,
          tracking_params: dict, data_version: str, progress: bool = True,
          checkpoint_store: str | None = None) -> TrainResult:
    """Run ``task`` to ``task.total_images`` (or until SIGTERM), checkpointing into ``out_dir`` and, with
    ``checkpoint_store`` (a folder or s3:// prefix), uploading every checkpoint there as it is written."""
    from components.io.tracking import TrackingRun, dvc_dep_hashes, lineage_tags, resolve_data_version

    out = Path(out_dir)
    started = time.perf_counter()
    main = dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)

    engines = build_engines(task, cfg, train_cfg, dist)
    g_engine, d_engine = engines.generator, engines.discriminator
    ema = copy.deepcopy(task.psi).eval().requires_grad_(False)

    mirror = CheckpointMirror.open(checkpoint_store, cfg.storage.endpoint_url_env) if checkpoint_store and main \
        else None
    config = digest_config(cfg, train_cfg, task.config_keys)
    checkpoints = Checkpoints(out / "checkpoints", cfg.checkpoints.keep_last, dist.rank, config)
    version = resolve_data_version(data_version)
    expect = TrainerState(task.name, 0, 0, dist.world_size, config_digest(config), data_version=version)
    if main:
        fetch_records(out, mirror)
    state, resumed_from = _resume(checkpoints, mirror, task, g_engine, d_engine, ema, expect, dist, resume, out)
    history: dict[str, list[tuple[int, float]]] = {}
    if main:
        for row in _truncate_record(out / METRICS_FILE, state.iteration):  # the curves span restarts
            for k, v in row["losses"].items():
                history.setdefault(k, []).append((row["images_seen_after"], v))

    run = None
    if main:
        atomic_write_text(out / DEEPSPEED_FILE, json.dumps(engines.ds_config, indent=2) + "\n")
        earlier = read_run_record(out).get("run_id")
        run = TrackingRun.start(cfg.tracking, f"train_{task.name}", tracking_params,
                                lineage_tags(f"train_{task.name}", version),
                                resume_run_id=state.mlflow_run_id if resumed_from else None, previous_run_id=earlier)
        state.mlflow_run_id = run.run_id
        # before the first step: a kill from here on leaves the run id for the next start to continue or retire
        write_run_record(out, {"run_id": run.run_id, "stage": task.name, "tracking_uri": run.uri}, mirror)
        tags = {"world_size": str(dist.world_size), "device": dist.device.type,
                "resumed_from": resumed_from.name if resumed_from else "none",
                "checkpoint_store": mirror.uri if mirror else "none"}
        tags.update({f"dvc_dep.{path}": md5 for path, md5 in dvc_dep_hashes().items()})
        run.set_tags(tags)
        if resumed_from is None:
            run.log_artifact(out / DEEPSPEED_FILE)
    monitor = _start_monitor(task.name, cfg) if main else None

    fixed = task.fixed_batch(train_cfg.sample_grid_rows) if main else None
    total_iterations = iterations(task.total_images, task.batch)
    stop = _StopFlag()
    last_checkpoint: Path | None = resumed_from
    bar = tqdm(total=total_iterations * task.batch, initial=state.images_seen, unit="img", desc=f"train {task.name}",
               disable=not (main and progress), dynamic_ncols=True, smoothing=0.1)
    window = (time.perf_counter(), state.images_seen)
    metrics_path = out / METRICS_FILE
    preempted = False
    try:
        while state.iteration < total_iterations:
            sched = task.schedule(state.images_seen)
            seed = _step_seed(cfg.seed, state.iteration, dist.rank)
            generator = torch.Generator(device=dist.device).manual_seed(seed)
            terms = run_iteration(task, engines, sched, state.iteration, generator, train_cfg.r1_every)

            before = state.images_seen
            state.images_seen += task.batch
            state.iteration += 1
            update_ema(ema, task.psi, ema_beta(state.images_seen, task.batch, cfg.checkpoints.ema_half_life_images,
                                               task.ema_rampup))

            names = sorted(terms)
            values = _all_mean(torch.stack([terms[k] for k in names])).cpu().tolist() if names else []
            losses = dict(zip(names, values))
            stopping = _any_rank(stop.raised, dist.device)
            if main:
                _record(metrics_path, state, sched, losses)
                for k, v in losses.items():
                    history.setdefault(k, []).append((state.images_seen, v))
                bar.update(task.batch)
                now = time.perf_counter()
                ips = (state.images_seen - window[1]) / max(now - window[0], 1e-9)
                bar.set_postfix(loss=f"{losses.get('G/total', float('nan')):.4f}", refresh=False)
                if _crossed(before, state.images_seen, train_cfg.log_every_images) or stopping:
                    window = (now, state.images_seen)
                    scalars = {f"loss/{k}": v for k, v in losses.items()}
                    scalars.update({f"schedule/{k}": v for k, v in sched.as_metrics().items()},
                                   images_per_second=ips, accelerator_memory_bytes=_memory(dist.device))
                    run.log_metrics(scalars, step=state.images_seen)
                    monitor.update(state.iteration, state.images_seen, ips, losses,
                                   {"base": sched.lr, "motion": sched.lr_motion, "discriminator": sched.d_lr},
                                   _memory(dist.device))
                if _crossed(before, state.images_seen, train_cfg.sample_every_images):
                    _log_samples(task, ema, fixed, sched, train_cfg, run, state.images_seen, out)
            due = _crossed(before, state.images_seen, cfg.checkpoints.every_images)
            if due or stopping or state.iteration == total_iterations:
                rank_state = {"rng": rng_state(), "data": task.data.state_dict()}
                last_checkpoint = checkpoints.save(state, g_engine, d_engine, ema, rank_state, task.export_metadata())
                if main and mirror is not None:
                    _upload(mirror, last_checkpoint, out, cfg.checkpoints.keep_last)
                if main:
                    monitor.checkpointed()
                    monitor.push()
            if stopping:
                preempted = state.iteration < total_iterations
                break
    except BaseException:
        if main and run is not None:
            run.finish("FAILED")
        raise
    finally:
        stop.restore()
        bar.close()

    if main:
        _finish(task, ema, out, run, history, last_checkpoint, preempted, state)
        monitor.push()
    torch.distributed.barrier()
    return TrainResult(out, state.iteration, state.images_seen, preempted, last_checkpoint,
                       state.mlflow_run_id, time.perf_counter() - started, history)


def _start_monitor(stage: str, cfg):
    import os

    from components.train.monitor import TrainingMonitor

    return TrainingMonitor(f"train_{stage}", cfg.metrics.port,
                           os.environ.get("PUSHGATEWAY_URL") or cfg.metrics.pushgateway_url)


def _memory(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def _truncate_record(path: Path, iteration: int) -> list[dict]:
    """Keep (and return) the per-iteration rows up to the checkpoint being resumed; a killed run may have
    written more."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    rows = [row for row in rows if row["iteration"] <= iteration]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def _record(path: Path, state: TrainerState, sched: StepSchedule, losses: dict[str, float]) -> None:
    row = {"iteration": state.iteration, **sched.as_metrics(), "images_seen_after": state.images_seen,
           "losses": losses}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def _save_png(image, path: Path) -> None:
    """The latest picture next to the checkpoints too, for people reading the run directory (and the demo report)."""
    from PIL import Image

    from components.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _log_samples(task: StageTask, ema: nn.Module, fixed, sched: StepSchedule, train_cfg: TrainConfig, run,
                 images_seen: int, out: Path) -> None:
    from components.io.tracking import image_grid

    grid = image_grid(task.sample_rows(ema, fixed, sched, train_cfg.novel_views))
    run.log_image(grid, f"samples/grid-{images_seen:012d}.png")
    _save_png(grid, out / "samples" / "latest.png")


def _finish(task: StageTask, ema: nn.Module, out: Path, run, history, checkpoint: Path | None, preempted: bool,
            state: TrainerState) -> None:
    """Export the EMA generator and the discriminator (next stage / evaluation), log the curves and the model."""
    from components.io.tracking import loss_curve_png

    meta = {**task.export_metadata(), "images_seen": str(state.images_seen)}
    model_dir = out / MODEL_DIR
    if not preempted:
        model_dir.mkdir(parents=True, exist_ok=True)
        for name, module in ((f"{task.name}.safetensors", ema), ("discriminator.safetensors", task.discriminator)):
            tmp = model_dir / f".{name}.tmp"
            save_module_safetensors(module, tmp, meta)
            tmp.replace(model_dir / name)
    if history:
        curve = loss_curve_png(history, f"train_{task.name}")
        run.log_image(curve, f"curves/losses-{state.images_seen:012d}.png")
        _save_png(curve, out / "plots" / "losses.png")
    run.log_artifact(out / METRICS_FILE)
    if not preempted:
        from components.io.tracking import artifact_uri

        run.log_artifact(model_dir / f"{task.name}.safetensors", "model")
        tags = {"model_uri": artifact_uri(run.run_id, f"model/{task.name}.safetensors"), "final_checkpoint": "none"}
        if checkpoint is not None:  # resumable as it is: engines, EMA, RNG and data position
            tags["final_checkpoint"] = run.log_artifacts(checkpoint, f"checkpoint/{checkpoint.name}")
        run.set_tags(tags)
    run.finish("KILLED" if preempted else "FINISHED")


def exit_code(result: TrainResult) -> int:
    return EXIT_PREEMPTED if result.preempted else 0


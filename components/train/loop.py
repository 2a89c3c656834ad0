"""The training loop both stages share: engines, schedule, EMA, checkpoints, tracking, metrics, progress.

One iteration = one global batch (``batch`` images across all ranks and accumulation steps):
G phase (each micro-batch: forward, losses, ``engine.backward``, ``engine.step``; DeepSpeed applies
the update at the accumulation boundary), then, once adversarial training is on, the D phase on the
same micro-batches, then the EMA update. A stage (psi3d.py, psi.py) supplies a ``StageTask``: its
networks, data stream, schedule and the per-micro-batch generator losses.

What the run reports (``OUT/metrics.jsonl``, progress, sample grids, loss curves, Prometheus, MLflow,
uploads to the checkpoint store) is done by callbacks on rank 0 (components.train.callbacks), called at
fixed points: start, after each iteration, after each checkpoint, stop, failure.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.io.atomic import atomic_path, atomic_write_text
from components.io.run_config import write_run_config
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
from components.train.callbacks import (
    DEEPSPEED_FILE,
    Callbacks,
    IterationEnd,
    MetricsRecord,
    RunEnd,
    RunStart,
    TrainingCallback,
    crossed,
    rank0_callbacks,
)
from components.train.durable import CheckpointMirror
from components.train.engine import (
    DiscriminatorObjective,
    DistInfo,
    Precision,
    build_engine,
    deepspeed_config,
    set_learning_rates,
)
from components.train.models import MODEL_DIR, is_optimized, is_renderer_parameter
from components.train.resume import candidates, fetch_records, say
from components.train.schedule import StepSchedule, ema_beta, iterations, lazy_due

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
    amp: Precision  # the engines' precision for work outside them; given to the stage's constructor
    cfg: Any  # P4DConfig
    train_cfg: TrainConfig
    lpips: nn.Module
    arcface: nn.Module

    @abstractmethod
    def schedule(self, images_seen: int) -> StepSchedule: ...

    @abstractmethod
    def generator_module(self) -> nn.Module:
        """The G engine's module: the stage's generator call (named arguments), holding exactly ``psi``."""

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

        w = self.cfg.losses
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
        total = (w.l1 * terms["G/l1"] + w.lpips * terms["G/lpips"] + w.segmentation * terms["G/seg"]
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


@dataclass
class Engines:
    generator: Any  # DeepSpeed engine around the stage's generator module (Ψ_3d or Ψ)
    discriminator: Any  # DeepSpeed engine around DiscriminatorObjective(D)
    critic: DiscriminatorObjective
    ds_config: dict
    accumulation: int


def build_engines(task: StageTask, cfg, train_cfg: TrainConfig, dist: DistInfo) -> Engines:
    """G and D engines from the generated DeepSpeed config (its precision is the task's, ``uses_bf16``)."""
    sched0 = task.schedule(0)
    ds_config = deepspeed_config(cfg.deepspeed, task.batch, dist.world_size, dist.device.type)
    task.set_renderer_frozen(False)  # every trainable parameter must be in the optimizer when it is built
    g_engine = build_engine(task.generator_module(), task.generator_groups(sched0), ds_config,
                            train_cfg.adam_betas, train_cfg.adam_eps)
    gammas = {"image": cfg.losses.r1_gamma, "image_raw": cfg.losses.r1_gamma, "uv": cfg.losses.r1_gamma_uv,
              "seg": cfg.losses.r1_gamma_seg}
    critic = DiscriminatorObjective(task.discriminator, gammas)
    d_params = [p for n, p in task.discriminator.named_parameters() if is_optimized(n)]
    d_engine = build_engine(critic, [{"params": d_params, "lr": sched0.d_lr, "name": "discriminator"}],
                            ds_config, train_cfg.adam_betas, train_cfg.adam_eps)
    task.discriminator.requires_grad_(False)
    return Engines(g_engine, d_engine, critic, ds_config, ds_config["gradient_accumulation_steps"])


def apply_learning_rates(engines: Engines, sched: StepSchedule) -> None:
    """The schedule's rates into the optimizers' groups (Ψ's 'motion' layers have their own)."""
    set_learning_rates(engines.generator, {"base": sched.lr, "motion": sched.lr_motion})
    set_learning_rates(engines.discriminator, {"discriminator": sched.d_lr})


def run_iteration(task: StageTask, engines: Engines, sched: StepSchedule, iteration: int,
                  generator: torch.Generator, r1_every: int) -> dict[str, torch.Tensor]:
    """One global batch: G phase over the micro-batches, then (adversarial on) the D phase on the same ones."""
    g_engine, d_engine, gas = engines.generator, engines.discriminator, engines.accumulation
    apply_learning_rates(engines, sched)
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
          checkpoint_store: str | None = None, callbacks: Sequence[TrainingCallback] = ()) -> TrainResult:
    """Run ``task`` to ``task.total_images`` (or until SIGTERM), checkpointing into ``out_dir`` and, with
    ``checkpoint_store`` (a folder or s3:// prefix), uploading every checkpoint there as it is written.
    ``callbacks`` run on rank 0 after the standard ones (components.train.callbacks.rank0_callbacks)."""
    from components.io.tracking import resolve_data_version

    out = Path(out_dir)
    started = time.perf_counter()
    main = dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)

    engines = build_engines(task, cfg, train_cfg, dist)
    ema = copy.deepcopy(task.psi).eval().requires_grad_(False)
    mirror = CheckpointMirror.open(checkpoint_store, cfg.storage.endpoint_url_env) if checkpoint_store and main \
        else None
    config = digest_config(cfg, train_cfg, task.config_keys)
    checkpoints = Checkpoints(out / "checkpoints", cfg.checkpoints.keep_last, dist.rank, config)
    version = resolve_data_version(data_version)
    expect = TrainerState(task.name, 0, 0, dist.world_size, config_digest(config), data_version=version)
    if main:
        fetch_records(out, mirror)
    state, resumed_from = _resume(checkpoints, mirror, task, engines.generator, engines.discriminator, ema, expect,
                                  dist, resume, out)
    record = MetricsRecord(out)
    hooks = Callbacks([])
    if main:
        atomic_write_text(out / DEEPSPEED_FILE, json.dumps(engines.ds_config, indent=2) + "\n")
        write_run_config(out, cfg)  # after the resume check: a refused resume leaves the run's config.yaml as it was
        hooks = Callbacks([*rank0_callbacks(task, ema, cfg, train_cfg, out, record, tracking_params, version,
                                            dist.world_size, dist.device, mirror, progress), *callbacks])

    total_iterations = iterations(task.total_images, task.batch)
    stop = _StopFlag()
    last_checkpoint: Path | None = resumed_from
    preempted = False
    try:
        hooks.on_start(RunStart(state, resumed_from))
        while state.iteration < total_iterations:
            sched = task.schedule(state.images_seen)
            generator = torch.Generator(device=dist.device).manual_seed(_step_seed(cfg.seed, state.iteration,
                                                                                   dist.rank))
            terms = run_iteration(task, engines, sched, state.iteration, generator, train_cfg.r1_every)
            before = state.images_seen
            state.images_seen += task.batch
            state.iteration += 1
            update_ema(ema, task.psi, ema_beta(state.images_seen, task.batch, cfg.checkpoints.ema_half_life_images,
                                               task.ema_rampup))
            stopping = _any_rank(stop.raised, dist.device)
            hooks.after_iteration(IterationEnd(state, before, sched, _mean_over_ranks(terms), stopping))
            if (crossed(before, state.images_seen, cfg.checkpoints.every_images) or stopping
                    or state.iteration == total_iterations):
                rank_state = {"rng": rng_state(), "data": task.data.state_dict()}
                last_checkpoint = checkpoints.save(state, engines.generator, engines.discriminator, ema, rank_state,
                                                   task.export_metadata())
                hooks.on_checkpoint(last_checkpoint)
            if stopping:
                preempted = state.iteration < total_iterations
                break
        model_dir = _export_model(task, ema, out, state) if main and not preempted else None
        hooks.on_stop(RunEnd(state, preempted, last_checkpoint, model_dir))
    except BaseException:
        hooks.on_failure()
        raise
    finally:
        stop.restore()
    torch.distributed.barrier()
    return TrainResult(out, state.iteration, state.images_seen, preempted, last_checkpoint,
                       state.mlflow_run_id, time.perf_counter() - started, record.history)


def _mean_over_ranks(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(terms)
    values = _all_mean(torch.stack([terms[k] for k in names])).cpu().tolist() if names else []
    return dict(zip(names, values))


def _export_model(task: StageTask, ema: nn.Module, out: Path, state: TrainerState) -> Path:
    """The EMA generator and the discriminator (what the next stage and evaluation read), each written whole."""
    meta = {**task.export_metadata(), "images_seen": str(state.images_seen)}
    model_dir = out / MODEL_DIR
    for name, module in ((f"{task.name}.safetensors", ema), ("discriminator.safetensors", task.discriminator)):
        with atomic_path(model_dir / name) as tmp:
            save_module_safetensors(module, tmp, meta)
    return model_dir


def exit_code(result: TrainResult) -> int:
    return EXIT_PREEMPTED if result.preempted else 0


"""Training throughput of `p4d train psi3d` / `p4d train psi`: the stages' own iteration, timed.

Builds the real stage tasks (components/train/psi3d.py, psi.py) with random weights at the profile's
sizes, a synthetic FLAME head of FLAME's vertex count, and one fixed random batch (no data loading:
this measures the G + D compute), then runs iterations through the same DeepSpeed engines and
``run_iteration`` the trainer uses. Prints images/s, s/iteration, peak memory and achieved TFLOP/s
(FLOPs counted with torch.utils.flop_counter over one full lazy-regularisation cycle, averaged).

    python benchmarks/bench_train.py --device cuda --profile paper --batch-per-gpu 4 --iters 200
    python benchmarks/bench_train.py --device cpu --profile tiny --iters 3 --warmup 1   # smoke run

Ψ_3d is timed in its late phase by default (``--psi3d-images-seen 2000000``: neural rendering 128²,
adversarial on, renderer unfrozen), the most expensive one; Ψ runs at 128² throughout.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from components.assets.flame import flame_head_from_arrays
from components.assets.networks import build_network
from components.config import PROFILES, build_config
from components.train.conditions import FlameConditioner
from components.config.train import TrainConfig
from components.train.data import PsiBatch, Psi3dBatch
from components.train.engine import Precision, init_distributed
from components.train.loop import build_engines, run_iteration
from components.train.models import frozen
from components.train.psi import PsiTask
from components.train.psi3d import Psi3dTask
from model.cameras import LABEL_DIM, CameraDistribution, LabelLayout, sample_cameras
from model.deformation import FlameHead
from model.flame import LandmarkEmbedding, synthetic_flame_arrays


class CountFlops(TorchDispatchMode):
    """torch.utils.flop_counter's per-op FLOP formulas without its module tracker: FlopCounterMode's backward
    hooks cannot run inside the R1 ``autograd.grad`` (torch raises), so the counting is done at dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


class RepeatStream:
    """The same batch forever (resumable trivially); keeps data loading out of the measurement."""

    def __init__(self, batch) -> None:
        self.batch = batch

    def __next__(self):
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def flame_conditioner(cfg, device: torch.device) -> FlameConditioner:
    arrays = synthetic_flame_arrays(0, n_vertices=5023 if cfg.profile == "paper" else None)
    base = flame_head_from_arrays(arrays, cfg.networks.deformation)
    g = np.random.default_rng(0)
    landmarks = LandmarkEmbedding(torch.as_tensor(g.integers(0, arrays["f"].shape[0], 68)),
                                  torch.as_tensor(g.dirichlet(np.ones(3), 68), dtype=torch.float32))
    head = FlameHead(base.flame, base.proxy, base.parts, landmarks, cfg.networks.deformation).to(device)
    head.landmarks = LandmarkEmbedding(landmarks.face_idx.to(device), landmarks.bary.to(device))
    res = cfg.networks.image_resolution
    return FlameConditioner(head, res, res // 2)


def labels(n: int, g: torch.Generator, neck: float) -> torch.Tensor:
    out = torch.zeros(n, LABEL_DIM)
    out[:, LabelLayout.CAMERA] = sample_cameras(CameraDistribution(), n, g)["c"]
    out[:, LabelLayout.SHAPE] = torch.randn(n, 300, generator=g) * 0.3
    out[:, LabelLayout.EXPRESSION] = torch.randn(n, 100, generator=g) * 0.3
    out[:, LabelLayout.NECK_POSE] = torch.randn(n, 3, generator=g) * neck
    return out


def images(n: int, size: int, g: torch.Generator, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def psi3d_batch(cfg, n: int, device: torch.device) -> Psi3dBatch:
    g = torch.Generator().manual_seed(0)
    s, r = cfg.networks.image_resolution, cfg.synthesize.neural_rendering_resolution
    points = cfg.synthesize.triplane_points or 4000
    triplane = torch.cat([torch.rand(n, points, 3, generator=g) - 0.5,
                          torch.randn(n, points, cfg.networks.psi3d.plane_channels, generator=g)], dim=-1)
    return Psi3dBatch(images(n, s, g), images(n, s, g), images(n, r, g, 1), images(n, r, g), torch.rand(n, 1, r, r) + 3,
                      labels(n, g, 0.0), triplane).to(device)


def psi_batch(cfg, n: int, device: torch.device) -> PsiBatch:
    g = torch.Generator().manual_seed(1)
    s, m = cfg.networks.image_resolution, cfg.networks.psi.motion_dim
    return PsiBatch(images(n, s, g), torch.randn(n, m, generator=g), labels(n, g, 0.1),
                    images(n, s, g), torch.randn(n, m, generator=g), labels(n, g, 0.1)).to(device)


def build_task(stage: str, cfg, train_cfg: TrainConfig, micro: int, device: torch.device):
    torch.manual_seed(0)
    conditioner = flame_conditioner(cfg, device)
    lpips = frozen(build_network("lpips_vgg", cfg, device))
    arcface = frozen(build_network("arcface_r18", cfg, device))
    discriminator = build_network("discriminator", cfg, device).train()
    if stage == "psi3d":
        stream = RepeatStream(psi3d_batch(cfg, micro, device))
        return Psi3dTask(cfg, train_cfg, build_network("psi3d", cfg, device).train(), discriminator, lpips, arcface,
                         conditioner, stream, stream, device, Precision.of(cfg.deepspeed, device))
    stream = RepeatStream(psi_batch(cfg, micro, device))
    teacher = frozen(build_network("psi3d", cfg, device))
    pdfgc = frozen(build_network("pdfgc_motion_model", cfg, device))
    return PsiTask(cfg, train_cfg, build_network("psi", cfg, device).train(), discriminator, teacher, pdfgc, lpips,
                   arcface, conditioner, stream, stream, device, Precision.of(cfg.deepspeed, device))


def _annotate(obj, name: str, label: str) -> None:
    """Wrap ``obj.name`` in a profiler range (instance attribute; nn.Module.__call__ finds ``forward`` there)."""
    original = getattr(obj, name)

    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    setattr(obj, name, wrapped)


def print_profile(stage: str, task, engines, step, iters: int, device: torch.device) -> None:
    """Where an iteration's time goes: the loop's phases as ranges plus the top kernels, over ``iters`` iterations."""
    for obj, name, label in ((task, "generator_micro_step", "G micro-step: forward + losses"),
                             (task, "_teacher_targets", "Ψ_3d teacher targets (no grad)"),
                             (task, "reconstruction_step", "G losses"),
                             (engines.generator, "backward", "G backward"), (engines.generator, "step", "G optimizer"),
                             (engines.discriminator, "forward", "D forward (+R1 when due)"),
                             (engines.discriminator, "backward", "D backward"),
                             (engines.discriminator, "step", "D optimizer")):
        if hasattr(obj, name):
            _annotate(obj, name, label)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True, acc_events=True) as prof:
        for i in range(iters):
            step(i)
        _sync(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"\n{stage}: profile of {iters} iterations (totals over all of them)", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70), flush=True)
    print(f"\n{stage}: the same, aten ops by input shape", flush=True)
    by_shape = prof.key_averages(group_by_input_shape=True)
    print(by_shape.table(sort_by="self_" + key, row_limit=30, max_name_column_width=40, max_shapes_column_width=110), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(stage: str, cfg, train_cfg: TrainConfig, dist, images_seen: int, iters: int, warmup: int,
          flop_iters: int, max_seconds: float = 0.0, profile_iters: int = 0) -> dict:
    batch = cfg.psi3d.batch if stage == "psi3d" else cfg.psi.batch
    micro = batch // (dist.world_size * cfg.deepspeed.gradient_accumulation_steps)
    task = build_task(stage, cfg, train_cfg, micro, dist.device)
    engines = build_engines(task, cfg, train_cfg, dist)
    sched = task.schedule(images_seen)
    generator = torch.Generator(device=dist.device).manual_seed(0)

    def step(i: int):
        return run_iteration(task, engines, sched, i, generator, train_cfg.r1_every)

    for i in range(warmup):
        step(i + 1)  # odd iterations first: compile / allocate without the lazy terms
    _sync(dist.device)
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)
    start = time.perf_counter()
    losses, done = [], 0
    for i in range(iters):
        terms = step(i)
        losses.append(float(terms["G/total"]))  # a host sync per iteration, as the trainer's logging does
        done = i + 1
        elapsed = time.perf_counter() - start
        if dist.is_main and done % 25 == 0:
            print(f"  {stage}: {done}/{iters} iterations, {elapsed / done:.3f} s/iteration, "
                  f"G/total {np.mean(losses[-25:]):.4f} (mean of the last 25)", flush=True)
        if max_seconds and elapsed > max_seconds:
            break
    _sync(dist.device)
    seconds = (time.perf_counter() - start) / done
    peak = torch.cuda.max_memory_allocated(dist.device) if dist.device.type == "cuda" else 0
    with CountFlops() as counter:
        for i in range(flop_iters):
            step(i)
    flops = counter.total / flop_iters
    if profile_iters and dist.is_main:
        print_profile(stage, task, engines, step, profile_iters, dist.device)
    return {
        "stage": stage, "profile": cfg.profile, "world_size": dist.world_size, "global_batch": batch,
        "micro_batch_per_gpu": micro, "neural_rendering_resolution": sched.neural_rendering_resolution,
        "adversarial": sched.adversarial, "precision": "bf16 autocast" if engines.ds_config["torch_autocast"]["enabled"]
        else "fp32", "zero_stage": cfg.deepspeed.zero_stage, "seconds_per_iteration": seconds,
        "images_per_s": batch / seconds, "images_per_s_per_gpu": batch / seconds / dist.world_size,
        "peak_memory_gb": peak / 2**30, "tflop_per_iteration": flops / 1e12,
        "achieved_tflops_per_gpu": flops / seconds / 1e12, "iterations": done,
        "loss_first_25": float(np.mean(losses[:25])), "loss_last_25": float(np.mean(losses[-25:])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("psi3d", "psi", "both"), default="both")
    parser.add_argument("--profile", choices=PROFILES, default="paper")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-per-gpu", type=int, default=4, help="micro-batch per GPU (global = this x GPUs)")
    parser.add_argument("--iters", type=int, default=200, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop the timed loop after this long (0: run all --iters); the row says how many ran")
    parser.add_argument("--flop-iters", type=int, default=0, help="iterations under the FLOP counter (0: r1_every)")
    parser.add_argument("--psi3d-images-seen", type=int, default=2_000_000, help="Ψ_3d schedule phase to time")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--profile-iters", type=int, default=0,
                        help="after timing, profile this many iterations and print where the time goes")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2), default=None)
    args = parser.parse_args()

    dist = init_distributed(args.device)
    world = dist.world_size
    overrides = {"psi3d": {"batch": args.batch_per_gpu * world}, "psi": {"batch": args.batch_per_gpu * world},
                 "deepspeed": {"gradient_accumulation_steps": 1, "bf16": not args.fp32}}
    if args.zero_stage is not None:
        overrides["deepspeed"]["zero_stage"] = args.zero_stage
    if args.profile == "tiny":
        motion = build_config("tiny").networks.pdfgc.motion_dim  # tiny PD-FGC is smaller than Ψ's default
        overrides["networks"] = {"psi3d": {"motion_dim": motion}, "psi": {"motion_dim": motion}}
    cfg = build_config(args.profile, overrides)
    train_cfg = cfg.train
    flop_iters = args.flop_iters or math.lcm(train_cfg.r1_every, train_cfg.density_reg_every,
                                             train_cfg.cross_view_every)
    stages = ("psi3d", "psi") if args.stage == "both" else (args.stage,)
    rows = []
    for stage in stages:
        seen = args.psi3d_images_seen if stage == "psi3d" else 0
        row = bench(stage, cfg, train_cfg, dist, seen, args.iters, args.warmup, flop_iters, args.max_seconds,
                    args.profile_iters)
        rows.append(row)
        gc.collect()  # the first stage's networks and engines go before the second stage's are built
        if dist.device.type == "cuda":
            torch.cuda.empty_cache()
        if dist.is_main:
            print(json.dumps(row), flush=True)
    if dist.is_main:
        print("\n| stage | GPUs | batch/GPU | res | precision | iters | img/s | img/s/GPU | s/iter | peak GB | TFLOP/iter "
              "| TFLOP/s/GPU | G/total first→last 25 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['stage']} | {r['world_size']} | {r['micro_batch_per_gpu']} | {r['neural_rendering_resolution']} "
                  f"| {r['precision']} | {r['iterations']} | {r['images_per_s']:.2f} | {r['images_per_s_per_gpu']:.2f} "
                  f"| {r['seconds_per_iteration']:.3f} | {r['peak_memory_gb']:.1f} | {r['tflop_per_iteration']:.2f} "
                  f"| {r['achieved_tflops_per_gpu']:.1f} | {r['loss_first_25']:.3f} → {r['loss_last_25']:.3f} |")


if __name__ == "__main__":
    main()

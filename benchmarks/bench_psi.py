"""Speed of Ψ: per-frame rendering (source cached), throughput, and one G+D training step.

Prints a Markdown table (images/s, ms, peak memory, achieved TFLOP/s) for fp32 and bf16 autocast.
Random weights at the chosen profile's sizes (paper = official sizes). Run on the GPU:

    python benchmarks/bench_psi.py --device cuda --profile paper
    python benchmarks/bench_psi.py --device cpu --profile tiny --iters 2   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.config import PROFILES, build_config
from model.cameras import CameraDistribution, sample_cameras
from model.networks.discriminator import DualDiscriminator
from model.networks.lpips import LPIPS
from model.networks.psi import Psi


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _time(fn, device: str, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _inputs(cfg, batch: int, device: str):
    s = cfg.networks.psi.img_resolution
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, s, s, generator=g).mul(2).sub(1).to(device)
    motion = torch.randn(batch, cfg.networks.psi.motion_dim, generator=g).to(device)
    c = sample_cameras(CameraDistribution(), batch, g)["c"].to(device)
    return image, motion, c


def bench_render(psi: Psi, cfg, batch: int, dtype: str, device: str, iters: int, warmup: int, res: int) -> dict:
    image, motion, c = _inputs(cfg, batch, device)
    with torch.no_grad(), _autocast(device, dtype):
        source = psi.encode_source(image, motion)

        def frame():
            return psi.render_frame(source, motion, c, res)

        seconds = _time(frame, device, iters, warmup)
        flops = _flops(frame)
    return {"seconds": seconds, "images_per_s": batch / seconds, "flops": flops}


def bench_train_step(
    psi, disc, lpips, cfg, batch: int, dtype: str, device: str, iters: int, warmup: int, res: int, count_flops: bool = True
) -> dict:
    image, motion, c = _inputs(cfg, batch, device)
    target = image.clone()
    g_opt = torch.optim.Adam(psi.parameters(), lr=1e-4, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.0, 0.99))
    uv = torch.rand(batch, 3, res, res, device=device)

    def step(r1_reg: bool = True):
        # G step: reconstruction (L1 + LPIPS on SR and raw) + adversarial.
        with _autocast(device, dtype):
            out = psi(image, motion, motion, c, res)
            raw_target = torch.nn.functional.interpolate(target, size=(res, res), mode="bilinear", antialias=True)
            loss = (out["image"] - target).abs().mean() + (out["image_raw"] - raw_target).abs().mean()
            loss = loss + lpips(out["image"], target).mean() + lpips(out["image_raw"], raw_target).mean()
            logits = disc(out["image"], c, out["image_raw"], uv, out["seg"])
            loss = loss + 0.01 * torch.nn.functional.softplus(-logits).mean()
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        # D step: fake (detached) + real with R1.
        real = target.detach().requires_grad_(True)
        with _autocast(device, dtype):
            fake_logits = disc(out["image"].detach(), c, out["image_raw"].detach(), uv, out["seg"].detach())
            real_logits = disc(real, c, raw_target, uv, out["seg"].detach())
            d_loss = torch.nn.functional.softplus(fake_logits).mean() + torch.nn.functional.softplus(-real_logits).mean()
        if r1_reg:
            (r1,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            d_loss = d_loss + 0.5 * r1.square().sum([1, 2, 3]).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()

    seconds = _time(step, device, iters, warmup)
    # FlopCounterMode's module hooks cannot follow the R1 double-backward: the FLOP count (and so the
    # TFLOP/s column) of the training step leaves R1 out, while the timing includes it.
    flops = _flops(lambda: step(r1_reg=False)) if count_flops else float("nan")
    return {"seconds": seconds, "images_per_s": batch / seconds, "flops": flops}


def _trace_train_step(psi, disc, lpips, cfg, batch: int, device: str, res: int) -> None:
    """Where one fp32 training step spends its time (torch.profiler, top ops by device time)."""
    from torch.profiler import ProfilerActivity, profile

    psi.train()
    bench_train_step(psi, disc, lpips, cfg, batch, "fp32", device, 1, 1, res, count_flops=False)  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        bench_train_step(psi, disc, lpips, cfg, batch, "fp32", device, 1, 0, res, count_flops=False)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", default="paper", choices=PROFILES)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--render-batches", default="1,8")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--trace", action="store_true", help="print the top CUDA kernels of one training step")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = build_config(args.profile)
    res = cfg.psi.neural_resolution if args.profile == "paper" else cfg.networks.psi.neural_rendering_resolution
    psi = Psi(cfg.networks.psi).to(args.device)
    disc = DualDiscriminator(cfg.networks.discriminator).to(args.device)
    lpips = LPIPS(cfg.networks.lpips).to(args.device).requires_grad_(False)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\nΨ benchmark: profile {args.profile}, neural resolution {res}, device {device_name}, torch {torch.__version__}\n")
    print("| what | dtype | batch | ms / call | images/s | TFLOP/s achieved | peak GiB |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows = []

    def report(row: dict) -> None:
        # printed as soon as measured, so a run stopped by a time limit still reports what it finished
        rows.append(row)
        tflops = row["flops"] / row["seconds"] / 1e12
        print(f"| {row['what']} | {row['dtype']} | {row['batch']} | {row['seconds'] * 1e3:.1f} | "
              f"{row['images_per_s']:.1f} | {tflops:.1f} | {row['peak_gib']:.2f} |", flush=True)

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")

    for dtype in args.dtypes.split(","):
        for batch in [int(b) for b in args.render_batches.split(",")]:
            psi.eval()
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            r = bench_render(psi, cfg, batch, dtype, args.device, args.iters, args.warmup, res)
            report({"what": "Ψ render_frame (source cached)", "dtype": dtype, "batch": batch, **r, "peak_gib": peak()})
        psi.train()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        r = bench_train_step(psi, disc, lpips, cfg, args.train_batch, dtype, args.device, args.iters, args.warmup, res)
        report({"what": "Ψ train step (G + D, L1+LPIPS+adv+R1)", "dtype": dtype, "batch": args.train_batch, **r,
                "peak_gib": peak()})
    if args.trace:
        _trace_train_step(psi, disc, lpips, cfg, args.train_batch, args.device, res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

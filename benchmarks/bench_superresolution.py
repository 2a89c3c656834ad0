"""Speed of the 8X super-resolution with one style for the whole batch against one style per image.

Ψ styles every SR layer with its w_avg and GenHead with all-ones styles, so every image of a batch has the same
modulated weights. Passing that style once (ws of batch 1) lets ``modulated_conv2d`` build the weights once and
run each layer as one dense convolution; passing it once per image (ws of batch B, what Ψ did before) runs the
per-sample path: a grouped convolution with B weight copies in eval mode (``fused_modconv``), or activation-sized
scalings before and after each convolution in training mode. Same inputs, same weights, same flags on both sides;
the column "max |Δ|" is the largest difference between the two outputs.

Modes: ``eval`` = forward without gradient (the serving path, as Ψ's ``render_frame`` runs it); ``train`` =
forward + backward of the output's mean square (gradients to the input features and every SR weight).
Random weights at the official sizes (SuperresolutionHybrid8XDC: 32-channel 128² features -> 512², blocks of
256 and 128 channels; on CUDA both blocks run in fp16 as the official sr_num_fp16_res=4 says).

    python benchmarks/bench_superresolution.py --device cuda
    python benchmarks/bench_superresolution.py --device cuda --tf32 default --batches 1,8 --modes eval
    python benchmarks/bench_superresolution.py --device cpu --batches 2 --iters 2 --warmup 1   # CPU run
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(HERE.parent))

from model.networks.superresolution import SuperresolutionConfig, SuperresolutionHybrid8XDC  # noqa: E402
from timing import set_flags, timed  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def run_sr(sr: SuperresolutionHybrid8XDC, feat: torch.Tensor, ws: torch.Tensor, mode: str,
           dtype: torch.dtype | None) -> torch.Tensor:
    """One SR call in ``mode``; returns the image (detached)."""
    device_type = feat.device.type
    autocast = (torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
    if mode == "eval":
        with torch.no_grad(), autocast:
            return sr(feat[:, :3], feat, ws)
    feat = feat.detach().requires_grad_()
    with autocast:
        image = sr(feat[:, :3], feat, ws)
    image.float().square().mean().backward()
    return image.detach()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    parser.add_argument("--batches", default="1,8", help="images per call, comma-separated")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--modes", default="eval,train", help="eval (no gradient) and/or train (forward + backward)")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tf32", choices=("off", "default", "on"), default="off",
                        help="off: no TF32 in matmul nor cuDNN; default: PyTorch's; on: TF32 in both")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning (default: off)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    flags = set_flags(device, args.tf32, args.cudnn_benchmark)
    torch.manual_seed(0)
    cfg = SuperresolutionConfig()
    sr = SuperresolutionHybrid8XDC(cfg).to(device)
    name = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    print(f"\nSuper-resolution, shared style vs one style per image: {name}torch {torch.__version__}, {flags}; "
          f"{cfg.channels}-channel {cfg.input_resolution}² -> {cfg.img_resolution}², median of {args.iters} calls "
          f"after {args.warmup} warm-up calls\n")
    print("| precision | batch | mode | style per image ms | shared style ms | speed-up | max abs Δ |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for dtype_name in args.dtypes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            feat = torch.rand(batch, cfg.channels, cfg.input_resolution, cfg.input_resolution, device=device) * 2 - 1
            w = torch.randn(1, 1, cfg.w_dim, device=device)
            for mode in args.modes.split(","):
                sr.train(mode == "train")
                times, images = [], []
                for ws in (w.expand(batch, -1, -1), w):
                    seconds, image = timed(lambda: run_sr(sr, feat, ws, mode, DTYPES[dtype_name]), device,
                                           args.iters, args.warmup)
                    sr.zero_grad(set_to_none=True)
                    times.append(seconds)
                    images.append(image.float())
                delta = (images[0] - images[1]).abs().max().item()
                print(f"| {dtype_name} | {batch} | {mode} | {times[0] * 1e3:.1f} | {times[1] * 1e3:.1f} | "
                      f"{times[0] / times[1]:.2f}x | {delta:.1e} |", flush=True)
    print("\nstyle per image = ws (B, 1, w_dim), every row the same w; shared = ws (1, 1, w_dim). Batch 1 runs "
          "the same path on both sides.")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())

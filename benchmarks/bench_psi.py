"""Speed of Ψ on the serving path: a cached source, one driving frame -> one 512² image, every term included.

What one "frame" is here is exactly what ``p4d animate``, the MLflow model and the Triton backend run per
driving frame (``Animator.render_conditions``): the FLAME head posed by the frame's label, the neck-pose
rotation field built from it (24³ + 8³ grids), Ψ's motion-conditioned triplanes, volume rendering with the
field as ``deform_fn``, super-resolution to 512², and the uint8 copy back to the host. (The render cameras,
with the neck rotation split off, are computed for the whole clip at once by ``frame_conditions`` before
rendering and are an input here.) Two breakdown columns show where the time goes: the conditioner alone
(FLAME + neck field) and Ψ's ``render_frame`` alone with no neck field.

Flags are stated in the table header, as read back from torch. The default is ``--tf32 off``: no TF32 in
matmuls nor in cuDNN convolutions, cudnn.benchmark off. (PyTorch's own defaults differ in one flag: they allow
TF32 in cuDNN convolutions; ``--tf32 default`` leaves them as they are, ``--tf32 on`` allows TF32 everywhere.)
bf16 means autocast to bf16 (the engine's default on CUDA); its output is compared with the fp32 output for the
same inputs (PSNR of the uint8 frames, the tolerance we hold: >= 40 dB).

Random weights at the chosen profile's sizes (paper = the official sizes); FLAME is the synthetic bundle's
(the field's cost depends on the mesh size, not on its values). The training step is NOT timed here: the
step that matters is the trainer's real one (all loss terms, D re-running G, lazy R1), timed by
``benchmarks/bench_train.py``.

    python benchmarks/bench_psi.py --device cuda --profile paper
    python benchmarks/bench_psi.py --device cuda --profile paper --tf32 default   # PyTorch's own flags
    python benchmarks/bench_psi.py --device cuda --profile paper --trace bf16:8   # top kernels of one call
    python benchmarks/bench_psi.py --device cpu --profile tiny --iters 2           # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # run as a script from a checkout that is not installed
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_animate import write_assets, write_psi  # noqa: E402  (the same synthetic bundle + random Ψ)
from timing import set_flags, sync, timed  # noqa: E402
from components.config import PROFILES  # noqa: E402
from model.cameras import CameraDistribution, LabelLayout, sample_cameras  # noqa: E402

LANDMARKS = HERE / "data" / "animate_landmarks_512.npz"  # the astronaut's MediaPipe points (embedding only)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def driving_inputs(motion_dim: int, batch: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(motion (B, motion_dim), labels (B, 437), render cameras (B, 25)) of plausible driving frames: a turned
    neck (so the field is built, as for any real frame), some expression and jaw, cameras of the training
    distribution."""
    g = torch.Generator().manual_seed(seed)
    motion = torch.randn(batch, motion_dim, generator=g)
    labels = torch.zeros(batch, 437)
    cams = sample_cameras(CameraDistribution(), batch, g)["c"]
    labels[:, LabelLayout.CAMERA] = cams
    labels[:, LabelLayout.SHAPE] = 0.5 * torch.randn(batch, 300, generator=g)
    labels[:, LabelLayout.EXPRESSION] = 0.5 * torch.randn(batch, 100, generator=g)
    labels[:, LabelLayout.NECK_POSE] = 0.15 * torch.randn(batch, 3, generator=g)
    labels[:, LabelLayout.JAW_POSE.start] = 0.1 * torch.rand(batch, generator=g)
    return motion.numpy(), labels.numpy(), cams.numpy()


def make_source(animator, seed: int = 0):
    """A cached source from a random image (the encoder's cost is paid once per video and not timed)."""
    from components.animate.engine import Source

    g = torch.Generator().manual_seed(seed)
    s = animator.image_size
    image = torch.rand(1, 3, s, s, generator=g).mul(2).sub(1).to(animator.device)
    motion = torch.randn(1, animator.motion_dim, generator=g).to(animator.device)
    with torch.no_grad(), animator._autocast():
        features = animator.psi.encode_source(image, motion)
    label = np.zeros(437, np.float32)
    return Source(features, np.zeros((s, s, 3), np.uint8), label, motion[0].float().cpu().numpy())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def bench_one(animator, source, batch: int, iters: int, warmup: int) -> dict:
    """The serving call and its two parts at one batch size."""
    dev = animator.device
    motion, labels, cams = driving_inputs(animator.motion_dim, batch)
    serve = lambda: animator.render_conditions(source, motion, labels, cams)  # noqa: E731
    label_t = torch.from_numpy(labels).to(dev)
    cam_t = torch.from_numpy(cams).to(dev)
    motion_t = torch.from_numpy(motion).to(dev)
    feats = animator._expand(source.features, batch)
    res = animator.neural_rendering_resolution

    def conditions():
        return animator.conditioner(label_t, camera=cam_t)

    def network():
        with torch.no_grad(), animator._autocast():
            return animator.psi.render_frame(feats, motion_t, cam_t, res)

    with torch.no_grad():
        row = {
            "batch": batch,
            "serve_s": timed(serve, dev, iters, warmup)[0],
            "conditions_s": timed(conditions, dev, iters, warmup)[0],
            "network_s": timed(network, dev, iters, warmup)[0],
            "network_flops": _flops(network),
        }
    row["images_per_s"] = batch / row["serve_s"]
    row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    row["frames"] = serve()
    return row


def breakdown(animator, source, batch: int, iters: int, warmup: int) -> dict[str, float]:
    """ms per call of the parts of Ψ's render_frame: motion-conditioned triplanes, volume rendering (no neck
    field) from cached planes, super-resolution."""
    from dataclasses import replace

    dev = animator.device
    psi = animator.psi
    motion, _, cams = driving_inputs(animator.motion_dim, batch)
    motion_t, cam_t = torch.from_numpy(motion).to(dev), torch.from_numpy(cams).to(dev)
    feats = animator._expand(source.features, batch)
    res = animator.neural_rendering_resolution
    with torch.no_grad(), animator._autocast():
        planes = psi.planes(feats, motion_t)
        cached = replace(feats, planes=planes)
        raw = psi.render_frame(cached, motion_t, cam_t, res, super_resolve=False)
        ws = psi.w_avg.reshape(1, 1, -1)  # one style for the batch, as render_frame passes it
        parts = {
            "triplanes": lambda: psi.planes(feats, motion_t),
            "volume rendering": lambda: psi.render_frame(cached, motion_t, cam_t, res, super_resolve=False),
            "super-resolution": lambda: psi.superresolution(raw["image_raw"], raw["image_feature"], ws),
        }
        return {name: timed(fn, dev, iters, warmup)[0] * 1e3 for name, fn in parts.items()}


def trace(animator, source, batch: int) -> None:
    """Top kernels (by device time) of one serving call."""
    from torch.profiler import ProfilerActivity, profile

    motion, labels, cams = driving_inputs(animator.motion_dim, batch)
    for _ in range(2):
        animator.render_conditions(source, motion, labels, cams)
    sync(animator.device)
    cuda = animator.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        animator.render_conditions(source, motion, labels, cams)
        sync(animator.device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=20, max_name_column_width=50,
                                                              max_shapes_column_width=70))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    parser.add_argument("--profile", default="paper", choices=PROFILES)
    parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--batches", default="1,8", help="frames per call")
    parser.add_argument("--tf32", choices=("off", "default", "on"), default="off",
                        help="off: no TF32 in matmul nor cuDNN; default: PyTorch's (cuDNN convolutions may use TF32, "
                             "matmuls not); on: TF32 in both")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning (default: off)")
    parser.add_argument("--trace", default=None, metavar="DTYPE:BATCH", help="print the top kernels of one call")
    parser.add_argument("--breakdown", action="store_true", help="also time Ψ's parts (triplanes, rendering, SR)")
    parser.add_argument("--compile-modules", action="store_true",
                        help="torch.compile Ψ's per-frame modules (the engine's animate.compile option)")
    parser.add_argument("--fused-field", action="store_true",
                        help="CUDA: triplane sampling + radiance decoder in one Triton kernel (animate.fused_field)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    from components.animate import Animator
    from components.config.animate import AnimateConfig

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    flags = set_flags(device, args.tf32, args.cudnn_benchmark)
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_psi_") as tmp:
        work = Path(tmp)
        points = np.load(LANDMARKS)["points"][0].astype(np.float64)
        assets = write_assets(work / "assets", args.profile, points)
        model, params = write_psi(work, args.profile)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        print(f"\nΨ serving-path benchmark: {name}, torch {torch.__version__}, profile {args.profile}, "
              f"Ψ {params / 1e6:.1f} M params (random), {flags}; animate.compile {args.compile_modules}, "
              f"animate.fused_field {args.fused_field and device.type == 'cuda'}; median of {args.iters} calls "
              f"after {args.warmup} warm-up calls\n")
        print("| precision | batch | serve ms/call | serve img/s | conditioner (FLAME + neck field) ms | Ψ render_frame ms (no neck) "
              "| Ψ TFLOP/s | peak GiB | PSNR vs fp32 |")
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        reference: dict[int, np.ndarray] = {}
        for dtype in args.dtypes.split(","):
            animator = Animator.load(model, assets, str(device), dtype=DTYPES[dtype],
                                     options=AnimateConfig(compile=args.compile_modules,
                                                           fused_field=args.fused_field))
            source = make_source(animator)
            for batch in batches:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                row = bench_one(animator, source, batch, args.iters, args.warmup)
                frames = row.pop("frames")
                if dtype == "fp32":
                    reference[batch] = frames
                quality = psnr(frames, reference[batch]) if batch in reference else float("nan")
                row.update(dtype=dtype, psnr_vs_fp32=quality, flags=flags, fused_field=animator.psi.fused_field,
                           compiled=args.compile_modules)
                rows.append(row)
                print(f"| {dtype} | {batch} | {row['serve_s'] * 1e3:.1f} | {row['images_per_s']:.1f} | "
                      f"{row['conditions_s'] * 1e3:.1f} | {row['network_s'] * 1e3:.1f} | "
                      f"{row['network_flops'] / row['network_s'] / 1e12:.1f} | {row['peak_gib']:.2f} | "
                      f"{quality:.1f} |", flush=True)
            if args.breakdown:
                for batch in batches:
                    parts = breakdown(animator, source, batch, args.iters, args.warmup)
                    print(f"  {dtype} batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()))
                    rows.append({"dtype": dtype, "batch": batch, "breakdown_ms": parts})
            if args.trace and args.trace.split(":")[0] == dtype:
                trace(animator, source, int(args.trace.split(":")[1]))
            del animator, source
    print("\nserve = Animator.render_conditions: FLAME + neck-pose field per frame + Ψ (triplanes, "
          "volume rendering through the field, super-resolution) + uint8 to host. PSNR: bf16 frames against the "
          "fp32 frames of the same inputs (inf = identical).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())

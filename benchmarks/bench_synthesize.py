"""Speed of `synthesize`: GenHead multi-view rendering (images/s) and the shard encoding that follows it.

Random GenHead weights at the profile's sizes (paper = official sizes) and a synthetic FLAME head with
the real vertex count (5023) at paper size. Per (dtype, batch): the GenHead forward with the FLAME
deformer and the triplane-target sampling (what the sampler does per chunk), then PNG/npy/tar encoding
of the same views on the CPU. Prints a Markdown table; ``--json`` also writes the numbers.

    python benchmarks/bench_synthesize.py --device cuda --profile paper --batch 8 32
    python benchmarks/bench_synthesize.py --device cpu --profile tiny --iters 2      # smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from components.config import PROFILES, build_config
from components.synthesize.conditions import LabelPool, draw_identity
from components.assets.flame import flame_head_from_arrays as build_flame_head
from components.synthesize.sampler import GenHeadSampler
from components.synthesize.shards import encode_view, tar_bytes, view_key
from model.cameras import CameraDistribution, LabelLayout, sample_cameras
from model.deformation import DeformationConfig
from model.flame import synthetic_flame_arrays
from model.networks.genhead import GenHead

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _labels(n: int) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(n, 437)
    labels[:, LabelLayout.CAMERA] = sample_cameras(CameraDistribution(), n, g)["c"]
    labels[:, LabelLayout.SHAPE] = torch.randn(n, 300, generator=g) * 0.5
    labels[:, LabelLayout.EXPRESSION] = torch.randn(n, 100, generator=g) * 0.5
    return labels.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[8], help="views per GenHead forward")
    parser.add_argument("--dtype", choices=tuple(DTYPES), nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--neural-resolution", type=int, default=None, help="default: the profile's synthesize value")
    parser.add_argument("--triplane-points", type=int, default=None, help="default: the profile's value; 0 = off")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--fused-field", action="store_true",
                        help="CUDA: part-triplane sampling + decoder in one Triton kernel (synthesize.fused_field)")
    parser.add_argument("--vertex-search-kernel", default="torch", choices=("torch", "triton"),
                        help="the part field's float32 candidate pass (triton: CUDA only; model/deformation/nearest_top2.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = build_config(args.profile)
    device = torch.device(args.device)
    base = cfg.synthesize
    update = {k: v for k, v in {"neural_rendering_resolution": args.neural_resolution,
                                "triplane_points": args.triplane_points}.items() if v is not None}
    update["fused_field"] = args.fused_field
    base = base.model_copy(update=update)
    torch.manual_seed(0)
    genhead = GenHead(cfg.networks.genhead)
    n_vertices = 5023 if args.profile == "paper" else None
    deformation = DeformationConfig() if args.profile == "paper" else DeformationConfig.tiny()
    deformation = deformation.model_copy(update={"vertex_search_kernel": args.vertex_search_kernel})
    head = build_flame_head(synthetic_flame_arrays(0, n_vertices=n_vertices), deformation)
    pool = LabelPool.from_arrays([("bench", _labels(64))])

    rows = []
    print(f"GenHead synthesis, profile {args.profile}, device {device}, neural {base.neural_rendering_resolution}, "
          f"image {cfg.networks.genhead.img_resolution}, triplane points {base.triplane_points}, "
          f"vertex search kernel {args.vertex_search_kernel}, "
          f"fused field {args.fused_field and device.type == 'cuda'}")
    print("| dtype | batch | render images/s | ms / batch | encode images/s (CPU) | peak GPU GiB |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtype:
        for batch in args.batch:
            synth = base.model_copy(update={"batch": batch, "dtype": DTYPES[dtype], "views": 1})
            sampler = GenHeadSampler(genhead, head, synth, cfg.networks.genhead.truncation_psi, device)
            conds = [draw_identity(pool, i, synth, cfg.cameras, cfg.camera_mix_fitted_prob, sampler.z_dim)
                     for i in range(batch)]
            views = [(c, 0) for c in conds]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for i in range(args.warmup):
                sampler.render(views, seed=i)
            _sync(device)
            start = time.perf_counter()
            for i in range(args.iters):
                renders = sampler.render(views, seed=1000 + i)
            _sync(device)
            seconds = (time.perf_counter() - start) / args.iters
            renders = renders.to("cpu")
            start = time.perf_counter()
            members = []
            for j, cond in enumerate(conds):
                tri = None if renders.triplane is None else renders.triplane[j]
                files = encode_view(renders.image[j], renders.image_raw[j], renders.seg[j], renders.background[j],
                                    renders.depth[j], cond.labels()[0], tri, {"identity": j}, synth.png_compress_level)
                members.extend((f"{view_key(j, 0)}.{ext}", data) for ext, data in files)
            shard = tar_bytes(members)
            encode_s = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            row = {"profile": args.profile, "device": str(device), "dtype": dtype, "batch": batch,
                   "render_images_per_s": batch / seconds, "ms_per_batch": seconds * 1e3,
                   "encode_images_per_s": batch / encode_s, "bytes_per_view": len(shard) / batch,
                   "peak_gpu_gib": peak}
            rows.append(row)
            print(f"| {dtype} | {batch} | {row['render_images_per_s']:.2f} | {row['ms_per_batch']:.0f} | "
                  f"{row['encode_images_per_s']:.1f} | {peak:.1f} |", flush=True)
    print(f"stored bytes per view: {rows[-1]['bytes_per_view'] / 1e3:.0f} kB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

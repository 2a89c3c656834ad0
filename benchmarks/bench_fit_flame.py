"""Speed of the fit_flame stage: landmarks + 512 alignment (CPU, MediaPipe) and batched FLAME fitting.

Prints a Markdown table of items/s. Landmarks run on photos made from ``skimage.data.astronaut()``
(flipped / shifted / rescaled copies); the fit runs on landmarks rendered from known FLAME
parameters on the synthetic head (the real FLAME gives the same cost: only the landmark triangles
are posed), so it also reports the mean landmark error reached.

    python benchmarks/bench_fit_flame.py                                 # CPU, paper settings
    python benchmarks/bench_fit_flame.py --device cuda --batch 64 256 1024 --skip-landmarks
    python benchmarks/bench_fit_flame.py --stage 64 --workers 0 2 --batch 64   # end to end
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from components.config import PROFILES, build_config
from components.config.fit_flame import FitFlameConfig
from components.fit_flame.fitting import FlameFitter
from components.assets.synthetic_embedding import random_front_embedding
from components.fit_flame.synthetic import random_fit_problem
from model.flame import LandmarkEmbedding, synthetic_flame_arrays


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_landmarks(cfg: FitFlameConfig, n_images: int) -> tuple[float, float]:
    """(items/s of landmarks + POS alignment + crop, items/s of the landmarks alone)."""
    from PIL import Image
    from skimage import data

    from components.landmarks import FaceLandmarker
    from components.fit_flame.prepare import align_image

    base = data.astronaut()
    images = []
    for i in range(n_images):
        img = base[:, ::-1] if i % 2 else base
        img = np.roll(img, 7 * i, axis=1)
        side = 512 + 64 * (i % 4)
        images.append(np.ascontiguousarray(np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))))
    with FaceLandmarker(cfg.detect_max_side, cfg.min_detection_confidence, cfg.mesh_input_px) as landmarker:
        align_image(images[0], landmarker, cfg)  # warm-up (model load)
        start = time.perf_counter()
        for img in images:
            landmarker(img, cfg.min_face_px)
        only_landmarks = n_images / (time.perf_counter() - start)
        start = time.perf_counter()
        for img in images:
            align_image(img, landmarker, cfg)
        full = n_images / (time.perf_counter() - start)
    return full, only_landmarks


def bench_stage(cfg: FitFlameConfig, n_images: int, workers: int, device: str, batch: int) -> float:
    """End-to-end items/s of ``run()`` on photos (decode, landmarks, crop, fit, PNG + npy writes)."""
    import json
    import tempfile
    from pathlib import Path

    from PIL import Image
    from skimage import data

    from components.assets.manifest import spec
    from components.landmarks import FaceLandmarker
    from components.fit_flame.stage import run
    from components.assets.synthetic_embedding import synthetic_mediapipe_embedding
    from model.flame import write_flame_pickle

    base = data.astronaut()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        arrays = synthetic_flame_arrays(0)
        (root / "assets/flame").mkdir(parents=True)
        write_flame_pickle(root / "assets" / spec("flame_model").path, arrays)
        with FaceLandmarker() as landmarker:
            face = landmarker(base)
        points = np.concatenate([face.points, np.zeros((len(face.points), 1))], axis=1)
        np.savez(root / "assets" / spec("mediapipe_embedding").path, **synthetic_mediapipe_embedding(arrays, points))
        (root / "assets/bundle.json").write_text(json.dumps({"synthetic": True}))
        (root / "in").mkdir()
        for i in range(n_images):
            img = np.roll(base[:, ::-1] if i % 2 else base, 5 * i, axis=1)
            Image.fromarray(np.ascontiguousarray(img)).save(root / "in" / f"{i:05d}.jpg", quality=92)
        cfg = cfg.model_copy(update={"max_failure_ratio": 1.0})
        start = time.perf_counter()
        run(cfg, str(root / "in"), root / "assets", root / "out", device=device, batch=batch, progress=False,
            workers=workers)  # fmt: skip
        return n_images / (time.perf_counter() - start)


def bench_fit(cfg: FitFlameConfig, batch: int, device: str, repeats: int) -> tuple[float, float]:
    """(items/s, median mean-landmark error in px at 512) of one batched fit."""
    arrays = synthetic_flame_arrays(0, n_vertices=5023)
    emb_arrays = random_front_embedding(arrays)
    embedding = LandmarkEmbedding(
        torch.as_tensor(emb_arrays["lmk_face_idx"]),
        torch.as_tensor(emb_arrays["lmk_b_coords"], dtype=torch.float32),
        torch.as_tensor(emb_arrays["landmark_indices"]),
    )
    targets, _ = random_fit_problem(arrays, embedding, batch, cfg.crop_size, seed=batch)
    fitter = FlameFitter(arrays, embedding, cfg).to(device)
    targets = targets.to(device)
    fitter(targets[: min(batch, 8)], cfg.crop_size)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        result = fitter(targets, cfg.crop_size)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return batch / seconds, float(result.reprojection_px.median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", choices=PROFILES, default="paper")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--images", type=int, default=16, help="photos for the landmark benchmark")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--skip-landmarks", action="store_true")
    parser.add_argument("--stage", type=int, default=0, metavar="N", help="also time run() end to end on N photos")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="worker processes for --stage")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args.profile).fit_flame
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"fit_flame, profile {args.profile}: L-BFGS {cfg.iterations_camera} + {cfg.iterations_full} iterations, "
          f"crop {cfg.crop_size}, on {name}\n")  # fmt: skip
    print("| step | batch | items/s | note |")
    print("|---|---|---|---|")
    if not args.skip_landmarks:
        full, only = bench_landmarks(cfg, args.images)
        print(f"| landmarks (MediaPipe, 1 process) | 1 | {only:.1f} | 512-640 px photos |")
        print(f"| landmarks + POS alignment + {cfg.crop_size} crop | 1 | {full:.1f} | |")
    for batch in args.batch:
        rate, error = bench_fit(cfg, batch, args.device, args.repeats)
        print(f"| FLAME fit ({args.device}) | {batch} | {rate:.1f} | median landmark error {error:.2f} px at 512 |")
    for workers in args.workers if args.stage else []:
        rate = bench_stage(cfg, args.stage, workers, args.device, max(args.batch))
        print(f"| whole stage, {args.stage} photos ({args.device}) | {max(args.batch)} | {rate:.1f} "
              f"| {workers} workers |")  # fmt: skip


if __name__ == "__main__":
    main()

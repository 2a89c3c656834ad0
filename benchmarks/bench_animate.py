"""End-to-end speed of `p4d animate`: the Animator (load, prepare_source, driving_motion, render) on a 512² clip.

Prints one Markdown table (ms/frame of alignment, motion and render, end-to-end frames/s, peak GPU memory) for
fp32 (TF32 off) and bf16 autocast, render batch 1 and 8. Ψ and PD-FGC have random weights at the chosen
profile's sizes (paper = official sizes); FLAME and its embeddings are the synthetic bundle's. The driving
"video" is made in memory from ``skimage.data.astronaut()`` (public domain) with a slow zoom and pan; the
source is the photo itself. Nothing is read from disk but the optional landmark recording.

MediaPipe (alignment's landmark detector) does not run on every machine, so landmarks can be recorded on a
machine that has it and replayed elsewhere; the replay checks every image against the recording (shape and
checksum) and hands back the recorded points, while the crop, PD-FGC, the FLAME fit and Ψ run for real:

    # here (CPU, MediaPipe installed): record the landmarks of the source + 64 frames, and time MediaPipe
    python benchmarks/bench_animate.py --record-landmarks benchmarks/data/animate_landmarks_512.npz \\
        --profile paper --frames 64
    # on the GPU machine (no MediaPipe, no PyAV)
    python benchmarks/bench_animate.py --device cuda --profile paper \\
        --replay-landmarks benchmarks/data/animate_landmarks_512.npz --frames 64 --json bench_animate.json
    # smoke runs
    python benchmarks/bench_animate.py --device cpu --profile tiny --frames 4
    python benchmarks/bench_animate.py --device cpu --profile tiny --frames 4 --replay-landmarks tiny.npz
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import types
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_animate.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

from components.config import PROFILES  # noqa: E402  (imports neither PyAV nor MediaPipe)
from timing import timed  # noqa: E402  (benchmarks/ is the script's folder)

RECORDING_FORMAT = 1
FRAME_RECIPE = "astronaut-zoom-pan-v1"  # bump when _driving_frames changes: recordings are tied to the pixels
PSI_SEED = 0


def _stub_pyav_if_missing() -> bool:
    """components.fit_flame.prepare (the alignment the Animator uses) imports media.py, which imports PyAV at
    module level for clip decoding. This benchmark decodes nothing, so without PyAV a stand-in module lets
    the import succeed; any use of it would fail loudly."""
    if importlib.util.find_spec("av") is not None:
        return False

    def _unavailable(*_a, **_k):
        raise RuntimeError("PyAV is not installed here (bench_animate stand-in): no video decoding")

    stub = types.ModuleType("av")
    stub.FFmpegError = type("FFmpegError", (Exception,), {})
    stub.open = _unavailable
    stub.VideoFrame = object
    sys.modules["av"] = stub
    return True


# ------------------------------------------------------------------------------------------------ inputs


def _bilinear_window(image: np.ndarray, x0: float, y0: float, side: float, out: int) -> np.ndarray:
    """(out, out, 3) uint8: the square window [x0, x0 + side)² of ``image`` resampled bilinearly, pure numpy in
    float64 (elementwise only), so the pixels (and the recording's checksums) are the same on every machine."""
    h, w = image.shape[:2]
    step = side / out
    xs = x0 + (np.arange(out, dtype=np.float64) + 0.5) * step - 0.5
    ys = y0 + (np.arange(out, dtype=np.float64) + 0.5) * step - 0.5
    xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    xi, yi = np.minimum(np.floor(xs).astype(np.int64), w - 2), np.minimum(np.floor(ys).astype(np.int64), h - 2)
    fx, fy = (xs - xi)[None, :, None], (ys - yi)[:, None, None]
    img = image.astype(np.float64)
    top = img[yi][:, xi] * (1 - fx) + img[yi][:, xi + 1] * fx
    bottom = img[yi + 1][:, xi] * (1 - fx) + img[yi + 1][:, xi + 1] * fx
    return np.clip(np.floor(top * (1 - fy) + bottom * fy + 0.5), 0, 255).astype(np.uint8)


def _driving_frames(n: int, size: int = 512) -> tuple[np.ndarray, list[np.ndarray]]:
    """(source photo, n driving frames of size²): a slow zoom (window 512 -> 384 px) towards the face, and back
    with a sideways pan, over the public-domain astronaut photo (512² RGB)."""
    from skimage.data import astronaut

    photo = np.ascontiguousarray(astronaut())
    h, w = photo.shape[:2]
    frames = []
    for i in range(n):
        t = i / max(n - 1, 1)
        zoom = np.sin(np.pi * t)  # 0 -> 1 -> 0
        side = 512.0 - 128.0 * zoom
        cx = 256.0 + (-16.0 + 32.0 * t) + (240.0 - 256.0) * zoom  # pan left->right, drift towards the face
        cy = 256.0 + (180.0 - 256.0) * zoom
        x0 = float(np.clip(cx - side / 2, 0, w - side))
        y0 = float(np.clip(cy - side / 2, 0, h - side))
        frames.append(_bilinear_window(photo, x0, y0, side, size))
    source = photo if photo.shape[:2] == (size, size) else _bilinear_window(photo, 0, 0, min(h, w), size)
    return np.ascontiguousarray(source), frames


def _checksum(image: np.ndarray) -> int:
    """Cheap image fingerprint: crc32 of every 8th pixel and the shape."""
    image = np.asarray(image)
    return zlib.crc32(np.ascontiguousarray(image[::8, ::8]).tobytes(), zlib.crc32(repr(image.shape).encode()))


# ------------------------------------------------------------------------------------ landmark record/replay


def _landmark_settings(fit_cfg) -> dict:
    return {"detect_max_side": fit_cfg.detect_max_side, "min_detection_confidence": fit_cfg.min_detection_confidence,
            "mesh_input_px": fit_cfg.mesh_input_px}


def record_landmarks(out: Path, profile: str, n_frames: int) -> dict:
    """Run the real FaceLandmarker (the Animator's settings of ``profile``) on the source + every frame, time it,
    and write points / n_faces / face_px / checksums (+ the timing) to ``out`` (.npz)."""
    from components.config import build_config
    from components.landmarks import FaceLandmarker
    from components.fit_flame.manifest import ItemFailure

    fit_cfg = build_config(profile).fit_flame
    source, frames = _driving_frames(n_frames)
    images = [source, *frames]
    n = len(images)
    points = np.full((n, 478, 2), np.nan, np.float32)
    n_faces = np.zeros(n, np.int32)
    face_px = np.zeros(n, np.float32)
    reasons = [""] * n
    ms = np.zeros(n, np.float64)
    settings = _landmark_settings(fit_cfg)
    with FaceLandmarker(**settings) as landmarker:
        with contextlib.suppress(ItemFailure):
            landmarker(source)  # warm-up: graph setup, first inference
        for i, img in enumerate(images):
            start = time.perf_counter()
            try:
                face = landmarker(img)  # raw result; the replay applies min_face_px as the landmarker would
            except ItemFailure as failure:
                reasons[i] = str(failure)
            else:
                points[i], n_faces[i], face_px[i] = face.points, face.n_faces, face.face_px
            ms[i] = (time.perf_counter() - start) * 1e3
    try:
        import mediapipe

        mp_version = mediapipe.__version__
    except Exception:  # noqa: BLE001 - only for the record
        mp_version = "unknown"
    host = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    frame_ms = ms[1:]
    meta = {
        "format": RECORDING_FORMAT, "frame_recipe": FRAME_RECIPE, "profile": profile, "frames": n_frames,
        "settings": settings, "mediapipe_version": mp_version, "host": host, "torch_threads": torch.get_num_threads(),
        "mediapipe_ms_per_frame_median": float(np.median(frame_ms)),
        "mediapipe_ms_per_frame_mean": float(frame_ms.mean()),
        "faces_found": int((n_faces[1:] > 0).sum()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, points=points, n_faces=n_faces, face_px=face_px, reasons=np.array(reasons),
        shapes=np.array([im.shape for im in images], np.int32),
        checksums=np.array([_checksum(im) for im in images], np.uint32), mediapipe_ms=ms.astype(np.float32),
        meta=np.array(json.dumps(meta)))
    return meta


class ReplayLandmarker:
    """Stands in for components.landmarks.FaceLandmarker: hands back the recorded result of each image.

    The benchmark says which run of images comes next (``expect("source")`` / ``expect("frames")``); every call
    then takes the next recorded image in order and checks that the image handed in is that one (shape and
    checksum), raising otherwise. Points are stored as float32 (< 1e-4 px from MediaPipe's float64 at 512²)."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.meta = json.loads(str(z["meta"]))
            self.points, self.n_faces, self.face_px = z["points"], z["n_faces"], z["face_px"]
            self.reasons = [str(r) for r in z["reasons"]]
            self.shapes, self.checksums = z["shapes"], z["checksums"]
        if self.meta.get("format") != RECORDING_FORMAT or self.meta.get("frame_recipe") != FRAME_RECIPE:
            raise ValueError(f"{path}: recorded with another format/frame recipe ({self.meta.get('format')}, "
                             f"{self.meta.get('frame_recipe')}); record it again with this script")
        self.path, self._next, self._stop, self.calls = path, 0, 0, 0

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    def expect(self, what: str) -> None:
        self._next, self._stop = (0, 1) if what == "source" else (1, len(self.shapes))

    def __call__(self, rgb: np.ndarray, min_face_px: float = 0.0):
        from components.landmarks import FaceLandmarks
        from components.fit_flame.manifest import ItemFailure

        i = self._next
        if i >= self._stop:
            raise RuntimeError(f"landmark replay: more images asked for than expected (recorded image {i})")
        self._next += 1
        self.calls += 1
        if tuple(rgb.shape) != tuple(self.shapes[i]) or _checksum(rgb) != int(self.checksums[i]):
            raise RuntimeError(
                f"landmark replay: image {i} ({rgb.shape}, checksum {_checksum(rgb)}) is not the recorded one "
                f"({tuple(self.shapes[i])}, checksum {int(self.checksums[i])}) of {self.path}")
        if self.reasons[i]:
            raise ItemFailure(self.reasons[i])
        if self.face_px[i] < min_face_px:  # what FaceLandmarker.__call__ does with min_face_px
            raise ItemFailure(f"face too small: {self.face_px[i]:.0f} px < min_face_px {min_face_px:.0f}")
        return FaceLandmarks(self.points[i].astype(np.float64), int(self.n_faces[i]), float(self.face_px[i]))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ model + assets


def write_assets(root: Path, profile: str, source_points: np.ndarray, seed: int = 0) -> Path:
    """The part of the synthetic bundle the Animator reads (components.assets.synth's writers): FLAME, the 68-point
    and MediaPipe embeddings, the optional part files, PD-FGC at ``profile``'s size, bundle.json. Not GenHead,
    Ψ_3d, ArcFace or LPIPS. The MediaPipe embedding is cast from ``source_points`` (the astronaut's landmarks,
    what synth.py computes with a live MediaPipe), so this needs no MediaPipe."""
    import components.assets.synth as synth
    from components.assets.manifest import BUNDLE_METADATA, spec
    from components.assets.networks import build_network
    from components.assets.synthetic_embedding import synthetic_mediapipe_embedding

    arrays = synth._write_flame(root, seed)
    live = synth._mediapipe_embedding
    synth._mediapipe_embedding = lambda a: synthetic_mediapipe_embedding(a, source_points, synth.MEDIAPIPE_EMBEDDED)
    try:
        synth._write_landmark_embeddings(root, arrays, seed)
    finally:
        synth._mediapipe_embedding = live
    synth._write_flame_parts(root, arrays)
    path = root / spec("pdfgc").path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = {k: v.detach().clone() for k, v in build_network("pdfgc_motion_model", profile).state_dict().items()}
    torch.save(state, path)
    (root / BUNDLE_METADATA).write_text(json.dumps({
        "synthetic": True, "profile": profile, "seed": seed,
        "note": "bench_animate: the Animator's part of the synthetic bundle; random weights"}))
    return root


def write_psi(root: Path, profile: str) -> tuple[Path, int]:
    """A `p4d train psi`-format run folder (model/psi.safetensors + network config metadata), random init."""
    from components.assets.networks import build_network
    from components.config import build_config
    from components.train.checkpoint import save_module_safetensors

    torch.manual_seed(PSI_SEED)
    psi = build_network("psi", build_config(profile))
    weights = root / "psi" / "model" / "psi.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_module_safetensors(psi, weights, {"network": "psi", "config": json.dumps(psi.cfg.model_dump(mode="json"))})
    params = sum(p.numel() for p in psi.parameters())
    del psi
    return root / "psi", params


# -------------------------------------------------------------------------------------------------- timing


def bench_precision(animator, source_image, frames, batches, repeats, warmup, replay, device) -> list[dict]:
    """All rows of one precision: alignment / motion pieces once, render and end-to-end per render batch."""
    from components.fit_flame.manifest import ItemFailure
    from components.fit_flame.prepare import align_clip

    n = len(frames)
    use = (lambda what: replay.expect(what)) if replay is not None else (lambda what: None)

    def source():
        use("source")
        return animator.prepare_source(source_image)

    def align():  # what driving_motion does first (its smooth=True crop smoothing included)
        use("frames")
        checked = [animator._check_image(f, f"driving frame {i}") for i, f in enumerate(frames)]
        return align_clip(checked, animator.landmarker, animator.fit_cfg.model_copy(update={"smooth_video": True}))

    def drive():
        use("frames")
        return animator.driving_motion(frames)

    t_source, src = timed(source, device, repeats, warmup)
    t_align, aligned = timed(align, device, repeats, warmup)
    good = [a for a in aligned if not isinstance(a, ItemFailure)]
    if not good:
        raise RuntimeError("no face in any driving frame")
    crops, crop_landmarks = np.stack([a.crop for a in good]), np.stack([a.landmarks for a in good])
    t_fit, _ = timed(lambda: animator._fit(crop_landmarks, shared_shape=True), device, repeats, warmup)
    t_pdfgc, _ = timed(lambda: animator._motion(crops, crop_landmarks), device, repeats, warmup)
    t_drive, motion = timed(drive, device, repeats, warmup)
    common = {
        "frames": n, "frames_with_face": len(good), "frames_valid": int(motion.valid.sum()),
        "source_ms": t_source * 1e3,
        "alignment_ms_per_frame": t_align / n * 1e3,
        "motion_ms_per_frame": (t_drive - t_align) / n * 1e3,
        "driving_motion_ms_per_frame": t_drive / n * 1e3,
        "flame_fit_ms_per_frame": t_fit / n * 1e3,
        "pdfgc_ms_per_frame": t_pdfgc / n * 1e3,
    }
    rows = []
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_render, out = timed(lambda: animator.render(src, motion, batch=batch), device, repeats, warmup)
        assert out.shape == (n, animator.image_size, animator.image_size, 3), out.shape

        def end_to_end():
            s = source()
            return animator.render(s, drive(), batch=batch)

        t_e2e, _ = timed(end_to_end, device, repeats, warmup)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append({**common, "batch": batch, "render_ms_per_frame": t_render / n * 1e3,
                     "end_to_end_s": t_e2e, "end_to_end_frames_per_s": n / t_e2e,
                     "sum_of_parts_frames_per_s": n / (t_source + t_drive + t_render), "peak_gib": peak})
    return rows


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", default="paper", choices=PROFILES)
    parser.add_argument("--frames", type=int, default=None, help="driving frames (default 64, or the recording's)")
    parser.add_argument("--dtypes", default=None,
                        help="fp32 (TF32 off) and/or bf16 (autocast); default fp32,bf16 on CUDA, fp32 on the CPU "
                             "(the engine runs fp32 there whatever the dtype)")
    parser.add_argument("--batches", default="1,8", help="render batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
    parser.add_argument("--record-landmarks", type=Path, default=None, metavar="FILE.npz",
                        help="run MediaPipe on the source + frames, time it, save the landmarks, and exit")
    parser.add_argument("--replay-landmarks", type=Path, default=None, metavar="FILE.npz",
                        help="hand the Animator recorded landmarks instead of running MediaPipe")
    parser.add_argument("--work", type=Path, default=None, help="folder for the assets and Ψ (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)

    if args.record_landmarks is not None:
        frames = args.frames or 64
        meta = record_landmarks(args.record_landmarks, args.profile, frames)
        size = args.record_landmarks.stat().st_size
        print(f"recorded {args.record_landmarks} ({size / 1024:.0f} KiB): source + {frames} frames of 512², "
              f"faces in {meta['faces_found']}/{frames} frames; MediaPipe {meta['mediapipe_version']} "
              f"{meta['mediapipe_ms_per_frame_median']:.1f} ms/frame median "
              f"({meta['mediapipe_ms_per_frame_mean']:.1f} mean) on {meta['host']}")
        return 0

    pyav_stubbed = _stub_pyav_if_missing()
    from components.animate import Animator
    from components.config import build_config

    replay = ReplayLandmarker(args.replay_landmarks) if args.replay_landmarks is not None else None
    cfg = build_config(args.profile)
    if replay is not None:
        if replay.meta["profile"] != args.profile or replay.meta["settings"] != _landmark_settings(cfg.fit_flame):
            raise SystemExit(f"{args.replay_landmarks}: recorded for profile {replay.meta['profile']} "
                             f"({replay.meta['settings']}); this run is --profile {args.profile}")
        if args.frames is not None and args.frames != replay.frames:
            raise SystemExit(f"{args.replay_landmarks} holds {replay.frames} frames; --frames {args.frames} given")
        n_frames = replay.frames
    else:
        n_frames = args.frames or 64
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    precisions = (args.dtypes or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(",")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    source_image, frames = _driving_frames(n_frames)

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_animate_")))
        if replay is not None:
            source_points = replay.points[0].astype(np.float64)
        else:
            from components.landmarks import FaceLandmarker

            with FaceLandmarker(**_landmark_settings(cfg.fit_flame)) as lm:
                source_points = lm(source_image).points
        start = time.perf_counter()
        assets = write_assets(work / "assets", args.profile, source_points)
        model, params = write_psi(work, args.profile)
        setup_s = time.perf_counter() - start

        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        flags = ("TF32 off (matmul + cuDNN) in both, cudnn.benchmark on in both" if device.type == "cuda"
                 else f"CPU, {torch.get_num_threads()} torch threads (FLAME fit on 1 thread, as the engine does)")
        if replay is not None:
            m = replay.meta
            landmarks_note = (f"alignment's landmark detection REPLAYED from {args.replay_landmarks.name} (crop, "
                              f"PD-FGC, FLAME fit, Ψ run for real); MediaPipe {m['mediapipe_version']} on the CPU "
                              f"of the 2-core dev box ({m['host']}): {m['mediapipe_ms_per_frame_median']:.1f} ms/frame "
                              "median, not in the alignment column")
        else:
            landmarks_note = "alignment's landmark detection: MediaPipe live on this machine's CPU (in the column)"
        print(f"\np4d animate (Animator) benchmark: device {dev_name}, torch {torch.__version__}, profile "
              f"{args.profile}; {flags}; {n_frames} driving frames of 512² (astronaut zoom/pan), source 512² "
              f"photo; random weights at {args.profile} sizes (Ψ {params / 1e6:.1f} M params, PD-FGC, synthetic "
              f"FLAME); neck rotation field built per frame (render -> render_conditions -> conditioner); one-euro "
              f"smoothing on; median of {args.repeats} after {args.warmup} warm-up; {landmarks_note}"
              + ("; PyAV absent: stand-in module for the import" if pyav_stubbed else "") + "\n")
        print("| precision | batch | alignment ms/frame | motion ms/frame | render ms/frame | end-to-end frames/s "
              "| peak GiB |")
        print("|---|---|---|---|---|---|---|", flush=True)

        rows = []
        for name in precisions:
            animator = Animator.load(model, assets, str(device), dtype=dtypes[name], config=cfg)
            if replay is not None:
                animator._landmarker = replay
            try:
                for row in bench_precision(animator, source_image, frames, batches, args.repeats, args.warmup,
                                           replay, device):
                    label = name + (" autocast" if name == "bf16" else "")
                    if name == "bf16" and device.type == "cpu":
                        label += " (CPU: the engine runs fp32)"
                    row = {"precision": label, **row}
                    rows.append(row)
                    print(f"| {row['precision']} | {row['batch']} | {row['alignment_ms_per_frame']:.2f} | "
                          f"{row['motion_ms_per_frame']:.2f} | {row['render_ms_per_frame']:.2f} | "
                          f"{row['end_to_end_frames_per_s']:.2f} | "
                          f"{'–' if device.type != 'cuda' else format(row['peak_gib'], '.2f')} |", flush=True)
            finally:
                animator.close()
                del animator
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    print()
    for r in rows:
        if r["batch"] != batches[0]:
            continue
        print(f"- {r['precision']}: source (prepare_source, once) {r['source_ms']:.1f} ms; motion = driving_motion "
              f"{r['driving_motion_ms_per_frame']:.2f} ms/frame − alignment; of it FLAME fit "
              f"{r['flame_fit_ms_per_frame']:.2f} and PD-FGC {r['pdfgc_ms_per_frame']:.2f} ms/frame, timed apart (rest "
              f"{r['motion_ms_per_frame'] - r['flame_fit_ms_per_frame'] - r['pdfgc_ms_per_frame']:.2f}: "
              f"one-euro smoothing, crops to Ψ size, bookkeeping, timing noise); faces "
              f"{r['frames_with_face']}/{r['frames']}, valid fits "
              f"{r['frames_valid']}/{r['frames']}")
    print("- end-to-end = prepare_source once + driving_motion + render of all frames, timed as one run; "
          "render = Animator.render (cameras, neck field, Ψ, uint8) with the source cached")
    if replay is not None:
        mp = replay.meta["mediapipe_ms_per_frame_median"]
        for r in rows:
            est = n_frames / (r["end_to_end_s"] + (n_frames + 1) * mp / 1e3)
            print(f"- {r['precision']} batch {r['batch']}: with MediaPipe live at the dev box's {mp:.1f} ms/frame "
                  f"(serial, not measured here) end-to-end would be ≈ {est:.2f} frames/s")
    print(f"- setup (assets + random Ψ written) {setup_s:.1f} s")
    if args.json:
        result = {"device": dev_name, "torch": torch.__version__, "profile": args.profile, "frames": n_frames,
                  "flags": flags, "psi_params": params, "landmarks": landmarks_note,
                  "replay": replay.meta if replay is not None else None, "repeats": args.repeats,
                  "warmup": args.warmup, "rows": rows}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed of the FLAME-driven deformation fields per frame: the neck-pose field build and its lookups, and
GenHead's part field.

What is timed (model.deformation.HeadDeformation, the paper's grid sizes 24³ + 8³ and box_warp 1.3):
- ``neck build``: everything a driving frame costs before rendering: FLAME for the posed and the
  neck-free head, the proxy mesh, the nearest-face search of the 24³ + 8³ voxel centres, the Surface
  Field there and the box filter of the 8³ grid (the official FlameDeformationModuleOnlyHead.forward
  minus its lookups);
- ``neck lookup``: the field at the Ψ render's sample points of one frame (neural 128², 48 + 48 samples
  per ray: 1.57 M points; fine + smooth grids, distances, fade);
- ``part field``: GenHead's part deformation (eyes, face, mouth; neck field first) at one synthesis
  view's sample points (neural 64², 96 samples per ray: 393 K points). Its three nearest-vertex searches
  run model.deformation.nearest's float32 candidate pass (compiled on CUDA, eager otherwise) + float64
  rank (the heading says which; ``--before-src`` with a tree before that change times its float64 search).
Median of ``--iters`` calls after ``--warmup`` (the first CUDA call compiles the face search; warm-up
hides that). ``--precision bf16`` runs every call under bf16 autocast, as the serving path does; the
fields stay in fp32 there (the column "max |Δ| vs fp32" says by how much the outputs moved).

``--before-src DIR`` also times the same calls with the ``model`` package found in DIR (e.g. the tree
before issue #18: ``git archive a68d630 model | tar -x -C /tmp/before``), in a child process.

The FLAME head is the synthetic bundle's at the real sizes (5023 vertices; proxy ~730 vertices / ~1.4 K
triangles as the official simplify_baricentric2.npy): the cost depends on sizes, not on the values.

    python benchmarks/bench_fields.py --device cuda
    python benchmarks/bench_fields.py --device cuda --precision bf16 --batches 1,8
    python benchmarks/bench_fields.py --device cpu --batches 1 --iters 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if len(sys.argv) > 1 and "--inner" in sys.argv:
    pass  # a --before-src child: its PYTHONPATH decides which ``model`` is imported
elif str(HERE.parent) not in sys.path:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(HERE.parent))

from model.deformation import (  # noqa: E402
    DeformationConfig,
    FlameHead,
    HeadDeformation,
    build_proxy_mesh,
    part_labels,
    synthetic_flame_parts,
)
from model.compiled import compiling  # noqa: E402
from model.flame import FlameLayer, synthetic_flame_arrays  # noqa: E402
from timing import timed  # noqa: E402  (benchmarks/ is the script's folder)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
LOOKUP_POINTS = 128 * 128 * 96  # Ψ: neural 128², 48 coarse + 48 fine samples per ray
PART_POINTS = 64 * 64 * 96  # GenHead synthesis: neural 64², 48 + 48 samples per ray
VERTEX_SEARCH_KERNEL = "torch"  # --vertex-search-kernel (DeformationConfig.vertex_search_kernel)


def _head(device: torch.device) -> FlameHead:
    arrays = synthetic_flame_arrays(0, n_vertices=5023)
    parts = synthetic_flame_parts(arrays)
    proxy = build_proxy_mesh(arrays["v_template"], arrays["f"], 730, part_labels(parts))
    # only name the field when it is not the default: a --before-src child's DeformationConfig may predate it
    kernel = {} if VERTEX_SEARCH_KERNEL == "torch" else {"vertex_search_kernel": VERTEX_SEARCH_KERNEL}
    return FlameHead(FlameLayer(arrays), proxy, parts, None, DeformationConfig(**kernel)).to(device)


def _conditions(batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = dict(
        shape=torch.randn(batch, 300, generator=g) * 0.5,
        expression=torch.randn(batch, 100, generator=g) * 0.5,
        neck_pose=(torch.rand(batch, 3, generator=g) - 0.5) * 0.6,
        jaw_pose=torch.rand(batch, 3, generator=g) * torch.tensor([0.2, 0.0, 0.0]),
        eye_pose=torch.zeros(batch, 6),
    )
    return {k: v.to(device) for k, v in params.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def measure(device: torch.device, precision: str, batches: list[int], iters: int, warmup: int,
            lookup_points: int = LOOKUP_POINTS, part_points: int = PART_POINTS) -> list[dict]:
    head = _head(device)
    dtype = PRECISIONS[precision]
    rows = []
    g = torch.Generator().manual_seed(1)
    for batch in batches:
        params = _conditions(batch, device)
        coords = ((torch.rand(batch, lookup_points, 3, generator=g) - 0.5) * 1.2).to(device)
        part_coords = ((torch.rand(batch, part_points, 3, generator=g) - 0.5) * 1.2).to(device)
        with torch.no_grad():
            reference = HeadDeformation(head, **params)  # fp32, outside autocast
            ref_lookup = reference(coords)
            with _autocast(device, dtype):
                deform = HeadDeformation(head, **params)
                moved = (deform(coords).float() - ref_lookup).abs().max().item()
                build = timed(lambda: HeadDeformation(head, **params), device, iters, warmup)[0]
                lookup = timed(lambda: deform(coords), device, iters, warmup)[0]
                parts = timed(lambda: deform.parts(part_coords), device, max(1, iters // 4), min(warmup, 1))[0]
        rows.append(dict(batch=batch, build_ms=build * 1e3, lookup_ms=lookup * 1e3, parts_ms=parts * 1e3,
                         max_delta_vs_fp32=moved))
    return rows


def _flags(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return (f"{name}, torch {torch.__version__}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
                f"cudnn.benchmark {torch.backends.cudnn.benchmark}, "
                f"face search {'torch.compile' if compiling(device) else 'eager'}, "
                f"{_vertex_search(device)}")
    return (f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch {torch.__version__}, eager, "
            f"{_vertex_search(device)}")


def _vertex_search(device: torch.device) -> str:
    """Which nearest-vertex search the part-field row ran."""
    from model.deformation import nearest  # here, not at the top: a --before-src child's model may lack it

    mode = "eager" if device.type != "cuda" or os.environ.get("P4D_EAGER") == "1" else "torch.compile"
    kernel = getattr(nearest, "nearest_top2", None)
    if kernel is not None and nearest.VERTEX_CANDIDATES == 2 and kernel.enabled(VERTEX_SEARCH_KERNEL, device):
        mode = "Triton top-2 kernel, vertex_search_kernel triton"
    return f"part-field vertex search: float32 top-{nearest.VERTEX_CANDIDATES} ({mode}) + float64 rank"


def _print(label: str, precision: str, rows: list[dict]) -> None:
    for r in rows:
        print(f"| {label} | {precision} | {r['batch']} | {r['build_ms']:.2f} | {r['build_ms'] / r['batch']:.2f} | "
              f"{r['lookup_ms']:.2f} | {r['parts_ms']:.1f} | {r['max_delta_vs_fp32']:.1e} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    parser.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS), help="bf16 = bf16 autocast")
    parser.add_argument("--batches", default="1,8", help="frames per call")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--lookup-points", type=int, default=LOOKUP_POINTS, help="neck-field lookup points per frame")
    parser.add_argument("--part-points", type=int, default=PART_POINTS, help="part-field points per frame")
    parser.add_argument("--vertex-search-kernel", default="torch", choices=("torch", "triton"),
                        help="the part field's float32 candidate pass (triton: CUDA only; model/deformation/nearest_top2.py)")
    parser.add_argument("--before-src", default=None, help="a directory holding an older ``model`` package to time too")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global VERTEX_SEARCH_KERNEL
    VERTEX_SEARCH_KERNEL = args.vertex_search_kernel
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    batches = [int(b) for b in args.batches.split(",")]
    rows = measure(device, args.precision, batches, args.iters, args.warmup, args.lookup_points, args.part_points)
    if args.inner:
        print(json.dumps(rows))
        return 0

    print(f"\nDeformation fields per frame: {_flags(device)}; 24³ + 8³ grids; median of {args.iters} calls after "
          f"{args.warmup} warm-up calls\n")
    print(f"| code | precision | batch | neck build ms | neck build ms / frame | neck lookup ms "
          f"({args.lookup_points} pts/frame) | part field ms ({args.part_points} pts/frame) | max abs Δ lookup vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    _print("after", args.precision, rows)
    before = None
    if args.before_src:
        path = [os.path.abspath(args.before_src)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        cmd = [sys.executable, __file__, "--inner", "--device", device.type, "--precision", args.precision,
               "--batches", args.batches, "--iters", str(args.iters), "--warmup", str(args.warmup),
               "--lookup-points", str(args.lookup_points), "--part-points", str(args.part_points)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        before = json.loads(out.strip().splitlines()[-1])
        _print(f"before ({args.before_src})", args.precision, before)
    print("\nneck build = HeadDeformation(...) (FLAME x2, proxy, nearest-face search, Surface Field, box filter); "
          "lookup = deform(coords); part field = deform.parts(coords) (neck field + three nearest-vertex searches).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"flags": _flags(device), "precision": args.precision, "after": rows, "before": before}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Aggregate the per-item records and write what reviewers and ``register`` read.

- ``metrics.json``: ``{"metrics", "intervals", "counts", "not_computed", "model", "psi_mlflow_run_id",
  "evaluate_mlflow_run_id", "data_version", "synthetic_assets", "profile"}`` (the contract with
  ``register``: keep this shape);
- ``per_item.parquet``: one row per render and per unusable input, with the reason;
- ``README.md``: the metric table, what was not computed and why, how each metric is defined;
- ``samples/grid.png`` (source | driving | output | target | novel views), ``samples/reenactment.mp4``
  (target | output), ``samples/turntable.mp4``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from components.config.evaluate import GREATER_IS_BETTER, METRIC_NAMES, EvaluateConfig
from components.evaluate.data import InputFailure
from components.evaluate.gate import GateOutcome
from components.evaluate.metrics import summarize
from components.evaluate.reenact import ClipRun, Item
from components.io.atomic import atomic_path, atomic_write_text
from components.io.tracking import image_grid

FID = "eval/fid"
PER_ITEM_COLUMNS = ("psnr", "ssim", "lpips", "csim", "aed", "apd", "akd")
MIN_TILE = 128  # px: tiny renders (64²) are enlarged in the samples so a reviewer can see them


@dataclass
class Aggregate:
    metrics: dict[str, float]
    intervals: dict[str, list[float]]
    counts: dict[str, int]
    not_computed: dict[str, str]


def _values(items: Sequence[Item], short: str) -> np.ndarray:
    if short == "face_rate":
        return np.array([1.0 if i.face_found else 0.0 for i in items])
    return np.array([i.values.get(short, math.nan) for i in items], dtype=np.float64)


def _why_missing(kind: str, items: Sequence[Item]) -> str:
    if not items:
        return {"cross": "no cross-reenactment pairs (needs >= 2 usable test clips)"}.get(kind, f"no {kind} items")
    reasons = Counter(i.reason for i in items if i.reason)
    if reasons:
        reason, n = reasons.most_common(1)[0]
        return f"{reason} ({n} of {len(items)} renders)"
    return f"no finite value in {len(items)} renders"


def aggregate(items: Sequence[Item], cfg: EvaluateConfig, fid: float | None, fid_reason: str | None) -> Aggregate:
    """Mean, bootstrap interval (resampling source clips) and count of every stable metric."""
    agg = Aggregate({}, {}, {}, {})
    for name in METRIC_NAMES:
        if name == FID:
            continue
        _, kind, short = name.split("/")
        chosen = [i for i in items if i.kind == kind]
        s = summarize(_values(chosen, short), [i.clip_id for i in chosen], cfg.bootstrap_samples, cfg.bootstrap_seed,
                      cfg.confidence)  # fmt: skip
        agg.counts[name] = s.count
        if s.count == 0:
            agg.not_computed[name] = _why_missing(kind, chosen)
        else:
            agg.metrics[name], agg.intervals[name] = s.mean, [s.low, s.high]
    if fid is not None and math.isfinite(fid):
        agg.metrics[FID], agg.counts[FID] = float(fid), sum(i.kind == "self" for i in items)
    else:
        agg.counts[FID], agg.not_computed[FID] = 0, fid_reason or "not computed"
    return agg


def metrics_document(agg: Aggregate, model: str, psi_run_id: str | None, run_id: str | None, data_version: str,
                     synthetic_assets: bool, profile: str) -> dict:
    return {
        "metrics": agg.metrics,
        "intervals": agg.intervals,
        "counts": agg.counts,
        "not_computed": agg.not_computed,
        "model": model,
        "psi_mlflow_run_id": psi_run_id,
        "evaluate_mlflow_run_id": run_id,
        "data_version": data_version,
        "synthetic_assets": bool(synthetic_assets),
        "profile": profile,
    }


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_per_item(path: Path, items: Sequence[Item], failures: Sequence[InputFailure]) -> None:
    rows = []
    for i in items:
        rows.append({"kind": i.kind, "clip_id": i.clip_id, "driving_clip": i.driving_clip, "frame_index": i.frame_index,
                     "yaw": i.yaw, "status": "ok", "reason": i.reason, "face_found": i.face_found,
                     **{c: i.values.get(c, math.nan) for c in PER_ITEM_COLUMNS}})  # fmt: skip
    for f in failures:
        rows.append({"kind": "input", "clip_id": f.clip_id, "driving_clip": None, "frame_index": f.frame_index,
                     "yaw": None, "status": "failed", "reason": f.reason, "face_found": None,
                     **{c: math.nan for c in PER_ITEM_COLUMNS}})  # fmt: skip
    schema = pa.schema([("kind", pa.string()), ("clip_id", pa.string()), ("driving_clip", pa.string()),
                        ("frame_index", pa.int32()), ("yaw", pa.float64()), ("status", pa.string()),
                        ("reason", pa.string()), ("face_found", pa.bool_()),
                        *[(c, pa.float64()) for c in PER_ITEM_COLUMNS]])  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ----------------------------------------------------------------------------------------- the table
def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def summary_rows(agg: Aggregate, outcomes: Sequence[GateOutcome] | None = None,
                 champion: dict[str, float] | None = None) -> list[list[str]]:
    """Header + one row per metric: value, interval, count, direction, gate (and champion when given)."""
    gate = {o.name: o for o in outcomes or []}
    header = ["metric", "mean", "95% interval", "n", "better"]
    if champion is not None:
        header.append("champion")
    header.append("gate")
    rows = [header]
    for name in METRIC_NAMES:
        lo_hi = agg.intervals.get(name)
        row = [name, _fmt(agg.metrics.get(name)), f"[{_fmt(lo_hi[0])}, {_fmt(lo_hi[1])}]" if lo_hi else "",
               str(agg.counts.get(name, 0)), "higher" if GREATER_IS_BETTER[name] else "lower"]  # fmt: skip
        if champion is not None:
            row.append(_fmt(champion.get(name)))
        o = gate.get(name)
        row.append("" if o is None else {True: "pass", False: "FAIL", None: "—"}[o.passed] + f" ({o.detail})")
        rows.append(row)
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


DEFINITIONS = """\
- **self** (source = first usable frame of a test clip, driving = its other frames, target = the driving
  frame's aligned crop at Ψ's size): PSNR / SSIM (torchmetrics, 8-bit range; PSNR capped at 100 dB),
  LPIPS (the training loss's VGG LPIPS), CSIM (ArcFace-r18 cosine between the render and the source, each
  aligned by its own MediaPipe points), AED (mean |Δ| of FLAME expression + jaw), APD (mean |Δ| of the
  head rotation, rad; fit_flame writes it to the neck slot, the camera holds the same rotation), AKD (mean
  distance of the 478 MediaPipe points, px at 512²); the face measurements of render and target both come
  from `Animator.driving_motion(smooth=False)` on the image scaled to 512². face_rate: share of renders in
  which a face was found and fitted (AED / APD / AKD / CSIM average over those only).
- **cross** (source of clip i, driving frames of clip i+1): CSIM against the source, AED / APD against the
  driving frames.
- **novel** (the source with its own motion at the configured yaw offsets, pitch 0): CSIM against the source.
- Intervals: percentile bootstrap over source clips (resampled whole, fixed seed).
"""


def readme(agg: Aggregate, doc: dict, rows: list[list[str]], failures: Sequence[InputFailure], n_items: int) -> str:
    lines = [f"# Evaluation of `{doc['model']}`", "",
             f"profile `{doc['profile']}`, test data `{doc['data_version']}`, Ψ training run "
             f"`{doc['psi_mlflow_run_id']}`, MLflow run `{doc['evaluate_mlflow_run_id']}`"
             + (" — **synthetic assets: the numbers say nothing about quality**" if doc["synthetic_assets"] else ""),
             "", markdown_table(rows), ""]  # fmt: skip
    if agg.not_computed:
        lines += ["## Not computed", ""] + [f"- `{k}`: not computed: {v}" for k, v in agg.not_computed.items()] + [""]
    lines += [f"## Inputs", "", f"{n_items} renders measured; {len(failures)} unusable test inputs."]
    for reason, n in Counter(f.reason for f in failures).most_common(10):
        lines.append(f"- {n} x {reason}")
    lines += ["", "## Definitions", "", DEFINITIONS, "![samples](samples/grid.png)", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- samples
def _tile(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape[:2] == (side, side):
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


def sample_grid(runs: Sequence[ClipRun], limit: int) -> np.ndarray | None:
    """One row per sample clip (the first by id): source | driving | output | target | novel views."""
    rows = []
    for run in list(runs)[:limit]:
        if len(run.outputs) == 0:
            continue
        side = max(run.outputs.shape[1], MIN_TILE)
        tiles = [run.source.crop, run.driving_crops[0], run.outputs[0], run.drive.crops[0], *run.novel]
        rows.append([_tile(t, side) for t in tiles])
    return image_grid(rows) if rows else None


def enlarged(frames: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) video frames, enlarged to at least 2 x MIN_TILE (tiny renders are 64²)."""
    side = max(frames.shape[1], 2 * MIN_TILE)
    return np.stack([_tile(f, side) for f in frames])


def reenactment_frames(run: ClipRun) -> np.ndarray:
    """(N, S', 2 S', 3): target | output side by side."""
    return np.concatenate([enlarged(run.drive.crops), enlarged(run.outputs)], axis=2)


def save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")

"""The ``evaluate`` stage: a trained Ψ on held-out clips -> metrics, per-item table, gate, samples, MLflow run.

``run`` validates everything it can before any work (test split, leakage, the model, the metric
networks), renders and measures clip by clip (reenact.py), fails above the configured ratio of
unusable test inputs, then writes the output folder under a temporary name and renames it into
place after the MLflow run has every metric and file: a reader sees all of it or none of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.config.evaluate import EvaluateConfig
from components.evaluate.data import EvaluateError, InputFailure, check_leakage, read_held_out
from components.evaluate.fid import FIDError, fid
from components.evaluate.gate import GateOutcome, check_gate, gate_document
from components.evaluate.reenact import ClipRun, Item, Networks, run_clip, run_cross
from components.evaluate.report import (
    Aggregate,
    aggregate,
    enlarged,
    metrics_document,
    readme,
    reenactment_frames,
    sample_grid,
    save_png,
    summary_rows,
    write_json,
    write_per_item,
)
from components.io.run_config import write_run_config
from components.io.tracking import TrackingRun, lineage_tags
from components.assets.fid_inception import load_inception
from components.assets.policy import refuse_synthetic_outside_tiny
from components.errors import P4DError
from model.networks.inception import FIDInceptionV3

log = logging.getLogger(__name__)
METRICS_FILE, GATE_FILE, PER_ITEM_FILE, README_FILE = "metrics.json", "gate.json", "per_item.parquet", "README.md"
SAMPLES = "samples"


@dataclass
class EvaluateResult:
    out_dir: Path
    aggregate: Aggregate
    document: dict
    gate: dict
    outcomes: list[GateOutcome]
    champion: dict[str, float] | None
    n_items: int
    failures: list[InputFailure]
    seconds: float

    @property
    def table_rows(self) -> list[list[str]]:
        return summary_rows(self.aggregate, self.outcomes, self.champion)


# ------------------------------------------------------------------------------------------ lineage
def psi_run_id(model: str) -> str | None:
    """The MLflow run that trained ``model``: from an MLflow URI, else the newest checkpoint's trainer.json."""
    if model.startswith("runs:/"):
        return model[len("runs:/"):].split("/", 1)[0] or None
    if model.startswith("models:/"):
        return _registry_run_id(model[len("models:/"):])
    from components.animate.model_files import PACKAGE_FILE
    from components.train.checkpoint import STATE_FILE, complete_checkpoints

    path = Path(model)
    if (path / PACKAGE_FILE).is_file():  # a package records the training output it was made from
        try:
            source = json.loads((path / PACKAGE_FILE).read_text()).get("source")
        except (OSError, json.JSONDecodeError):
            return None
        return psi_run_id(source) if source and Path(source) != path else None
    for folder in [path, *path.parents][:4]:
        done = complete_checkpoints(folder / "checkpoints")
        if done:
            try:
                return json.loads((done[-1] / STATE_FILE).read_text()).get("mlflow_run_id")
            except (OSError, json.JSONDecodeError):
                return None
    return None


def _registry_run_id(ref: str) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, _, tail = ref.partition("@")
    try:
        client = MlflowClient()
        if tail:
            return client.get_model_version_by_alias(name, tail).run_id
        name, _, version = ref.rpartition("/")
        return client.get_model_version(name, version).run_id
    except (MlflowException, OSError):
        return None


def data_version(test_root: Path) -> str:
    from components.train.data import data_version as digest

    return os.environ.get("P4D_DATA_VERSION") or digest(test_root)


# ------------------------------------------------------------------------------------------ the stage
def _prepare_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier evaluation (nothing is written yet)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / METRICS_FILE).is_file())):
        raise EvaluateError(f"--out {out}: exists and is not an evaluate output; choose a new or empty folder")


def _publish(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "previous")
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fid_network(cfg: EvaluateConfig, assets: Path, device: str) -> FIDInceptionV3 | None:
    """The FID Inception with the user's weights, or None when the file is absent (FID is then "not computed").

    A file that is there but is not the FID Inception fails the stage, before any render: the user asked for
    FID, and a metric silently dropped would let the model reach the registry without it.
    """
    weights = assets / cfg.fid_inception_weights
    if not weights.is_file():
        return None
    try:
        return load_inception(weights, device)
    except P4DError as err:
        raise EvaluateError(f"{err} (evaluate.fid_inception_weights: use pytorch-fid's "
                            "pt_inception-2015-12-05-6726825d.pth, or remove the file to skip FID)") from None


def _fid(cfg: EvaluateConfig, inception: FIDInceptionV3 | None, runs: list[ClipRun], device: str
         ) -> tuple[float | None, str | None]:  # fmt: skip
    """FID of the self-reenactment renders against their targets, only with user-supplied Inception weights."""
    if inception is None:
        return None, f"no Inception weights at {cfg.fid_inception_weights} in the asset folder (user-supplied)"
    real = np.concatenate([r.drive.crops for r in runs])
    fake = np.concatenate([r.outputs for r in runs])
    if len(real) < 2:
        return None, f"FID needs >= 2 renders, got {len(real)}"
    try:
        return fid(inception, real, fake, device, cfg.render_batch), None
    except FIDError as err:  # e.g. no real square root of the covariance product: a number would be made up
        return None, str(err)


def _failure_message(test_root: Path, failures: list[InputFailure], used: int, limit: float) -> str:
    total = used + len(failures)
    top = "; ".join(f"{n} x {r}" for r, n in Counter(f.reason for f in failures).most_common(3))
    if used == 0:
        return f"{test_root}: the test set is empty after filtering ({len(failures)} unusable inputs: {top})"
    return (f"{test_root}: {len(failures)} of {total} test inputs unusable ({len(failures) / total:.0%} > "
            f"evaluate.max_failure_ratio {limit:.0%}): {top}")


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic kernels while evaluating: the same model and data give the same metrics (without it the
    CPU FLAME fit differs in the 3rd decimal from call to call). cuBLAS needs a fixed workspace for that."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def run(cfg, psi: str | Path, data: str | Path, assets: str | Path, out: str | Path, train_data: str | Path | None = None,
        device: str = "cpu", champion_metrics: str | Path | None = None, progress: bool = True) -> EvaluateResult:
    """Evaluate ``psi`` on the test clips of ``data`` (see the module docstring). ``cfg``: the P4DConfig."""
    with deterministic_torch():
        return _evaluate(cfg, psi, data, assets, out, train_data, device, champion_metrics, progress)


def _evaluate(cfg, psi: str | Path, data: str | Path, assets: str | Path, out: str | Path, train_data: str | Path | None,
              device: str, champion_metrics: str | Path | None, progress: bool) -> EvaluateResult:
    from components.animate import Animator
    from components.assets.networks import load_network

    started = time.perf_counter()
    ev: EvaluateConfig = cfg.evaluate
    data, assets, out, model = Path(data), Path(assets), Path(out), str(psi)
    refuse_synthetic_outside_tiny(assets, cfg.profile)  # before any work: its metrics gate the registry
    held_out = read_held_out(data, ev.frames_per_clip)
    if train_data is not None:
        check_leakage(data, train_data)
    usable = sum(len(c.frames) for c in held_out.clips)
    if usable == 0 or len(held_out.failures) / (usable + len(held_out.failures)) > ev.max_failure_ratio:
        raise EvaluateError(_failure_message(data, list(held_out.failures), usable, ev.max_failure_ratio))
    champion = _read_champion(champion_metrics)
    _prepare_out(out)
    if not assets.is_dir():
        raise EvaluateError(f"--assets {assets}: no such folder")
    inception = _fid_network(ev, assets, device)  # a wrong weights file fails here, before the model loads
    animator = Animator.load(model, assets, device=device, config=cfg)
    nets = Networks(load_network("lpips_vgg", assets, cfg, device).eval(),
                    load_network("arcface_r18", assets, cfg, device).eval(), device)

    failures = list(held_out.failures)
    runs: list[ClipRun] = []
    items: list[Item] = []
    n_frames = sum(len(c.frames) - 1 for c in held_out.clips)
    total = n_frames * 2 if len(held_out.clips) > 1 else n_frames
    with tqdm(total=total, unit="render", desc="evaluate", disable=not progress) as bar:
        for clip in held_out.clips:
            run_ = run_clip(animator, nets, clip, ev.novel_yaws, ev.render_batch, failures, bar.update)
            if run_ is not None:
                runs.append(run_)
                items += run_.items
        if len(runs) > 1:  # cross: the source of clip i driven by clip i+1
            for i, src in enumerate(runs):
                items += run_cross(animator, nets, src, runs[(i + 1) % len(runs)], ev.render_batch, bar.update)[1]
    used = sum(1 + len(r.frame_indices) for r in runs)
    if used == 0 or len(failures) / (used + len(failures)) > ev.max_failure_ratio:
        animator.close()
        raise EvaluateError(_failure_message(data, failures, used, ev.max_failure_ratio))

    fid_value, fid_reason = _fid(ev, inception, runs, device)
    agg = aggregate(items, ev, fid_value, fid_reason)
    gate = gate_document(ev)
    outcomes = check_gate(agg.metrics, gate, champion)
    doc = _write_and_track(cfg, animator, model, data, out, agg, gate, items, failures, runs, outcomes, champion)
    animator.close()
    return EvaluateResult(out, agg, doc, gate, outcomes, champion, len(items), failures,
                          time.perf_counter() - started)


def _read_champion(path: str | Path | None) -> dict[str, float] | None:
    if path is None:
        return None
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        return {str(k): float(v) for k, v in doc["metrics"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise EvaluateError(f"--champion-metrics {path}: not a readable evaluate metrics.json ({err})") from None


def _write_and_track(cfg, animator, model: str, data: Path, out: Path, agg: Aggregate, gate: dict, items: list[Item],
                     failures: list[InputFailure], runs: list[ClipRun], outcomes, champion) -> dict:
    """Write every output into a temporary folder, log it all to the MLflow run, then rename into place."""
    from components.animate.video import write_video

    ev: EvaluateConfig = cfg.evaluate
    version, train_run = data_version(data), psi_run_id(model)
    tags = {**lineage_tags("evaluate", version), "psi_run_id": train_run or "unknown", "model": model,
            "synthetic_assets": str(animator.synthetic_assets).lower()}  # fmt: skip
    params = {"evaluate": ev.model_dump(mode="json", exclude={"gate"}), "profile": cfg.profile, "model": model}
    tracking = TrackingRun.start(cfg.tracking, "evaluate", params, tags)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        doc = metrics_document(agg, model, train_run, tracking.run_id, tags["data_version"],
                               animator.synthetic_assets, cfg.profile)  # fmt: skip
        write_json(tmp / METRICS_FILE, doc)
        write_json(tmp / GATE_FILE, gate)
        write_run_config(tmp, cfg)
        write_per_item(tmp / PER_ITEM_FILE, items, failures)
        rows = summary_rows(agg, outcomes, champion)
        (tmp / README_FILE).write_text(readme(agg, doc, rows, failures, len(items)))
        samples = tmp / SAMPLES
        grid = sample_grid(runs, ev.sample_items)
        if grid is not None:
            save_png(samples / "grid.png", grid)
        if runs:
            write_video(samples / "reenactment.mp4", reenactment_frames(runs[0]), ev.video_fps)
            first = runs[0].source
            still = animator.motion_from_vectors(np.repeat(first.motion[None], ev.turntable_frames, 0), source=first)
            turntable = animator.render(first, still, camera="orbit", batch=ev.render_batch)
            write_video(samples / "turntable.mp4", enlarged(turntable), ev.video_fps)
        step_metrics = dict(agg.metrics)
        for name, (lo, hi) in agg.intervals.items():
            step_metrics[f"{name}/ci_low"], step_metrics[f"{name}/ci_high"] = lo, hi
        tracking.log_metrics(step_metrics, step=0)
        tracking.set_tags({f"not_computed/{k}": v[:500] for k, v in agg.not_computed.items()})
        if grid is not None:
            tracking.log_image(grid, f"{SAMPLES}/grid.png")
        for name in (METRICS_FILE, GATE_FILE, PER_ITEM_FILE, README_FILE):
            tracking.log_artifact(tmp / name)
        for video in sorted(samples.glob("*.mp4")):
            tracking.log_artifact(video, SAMPLES)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        tracking.finish("FAILED")
        raise
    tracking.finish()
    return doc


"""The demo's record of a run: Prometheus metrics + an MLflow "pipeline" run, and ``report.md`` with images."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from components.io.atomic import atomic_write_text
from components.io.metrics import MetricsError, StageMetrics

GRID_TILE = 128


def _manifest_rows(out_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    manifest = out_dir / "manifest.parquet"
    return pq.read_table(manifest).to_pylist() if manifest.exists() else []


def crop_grid(out: Path, runs: list, target: Path, columns: int = 4) -> Path | None:
    """Tile the aligned crops of every manifest (fit_flame outputs) into one PNG."""
    crops = []
    for r in runs:
        for o in r.outputs:
            crops += [out / o / row["crop_path"] for row in _manifest_rows(out / o) if row.get("crop_path")]
    crops = [c for c in crops if c.exists()][:16]
    return _tile(crops, target, columns)


def _tile(paths_or_images: list, target: Path, columns: int) -> Path | None:
    from PIL import Image

    if not paths_or_images:
        return None
    rows = (len(paths_or_images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * GRID_TILE, rows * GRID_TILE), "white")
    for i, item in enumerate(paths_or_images):
        im = Image.open(item) if isinstance(item, Path) else item
        grid.paste(im.convert("RGB").resize((GRID_TILE, GRID_TILE)), ((i % columns) * GRID_TILE, (i // columns) * GRID_TILE))
        im.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    grid.save(target)
    return target


def synthesized_grid(out: Path, runs: list, target: Path, limit: int = 8) -> Path | None:
    """GenHead views from the first shards of a synthesize output: each identity's K views side by side."""
    import io
    import tarfile

    from PIL import Image

    views = []
    for r in runs:
        for o in r.outputs:
            for shard in sorted((out / o).glob("shards/*.tar")):
                with tarfile.open(shard) as tar:
                    for member in tar.getmembers():
                        if member.name.endswith(".image.png") and len(views) < limit:
                            views.append(Image.open(io.BytesIO(tar.extractfile(member).read())))
    columns = max(1, min(4, len(views)))
    return _tile(views, target, columns)


def stage_images(out: Path, runs: list) -> list[Path]:
    """PNGs that later stages leave for people (samples, renders, loss curves), newest stages last."""
    found = []
    for r in runs:
        for o in r.outputs:
            for pattern in ("samples/*.png", "renders/*.png", "plots/*.png", "*.png"):
                found += sorted((out / o).glob(pattern))[:4]
    return list(dict.fromkeys(found))


def log_pipeline_run(out: Path, runs: list, profile: str, tracking_uri: str) -> str | None:
    """Push the stage metrics (when a Pushgateway is configured) and log one MLflow run for the pipeline."""
    for r in runs:
        metrics = StageMetrics(r.name)
        metrics.record(r.seconds, r.ok, r.failed)
        try:
            metrics.push(grouping={"run_dir": out.name})
        except MetricsError as err:
            print(f"p4d demo: warning: {err}", file=sys.stderr)
    import mlflow

    from pipelines.stage_exec import MLFLOW_EXPERIMENT

    mlflow.set_tracking_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:") and mlflow.get_experiment_by_name(MLFLOW_EXPERIMENT) is None:
        # a local store keeps its artifacts in the run directory too (MLflow's default is ./mlruns of the cwd)
        mlflow.create_experiment(MLFLOW_EXPERIMENT, artifact_location=(out / "mlartifacts").resolve().as_uri())
    mlflow.set_experiment(MLFLOW_EXPERIMENT)
    with mlflow.start_run(run_name=f"demo-{profile}") as run:
        mlflow.set_tags({"p4d.kind": "pipeline", "p4d.run_dir": str(out), "p4d.profile": profile})
        # the stages ran under DVC (not `p4d pipeline exec`), so their metrics go on this one run
        for r in runs:
            mlflow.log_metrics({
                f"{r.name}.seconds": r.seconds, f"{r.name}.items_ok": r.ok,
                f"{r.name}.items_failed": r.failed, f"{r.name}.ran": float(r.ran),
            })
        lock = out / "dvc.lock"
        if lock.exists():
            mlflow.log_artifact(str(lock))
        return run.info.run_id


def write_report(
    out: Path, runs: list, profile: str, assets: Path, synthetic: bool, run_id: str | None, tracking_uri: str,
    shown=None,
) -> Path:
    from pipelines.dag import DATA
    from pipelines.demo_showcase import evaluation_table, infer_latency, registration_lines

    images = out / "report"
    grid = crop_grid(out, runs, images / "crops.png")
    synth = synthesized_grid(out, runs, images / "synthesized.png")
    lines = [
        f"# Portrait4D-v2 pipeline run — `{profile}` profile",
        "",
        f"Written {_dt.datetime.now().isoformat(timespec='seconds')} in `{out}`.",
        "",
    ]
    if synthetic:
        lines += ["> **Synthetic assets** (random weights in the real formats): the numbers and images below show "
                  "that the pipeline runs end to end, not model quality.", ""]
    lines += ["## Stages", "", "| stage | this run | seconds | items ok | items failed | output |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.name} | {'ran' if r.ran else 'up to date'} | {r.seconds:.1f} | {r.ok} | {r.failed} | "
                     + ", ".join(f"`{o}`" for o in r.outputs) + " |")
    if grid:
        lines += ["", "## Aligned crops (fit_flame)", "", f"![aligned crops]({grid.relative_to(out).as_posix()})"]
    if synth:
        lines += ["", "## GenHead pseudo multi-view samples (synthesize)", "",
                  "Each identity's views are rendered from one latent and one set of FLAME conditions, at cameras "
                  "from the paper's distribution mixed with fitted ones.", "",
                  f"![synthesized views]({synth.relative_to(out).as_posix()})"]
    failures = [(r.name, row) for r in runs for o in r.outputs for row in _manifest_rows(out / o) if row.get("status") == "failed"]
    if failures:
        lines += ["", "## Items that failed (kept in the manifest with a reason)", "", "| stage | item | reason |", "|---|---|---|"]
        lines += [f"| {stage} | `{Path(row['source']).name}` | {row['reason']} |" for stage, row in failures]
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    if shown is not None and shown.reenactment is not None:
        lines += ["", "## The trained Ψ in use (`p4d animate`)", "",
                  "A held-out test clip drives the source photo (source | driving | output), and a turntable of the "
                  "source's own expression across the paper's yaw range — rendered by the same engine as "
                  "`p4d animate`, `evaluate`, the MLflow model and the Triton model.", "",
                  f"![reenactment]({rel(shown.reenactment_gif)})", "",
                  f"Still strip (driving crops above, output below): ![strip]({rel(shown.reenactment_strip)})", "",
                  f"![turntable]({rel(shown.turntable_gif)}) ![turntable strip]({rel(shown.turntable_strip)})", "",
                  f"Videos: [`{rel(shown.reenactment)}`]({rel(shown.reenactment)}), "
                  f"[`{rel(shown.turntable)}`]({rel(shown.turntable)})"]
    evaluation = out / DATA["evaluation"].path
    table = evaluation_table(evaluation)
    if table:
        lines += ["", "## Evaluation on the held-out clips (`evaluate`)", "", *table]
        grid = evaluation / "samples" / "grid.png"
        if grid.is_file():
            lines += ["", f"![evaluation samples]({rel(grid)})"]
    registered = registration_lines(out / DATA["registration"].path, tracking_uri)
    if registered:
        lines += ["", "## MLflow registry (`register`)", "", *registered]
    if shown is not None and (shown.endpoint_frame is not None or shown.endpoint_error):
        lines += ["", "## Live endpoint (`deploy`)", ""]
        if shown.endpoint_error:
            lines += [f"**The endpoint check failed**: {shown.endpoint_error}"]
        else:
            lines += [f"The Triton repository `{DATA['model_repository'].path}` was served by `tritonserver` on "
                      f"127.0.0.1 (ready after {shown.endpoint_seconds:.0f} s), one video session went through "
                      f"`p4d infer` (p50 latency {infer_latency(shown.endpoint_line)}), and the server was stopped.",
                      "", f"`p4d infer`: {shown.endpoint_line}", "",
                      f"A frame the endpoint returned: ![endpoint frame]({rel(shown.endpoint_frame)})", "",
                      f"Serve it yourself: `p4d deploy serve --repo {out / DATA['model_repository'].path}` then "
                      f"`p4d infer --url grpc://127.0.0.1:8001 --source SOURCE --driving VIDEO --out out.mp4 "
                      "--session`"]
    extra = stage_images(out, runs)
    if extra:
        lines += ["", "## Samples and curves from the stages", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in extra]
    lines += [
        "", "## Where everything is", "",
        f"- inputs: `data/raw/` (sample photos and a clip); assets: `{assets}`",
        "- pipeline: `dvc.yaml` (generated from `pipelines/dag.py`), `params.yaml`, `dvc.lock` (hashes of every dep/out)",
        f"- DVC remote (local): `{out / 'dvc-remote'}` (`dvc push` / `dvc pull` in this directory)",
        f"- tracking: MLflow `{tracking_uri}`" + (f", pipeline run `{run_id}`" if run_id else "")
        + f" — browse with `mlflow ui --backend-store-uri {tracking_uri}`",
        f"- re-run: `p4d demo --out {out}` (re-runs only what changed), or `dvc repro` here",
    ]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report

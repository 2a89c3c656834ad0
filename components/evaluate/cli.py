"""`p4d evaluate`: the thin command-line entry of the stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import PROFILES, resolve_config
from components.device import add_device_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="reenactment metrics of a trained Ψ on held-out clips, sample renders, gate thresholds, MLflow run",
        description="Render held-out test clips with a trained Ψ and measure them: self-reenactment (PSNR, SSIM, "
        "LPIPS, CSIM, AED, APD, AKD), cross-reenactment (CSIM, AED, APD), novel-view identity (CSIM) and FID "
        "when Inception weights are supplied. Writes metrics.json (means, 95% bootstrap intervals, counts, "
        "what was not computed and why), per_item.parquet, gate.json (thresholds for `p4d register`), "
        "README.md and samples/ (grid.png, reenactment.mp4, turntable.mp4), and logs all of it to an MLflow "
        "run named 'evaluate'. The output folder appears only when complete.",
        epilog="Example: p4d evaluate --psi runs/demo/models/psi --data runs/demo/data/fit_flame/clips_test "
        "--train-data runs/demo/data/fit_flame/clips --assets runs/demo/assets --out runs/demo/reports/evaluation",
    )
    parser.add_argument("--psi", required=True, metavar="MODEL",
                        help="the Ψ to evaluate: a `p4d train psi` output folder, a Ψ .safetensors, a model package "
                        "folder, or an MLflow URI (models:/NAME@ALIAS, runs:/ID/PATH)")  # fmt: skip
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="the test clips: a `p4d fit-flame --video` output folder (manifest.parquet, crops/)")
    parser.add_argument("--train-data", type=Path, default=None, metavar="DIR",
                        help="the training clips' fit-flame output: fail when a test clip is also a training clip")
    parser.add_argument("--assets", required=True, type=Path, metavar="DIR",
                        help="asset folder (FLAME, PD-FGC, ArcFace, LPIPS; optional FID Inception weights)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (replaced atomically)")
    add_device_argument(parser)
    parser.add_argument("--champion-metrics", type=Path, default=None, metavar="FILE",
                        help="the champion's metrics.json: the summary shows it and checks max_regression against it")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="config profile (default: tiny)")
    parser.add_argument("--params", type=Path, default=None,
                        help="params.yaml (profile + overrides; the evaluate section holds the gate)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    from components.evaluate.report import text_table
    from components.evaluate.stage import run  # heavy imports (torch, MediaPipe) only when the command runs

    cfg = resolve_config(args.profile, args.params)
    result = run(cfg, args.psi, args.data, args.assets, args.out, train_data=args.train_data, device=args.device,
                 champion_metrics=args.champion_metrics, progress=not args.no_progress)  # fmt: skip
    doc = result.document
    lines = [text_table(result.table_rows), ""]
    for name, reason in result.aggregate.not_computed.items():
        lines.append(f"{name}: not computed: {reason}")
    lines.append(f"evaluate: {result.n_items} renders, {len(result.failures)} unusable inputs, "
                 f"{result.seconds:.1f} s; {result.out_dir} (metrics.json, gate.json, per_item.parquet, samples/); "
                 f"MLflow run {doc['evaluate_mlflow_run_id']}"
                 + (" [synthetic assets]" if doc["synthetic_assets"] else ""))  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return 0

"""Read the evaluate stage's output (``metrics.json`` + ``gate.json``) and check it against the contract.

The contract (written by ``p4d evaluate``)::

    metrics.json = {"metrics": {name: float}, "intervals": {name: [lo, hi]}, "counts": {name: int},
                    "not_computed": {name: reason}, "model": str, "psi_mlflow_run_id": str|null,
                    "evaluate_mlflow_run_id": str|null, "data_version": str, "synthetic_assets": bool,
                    "profile": str}
    gate.json    = {"metrics": {name: {"greater_is_better": bool, "threshold": float|null,
                                       "max_regression": float|null}}}

MLflow metric and tag keys accept only letters, digits and ``_ - . / : space``; evaluate's names
(``eval/self/psnr``) already fit, any other character is replaced by ``_`` (``mlflow_key``), and the
registry always stores the mapped name, so a name reads the same in the UI, the gate and ``p4d review``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import P4DError

METRICS_FILE = "metrics.json"
GATE_FILE = "gate.json"
GRID_FILE = "samples/grid.png"
TURNTABLE_FILE = "samples/turntable.mp4"
REENACTMENT_FILE = "samples/reenactment.mp4"
SAMPLE_FILES = (GRID_FILE, TURNTABLE_FILE, REENACTMENT_FILE)

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


class EvaluationError(P4DError):
    """The evaluation folder is missing or breaks the evaluate → register contract; names file and field."""


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts as a metric / tag key (see the module docstring)."""
    return _BAD_KEY_CHARS.sub("_", name)


@dataclass(frozen=True)
class GateRule:
    greater_is_better: bool
    threshold: float | None
    max_regression: float | None


@dataclass(frozen=True)
class Evaluation:
    folder: Path
    metrics: dict[str, float]  # MLflow keys
    intervals: dict[str, tuple[float, float]]
    counts: dict[str, int]
    not_computed: dict[str, str]
    model: str
    psi_run_id: str | None
    evaluate_run_id: str | None
    data_version: str
    synthetic_assets: bool
    profile: str
    gate: dict[str, GateRule] = field(default_factory=dict)

    def samples(self) -> dict[str, Path]:
        """The sample renders the evaluation wrote (relative name -> file), for the card and the run."""
        return {name: self.folder / name for name in SAMPLE_FILES if (self.folder / name).is_file()}


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file; run `p4d evaluate --psi ... --out {path.parent}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise EvaluationError(f"{path}: top level must be an object, got {type(data).__name__}")
    return data


def _number(path: Path, where: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EvaluationError(f"{path}: {where}: got {value!r}; expected a finite number")
    return float(value)


def _mapping(path: Path, data: dict, key: str, required: bool = True) -> dict:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        raise EvaluationError(f"{path}: {key}: got {value!r}; expected an object")
    return value


def _string(path: Path, data: dict, key: str, nullable: bool = False) -> str | None:
    value = data.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or (not nullable and not value):
        raise EvaluationError(f"{path}: {key}: got {value!r}; expected a {'string or null' if nullable else 'string'}")
    return value


def _read_metrics(path: Path) -> dict[str, Any]:
    data = _load_json(path)
    metrics = {mlflow_key(k): _number(path, f"metrics.{k}", v) for k, v in _mapping(path, data, "metrics").items()}
    if not metrics:
        raise EvaluationError(f"{path}: metrics: empty; the evaluation computed nothing to register")
    intervals = {}
    for k, v in _mapping(path, data, "intervals", required=False).items():
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            raise EvaluationError(f"{path}: intervals.{k}: got {v!r}; expected [lo, hi]")
        intervals[mlflow_key(k)] = (_number(path, f"intervals.{k}[0]", v[0]), _number(path, f"intervals.{k}[1]", v[1]))
    counts = {}
    for k, v in _mapping(path, data, "counts", required=False).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise EvaluationError(f"{path}: counts.{k}: got {v!r}; expected a count >= 0")
        counts[mlflow_key(k)] = v
    not_computed = {mlflow_key(k): str(v) for k, v in _mapping(path, data, "not_computed", required=False).items()}
    synthetic = data.get("synthetic_assets")
    if not isinstance(synthetic, bool):
        raise EvaluationError(f"{path}: synthetic_assets: got {synthetic!r}; expected true or false")
    return {
        "metrics": metrics, "intervals": intervals, "counts": counts, "not_computed": not_computed,
        "model": _string(path, data, "model"), "psi_run_id": _string(path, data, "psi_mlflow_run_id", True),
        "evaluate_run_id": _string(path, data, "evaluate_mlflow_run_id", True),
        "data_version": _string(path, data, "data_version"), "synthetic_assets": synthetic,
        "profile": _string(path, data, "profile"),
    }


def _read_gate(path: Path) -> dict[str, GateRule]:
    rules = {}
    for name, rule in _mapping(path, _load_json(path), "metrics").items():
        if not isinstance(rule, dict) or not isinstance(rule.get("greater_is_better"), bool):
            raise EvaluationError(f"{path}: metrics.{name}.greater_is_better: got "
                                  f"{rule.get('greater_is_better') if isinstance(rule, dict) else rule!r}; "
                                  "expected true or false")
        unknown = set(rule) - {"greater_is_better", "threshold", "max_regression"}
        if unknown:
            raise EvaluationError(f"{path}: metrics.{name}: unknown key(s) {sorted(unknown)}; allowed: "
                                  "greater_is_better, threshold, max_regression")
        regression = _number(path, f"metrics.{name}.max_regression", rule.get("max_regression"), allow_none=True)
        if regression is not None and regression < 0:
            raise EvaluationError(f"{path}: metrics.{name}.max_regression: got {regression}; expected a fraction >= 0")
        rules[mlflow_key(name)] = GateRule(
            rule["greater_is_better"],
            _number(path, f"metrics.{name}.threshold", rule.get("threshold"), allow_none=True),
            regression,
        )
    return rules


def read_evaluation(folder: str | Path) -> Evaluation:
    """The evaluation in ``folder`` (a `p4d evaluate --out` folder), validated; raises EvaluationError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such evaluation folder; the model has no evaluation (run `p4d "
                              "evaluate` for it first)")
    values = _read_metrics(folder / METRICS_FILE)
    return Evaluation(folder=folder, gate=_read_gate(folder / GATE_FILE), **values)

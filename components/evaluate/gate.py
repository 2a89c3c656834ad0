"""The gate document ``evaluate`` writes next to the metrics, and the check ``register`` applies with it.

``gate.json`` = ``{"metrics": {name: {"greater_is_better", "threshold", "max_regression"}}}`` for every
stable metric name: ``threshold`` is an absolute bound (>= when greater is better, else <=),
``max_regression`` the allowed relative regression against the champion (a fraction).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from components.config.evaluate import GREATER_IS_BETTER, METRIC_NAMES, EvaluateConfig, GateRule


def gate_document(cfg: EvaluateConfig) -> dict:
    """The gate.json content for ``cfg`` (metrics without a configured rule get an empty one)."""
    rules = {}
    for name in METRIC_NAMES:
        rule = cfg.gate.get(name, GateRule())
        rules[name] = {"greater_is_better": GREATER_IS_BETTER[name], "threshold": rule.threshold,
                       "max_regression": rule.max_regression}  # fmt: skip
    return {"metrics": rules}


@dataclass(frozen=True)
class GateOutcome:
    name: str
    passed: bool | None  # None: no rule applies (no rule, or no value to check)
    detail: str


def _regression(value: float, champion: float, greater_is_better: bool) -> float:
    """Relative change for the worse (positive = worse than the champion)."""
    worse = champion - value if greater_is_better else value - champion
    return worse / max(abs(champion), 1e-12)


def check_gate(metrics: Mapping[str, float], gate: Mapping, champion: Mapping[str, float] | None = None) -> list[GateOutcome]:
    """Apply a gate document to a candidate's metrics (and the champion's, when given), metric by metric."""
    out = []
    for name, rule in gate["metrics"].items():
        value = metrics.get(name)
        up = rule["greater_is_better"]
        if value is None or not math.isfinite(value):
            has_rule = rule["threshold"] is not None or rule["max_regression"] is not None
            out.append(GateOutcome(name, None, "not computed" + (" (has a rule)" if has_rule else "")))
            continue
        failures, checks = [], []
        if rule["threshold"] is not None:
            ok = value >= rule["threshold"] if up else value <= rule["threshold"]
            checks.append(f"{'>=' if up else '<='} {rule['threshold']:g}")
            if not ok:
                failures.append(f"{value:.4g} not {'>=' if up else '<='} {rule['threshold']:g}")
        base = (champion or {}).get(name)
        if rule["max_regression"] is not None and base is not None and math.isfinite(base):
            change = _regression(value, base, up)
            checks.append(f"<= {rule['max_regression']:.0%} worse than {base:.4g}")
            if change > rule["max_regression"]:
                failures.append(f"{change:.1%} worse than the champion's {base:.4g} (allowed {rule['max_regression']:.0%})")
        if not checks:
            out.append(GateOutcome(name, None, "no rule"))
        else:
            out.append(GateOutcome(name, not failures, "; ".join(failures) if failures else "; ".join(checks)))
    return out

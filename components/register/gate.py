"""The release gate: the evaluation's thresholds applied with MLflow's own model validation.

Each rule of ``gate.json`` gives up to two checks per metric:

- ``threshold``: an absolute bound -> ``MetricThreshold(threshold=...)``;
- ``max_regression``: how much worse than the current champion the candidate may be, as a fraction of
  the champion's value. MLflow's ``min_relative_change`` only expresses a required *improvement*
  (0..1), so the allowed regression is turned into the bound ``champion ∓ max_regression·|champion|``
  and checked as a ``MetricThreshold`` with the champion's result as the baseline.

``mlflow.validate_evaluation_results`` decides every check (one call per check, so each failure is
attributed to its metric and kind); the margin reported next to it is ours. A metric the candidate lacks
fails its checks (MLflow: "missing from the evaluation result"); a regression check without a champion,
or against a champion that lacks the metric, is skipped and listed as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from components.register.evaluation import GateRule


@dataclass(frozen=True)
class GateFailure:
    metric: str
    check: str  # "threshold" | "regression" | "missing"
    value: float | None
    bound: float | None
    champion: float | None = None
    max_regression: float | None = None

    @property
    def margin(self) -> float | None:
        """How far past the bound the value is (positive = by how much it failed)."""
        if self.value is None or self.bound is None:
            return None
        return abs(self.value - self.bound)

    def describe(self) -> str:
        if self.check == "missing":
            return f"{self.metric}: missing from the evaluation"
        worse = "<" if self.value < self.bound else ">"  # a failing value lies on the wrong side of its bound
        what = (f"threshold {self.bound:.6g}" if self.check == "threshold" else
                f"champion {self.champion:.6g} with {self.max_regression:.0%} allowed regression = {self.bound:.6g}")
        return f"{self.metric}: {self.value:.6g} {worse} {what} (off by {self.margin:.4g})"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: tuple[GateFailure, ...]
    checks: tuple[str, ...]  # every check applied, human-readable
    skipped: tuple[str, ...]  # regression checks that could not run, with why

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    def failures_text(self) -> str:
        return "; ".join(f.describe() for f in self.failures) or "none"


def regression_bound(champion: float, max_regression: float, greater_is_better: bool) -> float:
    """The worst value still allowed: ``max_regression`` of the champion's magnitude away from it."""
    step = max_regression * abs(champion)
    return champion - step if greater_is_better else champion + step


def _mlflow_accepts(metric: str, value_bound: float, greater_is_better: bool, candidate: Mapping[str, float],
                    baseline: Mapping[str, float] | None) -> bool:
    """One check decided by ``mlflow.validate_evaluation_results``."""
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    rule = {metric: MetricThreshold(threshold=float(value_bound), greater_is_better=greater_is_better)}
    try:
        mlflow.validate_evaluation_results(
            rule, EvaluationResult(dict(candidate), {}),
            EvaluationResult(dict(baseline), {}) if baseline is not None else None)
    except ModelValidationFailedException:
        return False
    return True


def apply_gate(rules: Mapping[str, GateRule], candidate: Mapping[str, float],
               champion: Mapping[str, float] | None, champion_label: str = "champion") -> GateResult:
    """Check ``candidate`` metrics against ``rules`` and, for regressions, the ``champion``'s metrics."""
    failures: list[GateFailure] = []
    checks: list[str] = []
    skipped: list[str] = []
    for metric, rule in sorted(rules.items()):
        better = ">=" if rule.greater_is_better else "<="
        if metric not in candidate:
            if rule.threshold is not None or rule.max_regression is not None:
                failures.append(GateFailure(metric, "missing", None, None))
            continue
        value = candidate[metric]
        if rule.threshold is not None:
            checks.append(f"{metric} {better} {rule.threshold:.6g}")
            if not _mlflow_accepts(metric, rule.threshold, rule.greater_is_better, candidate, None):
                failures.append(GateFailure(metric, "threshold", value, rule.threshold))
        if rule.max_regression is None:
            continue
        if champion is None:
            skipped.append(f"{metric}: no {champion_label} to compare with")
            continue
        if metric not in champion:
            skipped.append(f"{metric}: the {champion_label} has no value for it")
            continue
        bound = regression_bound(champion[metric], rule.max_regression, rule.greater_is_better)
        checks.append(f"{metric} {better} {bound:.6g} ({champion_label} {champion[metric]:.6g}, "
                      f"{rule.max_regression:.0%} allowed regression)")
        if not _mlflow_accepts(metric, bound, rule.greater_is_better, candidate, champion):
            failures.append(GateFailure(metric, "regression", value, bound, champion[metric], rule.max_regression))
    return GateResult(not failures, tuple(failures), tuple(checks), tuple(skipped))
